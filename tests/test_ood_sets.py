"""The ImageNet-1k OOD benchmark readers (vlprompt.data.ood_sets) on tiny on-disk trees in the layouts their
distributors use: MOS's subsets as MCM / LoCoOp read them, the NINCO tarball, OpenOOD v1.5's image lists, the
ImageNet-O tarball. The layouts are spelled out here, independently of the module."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlprompt.core.errors import DataError
from vlprompt.data.ood_sets import canonical_ood_set
from vlprompt.data.registry import build_dataset, get_dataset_info
from vlprompt.data.tiny_trees import write_image


def _images(folder: Path, names: list[str]) -> list[Path]:
    return [write_image(folder / n, (40 * i, 90, 200), size=4, seed=i) for i, n in enumerate(names)]


def _paths(name: str, root: Path, **options: object) -> list[str]:
    splits = build_dataset(name, str(root), **options)
    assert splits.train == [] and splits.val == [] and len(splits.classnames) == 1
    assert all(d.label == 0 and d.classname == splits.classnames[0] for d in splits.test)
    return [d.path for d in splits.test]


def test_mos_subsets_as_mcm_and_locoop_read_them(tmp_path: Path) -> None:
    """iNaturalist / SUN / Places: ``<set>/images/*.jpg``; Textures: ``dtd/images/<class>/*`` (MCM) or
    ``Texture/images/<class>/*`` (LoCoOp)."""
    inat = _images(tmp_path / "iNaturalist" / "images", ["a.jpg", "b.jpg", "c.JPG"])
    (tmp_path / "iNaturalist" / "images" / "notes.txt").write_text("not an image")
    sun = _images(tmp_path / "SUN" / "images", ["s1.jpg"])
    places = _images(tmp_path / "Places" / "images", ["p1.jpg", "p2.jpg"])
    dtd = _images(tmp_path / "dtd" / "images" / "banded", ["banded_0001.jpg"])
    dtd += _images(tmp_path / "dtd" / "images" / "zigzagged", ["zigzagged_0001.jpg", "zigzagged_0002.jpg"])
    assert _paths("inaturalist", tmp_path) == [str(p) for p in sorted(inat)]
    assert build_dataset("inaturalist", str(tmp_path)).classnames == ["iNaturalist"]
    assert _paths("sun", tmp_path) == [str(p) for p in sun]
    assert _paths("places", tmp_path) == [str(p) for p in places]
    assert _paths("textures", tmp_path) == [str(p) for p in dtd]
    locoop = tmp_path / "locoop"
    texture = _images(locoop / "Texture" / "images" / "banded", ["x.jpg"])
    assert _paths("texture", locoop) == [str(p) for p in texture]  # LoCoOp's name is an alias


def test_ninco_reads_only_its_ood_classes(tmp_path: Path) -> None:
    """The NINCO tarball holds three folders; only NINCO_OOD_classes is the NINCO benchmark."""
    base = tmp_path / "NINCO"
    ninco = _images(base / "NINCO_OOD_classes" / "Caracal caracal caracal",
                    ["Caracal caracal caracal_000_000-10896690.jpg", "Caracal caracal caracal_001_001-1.png"])
    ninco += _images(base / "NINCO_OOD_classes" / "amphiuma_means", ["amphiuma_means_000_10045958.jpeg"])
    _images(base / "NINCO_OOD_unit_tests" / "noise", ["n.png"])
    _images(base / "NINCO_popular_datasets_subsamples" / "SSB_hard", ["h.jpg"])
    assert _paths("ninco", tmp_path) == [str(p) for p in ninco]
    assert _paths("ninco", base) == [str(p) for p in ninco]  # root = the extracted folder (NegRefine's data/)


def test_openood_image_lists_are_read_and_only_listed_images(tmp_path: Path) -> None:
    """OpenOOD v1.5: ``benchmark_imglist/imagenet/test_<set>.txt`` lines ``<path under images_largescale/> <label>``."""
    big = tmp_path / "images_largescale"
    listed = _images(big / "openimage_o" / "images", ["0001.jpg", "0002.jpg"])
    _images(big / "openimage_o" / "images", ["9999.jpg"])  # OpenOOD's validation part: not in the test list
    ssb = _images(big / "ssb_hard" / "n00470682", ["a.JPEG"])
    lists = tmp_path / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    (lists / "test_openimage_o.txt").write_text("".join(f"openimage_o/images/{p.name} -1\n" for p in listed))
    (lists / "test_ssb_hard.txt").write_text("ssb_hard/n00470682/a.JPEG -1\n\n")
    assert _paths("openimage_o", tmp_path) == [str(p) for p in listed]
    assert _paths("ssb_hard", tmp_path) == [str(p) for p in ssb]
    every = _images(tmp_path / "openimage_o" / "sub", ["x.jpg", "y.jpg"])  # the folder layout: every image
    assert _paths("openimage_o", tmp_path, layout="folder") == [str(p) for p in every]
    assert _paths("openimage_o", tmp_path) == [str(p) for p in listed]  # auto: the list wins


def test_imagenet_o_skips_its_readme(tmp_path: Path) -> None:
    images = _images(tmp_path / "imagenet-o" / "n01443537", ["11.jpg", "12.jpg"])
    (tmp_path / "imagenet-o" / "README.txt").write_text("ImageNet-O")
    assert _paths("imagenet_o", tmp_path) == [str(p) for p in images]
    assert build_dataset("ImageNet-O", str(tmp_path)).name == "imagenet_o"


def test_groups_follow_openood_v15() -> None:
    groups = {n: get_dataset_info(n).ood_group for n in (
        "inaturalist", "sun", "places", "textures", "openimage_o", "ninco", "ssb_hard", "imagenet_o")}
    assert groups == {"inaturalist": "far", "sun": "far", "places": "far", "textures": "far", "openimage_o": "far",
                      "ninco": "near", "ssb_hard": "near", "imagenet_o": "near"}
    assert get_dataset_info("dtd").ood_group is None  # CoOp's DTD is not an OOD set


def test_canonical_names() -> None:
    """How runs and papers spell the sets (folder arguments, LoCoOp's and OpenOOD's names) -> registry names."""
    spellings = {"iNaturalist": "inaturalist", "iNaturalist/images": "inaturalist", "SUN": "sun",
                 "places365": "places", "dtd/images": "textures", "Texture": "textures", "SSB-hard": "ssb_hard",
                 "NINCO": "ninco", "OpenImage-O": "openimage_o", "imagenet-o": "imagenet_o", "dtd": "dtd",
                 "world_ood_novel": "world_ood_novel"}
    assert {s: canonical_ood_set(s) for s in spellings} == spellings


def _broken_list(root: Path, line: str) -> None:
    (root / "images_largescale").mkdir(parents=True, exist_ok=True)
    (root / "benchmark_imglist" / "imagenet").mkdir(parents=True, exist_ok=True)
    (root / "benchmark_imglist" / "imagenet" / "test_ninco.txt").write_text(line)


@pytest.mark.parametrize(("setup", "name", "options", "message"), [
    (None, "inaturalist", {}, r"no folder of OOD set 'inaturalist'.*<root>/iNaturalist/images/\*"),
    (None, "ninco", {}, r"benchmark_imglist/imagenet/test_ninco.txt .*NINCO/NINCO_OOD_classes/<class>/\*"),
    (None, "ninco", {"layout": "openood"}, r"image list .*test_ninco.txt' not found"),
    (None, "imagenet_o", {"layout": "openood"}, r"has no OpenOOD image list"),
    (None, "sun", {"layout": "nope"}, r"must be one of auto, openood, folder"),
    (None, "sun", {"colour": 1}, r"unknown option 'colour'"),
    (lambda r: _images(r / "SUN" / "images" / "sub", ["a.jpg"]), "sun", {}, r"SUN/images' holds no images"),
    (lambda r: _images(r / "dtd" / "images", ["loose.jpg"]), "textures", {}, r"holds images directly"),
    (lambda r: _broken_list(r, "ninco/a/missing.jpg -1\n"), "ninco", {}, r"line 1 names image .*missing.jpg"),
    (lambda r: _broken_list(r, "x -1\n../../escape.jpg -1\n"), "ninco", {}, r"line 2: path .* points outside"),
    (lambda r: (r / "benchmark_imglist" / "imagenet").mkdir(parents=True) or (
        r / "benchmark_imglist" / "imagenet" / "test_ssb_hard.txt").write_text("ssb_hard/a.jpg -1\n"),
     "ssb_hard", {}, r"image folder .*images_largescale' is not"),
])
def test_missing_or_broken_layouts_are_one_line_errors(tmp_path: Path, setup, name, options, message) -> None:
    if setup is not None:
        setup(tmp_path)
    with pytest.raises(DataError, match=message):
        build_dataset(name, str(tmp_path), **options)


def test_no_root_is_an_error() -> None:
    with pytest.raises(DataError, match="no dataset root given for dataset 'ninco'"):
        build_dataset("ninco", None)
