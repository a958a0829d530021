"""Build tiny on-disk datasets for tests, in every layout vlprompt reads.

Images are small solid-colour squares (one colour per class, plus a little noise), so that a tiny
model can tell the classes apart (the image writers of :mod:`vlprompt.data.tiny_trees`, which the
datasets' own tiny-tree builders use too). All builders return the folder to pass as ``root``.

The CoOp layouts are spelled out here independently of ``vlprompt.data.coop_layouts`` (they are
what the tests check the readers against).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlprompt.data.tiny_trees import class_color, write_class_images, write_image

# registry name -> (dataset folder, image folder inside it, split file) as in CoOp's DATASETS.md
SPLIT_JSON_DATASETS: dict[str, tuple[str, str, str]] = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}

IMAGENET_WNIDS: dict[str, str] = {
    "n01440764": "tench",
    "n01443537": "goldfish",
    "n01484850": "great white shark",
}

# registry name -> (dataset folder, image folder inside it)
DG_DATASETS: dict[str, tuple[str, str]] = {
    "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val"),
    "imagenet_sketch": ("imagenet-sketch", "images"),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
    "imagenet_r": ("imagenet-rendition", "imagenet-r"),
}


def make_imagefolder(
    root: str | Path,
    classes: Sequence[str] = ("cat", "dog", "bird"),
    per_class: int = 4,
    *,
    test_per_class: int | None = None,
    val_per_class: int = 0,
    size: int = 8,
    ext: str = ".png",
) -> Path:
    """Build ``root/{train,test[,val]}/<class>/*`` and return ``root``.

    ``per_class`` images per class in train, ``test_per_class`` (default: ``per_class``) in test and
    ``val_per_class`` in val (no val folder when 0). Class ``i`` (in the given order) gets colour
    :func:`class_color` ``(i)``.
    """
    root = Path(root)
    counts = {"train": per_class, "test": per_class if test_per_class is None else test_per_class}
    if val_per_class:
        counts["val"] = val_per_class
    for split, n in counts.items():
        for ci, name in enumerate(classes):
            write_class_images(root / split / name, ci, n, prefix=f"{split}_{name}", ext=ext, size=size)
    return root


def make_csv_dataset(
    root: str | Path,
    classes: Sequence[str] = ("cat", "dog", "bird"),
    per_class: int = 2,
    *,
    integer_labels: bool = False,
    with_val: bool = False,
) -> Path:
    """Build ``root/images/<class>/*.png`` plus ``train.csv`` / ``test.csv`` (/ ``val.csv``); return ``root``.

    Labels are class names, or indices into ``classes`` with ``integer_labels`` (then a
    ``classnames.txt`` with one name per line is written too).
    """
    root = Path(root)
    splits = ["train", "test"] + (["val"] if with_val else [])
    for split in splits:
        lines = ["path,label"]
        for ci, name in enumerate(classes):
            for p in write_class_images(root / "images" / split / name, ci, per_class, ext=".png"):
                lines.append(f"{p.relative_to(root).as_posix()},{ci if integer_labels else name}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    if integer_labels:
        (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    return root


def make_split_json_dataset(
    data_root: str | Path,
    name: str,
    classes: Sequence[str] = ("class_a", "class_b", "class_c"),
    per_split: Mapping[str, int] | None = None,
) -> dict[str, list[list]]:
    """Build CoOp's layout for the split-file dataset ``name`` under ``data_root``; return the split dict.

    Images go to ``<image dir>/<class>/<class>_<split>_<i>.jpg`` (StanfordCars:
    ``cars_train`` / ``cars_test``); class names are the folder names with ``_`` -> `` ``.
    """
    per_split = dict(per_split or {"train": 3, "val": 1, "test": 2})
    ds_dir, image_dir, split_file = SPLIT_JSON_DATASETS[name]
    base = Path(data_root) / ds_dir
    images = base / image_dir if image_dir else base
    split: dict[str, list[list]] = {}
    for split_name, n in per_split.items():
        entries = []
        for ci, cls in enumerate(classes):
            folder = (
                ("cars_test" if split_name == "test" else "cars_train") if name == "stanford_cars" else cls
            )
            for p in write_class_images(images / folder, ci, n, prefix=f"{cls}_{split_name}"):
                entries.append([p.relative_to(images).as_posix(), ci, cls.replace("_", " ")])
        split[split_name] = entries
    write_json(base / split_file, split)
    return split


def write_json(path: str | Path, data: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def make_fgvc_aircraft(
    data_root: str | Path,
    variants: Sequence[str] = ("707-320", "A300B4", "Boeing 747"),
    per_split: Mapping[str, int] | None = None,
) -> Path:
    """Build ``data_root/fgvc_aircraft`` (variants.txt, images_variant_*.txt, images/<id>.jpg)."""
    per_split = dict(per_split or {"train": 2, "val": 1, "test": 1})
    base = Path(data_root) / "fgvc_aircraft"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    next_id = 1000000
    for split, n in per_split.items():
        lines = []
        for ci, variant in enumerate(variants):
            for _ in range(n):
                write_image(base / "images" / f"{next_id}.jpg", class_color(ci), seed=next_id)
                lines.append(f"{next_id} {variant}")
                next_id += 1
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_imagenet_classnames(path: str | Path, wnids: Mapping[str, str] = IMAGENET_WNIDS) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in wnids.items()))
    return path


def make_imagenet(
    data_root: str | Path,
    wnids: Mapping[str, str] = IMAGENET_WNIDS,
    train_per_class: int = 3,
    val_per_class: int = 2,
) -> Path:
    """Build ``data_root/imagenet/{images/train/<wnid>, images/val/<wnid>, classnames.txt}``."""
    base = Path(data_root) / "imagenet"
    write_imagenet_classnames(base / "classnames.txt", wnids)
    for ci, wnid in enumerate(sorted(wnids)):
        write_class_images(base / "images" / "train" / wnid, ci, train_per_class, prefix=wnid, ext=".JPEG")
        write_class_images(
            base / "images" / "val" / wnid, ci, val_per_class, prefix=f"val_{wnid}", ext=".JPEG"
        )
    return base


def make_imagenet_dg(
    data_root: str | Path,
    name: str,
    wnids: Mapping[str, str] = IMAGENET_WNIDS,
    present: Sequence[str] | None = None,
    per_class: int = 2,
) -> Path:
    """Build the DG target ``name`` (see :data:`DG_DATASETS`) with a copy of ``classnames.txt``.

    ``present``: the wnids that get a class folder (default: all). ImageNetV2 folders are named by
    label index (position of the wnid in sorted order); A and R get a ``README.txt`` beside the
    class folders, as in the real archives.
    """
    ds_dir, image_dir = DG_DATASETS[name]
    base = Path(data_root) / ds_dir
    write_imagenet_classnames(base / "classnames.txt", wnids)
    order = sorted(wnids)
    for wnid in present if present is not None else order:
        label = order.index(wnid)
        folder = str(label) if name == "imagenetv2" else wnid
        write_class_images(base / image_dir / folder, label, per_class, prefix=wnid)
    if name in ("imagenet_a", "imagenet_r"):
        (base / image_dir / "README.txt").write_text("readme\n")
    return base
