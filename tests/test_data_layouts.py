"""CoOp dataset readers (vlprompt.data.coop_layouts) on tiny trees in CoOp's DATASETS.md layouts,
plus the prompt templates (vlprompt.data.templates)."""

from __future__ import annotations

import json
import os

import pytest

from vlprompt.core.errors import DataError
from vlprompt.data.coop_layouts import DGSplits
from vlprompt.data.registry import build_dataset, get_dataset_info
from vlprompt.data.templates import IMAGENET_TEMPLATES_SELECT, get_templates

from data_trees import (
    DG_DATASETS,
    IMAGENET_WNIDS,
    SPLIT_JSON_DATASETS,
    make_fgvc_aircraft,
    make_imagenet,
    make_imagenet_dg,
    make_split_json_dataset,
    write_image,
    write_imagenet_classnames,
    write_json,
)

# CoOp's trainers/zsclip.py CUSTOM_TEMPLATES, by CoOp class name
COOP_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
COOP_NAMES = {
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "OxfordFlowers",
    "food101": "Food101",
    "sun397": "SUN397",
    "dtd": "DescribableTextures",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
}
JSON_NAMES = sorted(SPLIT_JSON_DATASETS)


def _split_path(root, name):
    ds_dir, _, split_file = SPLIT_JSON_DATASETS[name]
    return root / ds_dir / split_file


def _image_dir(root, name):
    ds_dir, image_dir, _ = SPLIT_JSON_DATASETS[name]
    return root / ds_dir / image_dir if image_dir else root / ds_dir


# ---------------------------------------------------------------- split_zhou_*.json datasets


@pytest.mark.parametrize("name", JSON_NAMES)
def test_split_json_dataset(tmp_path, name):
    make_split_json_dataset(tmp_path, name, per_split={"train": 3, "val": 1, "test": 2})
    ds = build_dataset(name, str(tmp_path))
    assert ds.name == name
    assert ds.classnames == ["class a", "class b", "class c"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 6)
    assert sorted({d.label for d in ds.train}) == [0, 1, 2]
    assert all(os.path.isabs(d.path) and os.path.isfile(d.path) for d in ds.train + ds.val + ds.test)
    assert all(ds.classnames[d.label] == d.classname for d in ds.train)
    assert ds.template == COOP_TEMPLATES[COOP_NAMES[name]]
    # CoOp's class name works as an alias, and root may be the dataset folder itself
    assert build_dataset(COOP_NAMES[name], str(tmp_path)).test == ds.test
    assert build_dataset(name, str(tmp_path / SPLIT_JSON_DATASETS[name][0])).train == ds.train
    img = ds.loader(ds.train[0].path)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_stanford_cars_paths_relative_to_dataset_dir(tmp_path):
    split = make_split_json_dataset(tmp_path, "stanford_cars")
    assert split["train"][0][0].startswith("cars_train/")
    ds = build_dataset("stanford_cars", str(tmp_path))
    assert ds.train[0].path == str(tmp_path / "stanford_cars" / split["train"][0][0])


def test_root_missing(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"dataset root '{missing}' does not exist \(option data\.root\)"):
        build_dataset("oxford_pets", str(missing))
    with pytest.raises(DataError, match=r"data\.root"):
        build_dataset("oxford_pets", None)


def test_dataset_folder_missing(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'oxford_pets'}.*DATASETS\.md"):
        build_dataset("oxford_pets", str(tmp_path))


def test_split_file_missing(tmp_path):
    make_split_json_dataset(tmp_path, "dtd")
    os.remove(_split_path(tmp_path, "dtd"))
    with pytest.raises(DataError, match=r"split_zhou_DescribableTextures\.json.*not found.*DATASETS\.md"):
        build_dataset("dtd", str(tmp_path))


def test_image_dir_missing(tmp_path):
    make_split_json_dataset(tmp_path, "eurosat")
    os.rename(_image_dir(tmp_path, "eurosat"), tmp_path / "eurosat" / "elsewhere")
    with pytest.raises(DataError, match=rf"{tmp_path / 'eurosat' / '2750'}' not found.*DATASETS\.md"):
        build_dataset("eurosat", str(tmp_path))


def test_malformed_json(tmp_path):
    make_split_json_dataset(tmp_path, "food101")
    path = _split_path(tmp_path, "food101")
    path.write_text('{\n "train": [\n  ["a.jpg", 0, "x"],,\n ]\n}\n')
    with pytest.raises(DataError, match=r"split_zhou_Food101\.json.*not valid JSON.*line 3, column"):
        build_dataset("food101", str(tmp_path))


def test_entry_naming_missing_image(tmp_path):
    split = make_split_json_dataset(tmp_path, "oxford_flowers")
    split["test"].append(["class_a/ghost.jpg", 0, "class a"])
    write_json(_split_path(tmp_path, "oxford_flowers"), split)
    with pytest.raises(
        DataError, match=r"split_zhou_OxfordFlowers\.json.*'test' entry #6.*ghost\.jpg.*does not exist"
    ):
        build_dataset("oxford_flowers", str(tmp_path))
    # check_files=False skips the check
    assert len(build_dataset("oxford_flowers", str(tmp_path), check_files=False).test) == 7


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (["class_a/class_a_train_000.jpg", 7, "class a"], r"label\(s\) 3, 4, 5, 6 never occur"),
        (["class_a/class_a_train_000.jpg", 1, "other"], r"label 1 is given two class names"),
        (["class_a/class_a_train_000.jpg", -1, "class a"], r"label must be an integer >= 0"),
        (["class_a/class_a_train_000.jpg", 0], r"expected \[relative_path, label, classname\]"),
    ],
)
def test_bad_labels_and_entries(tmp_path, entry, message):
    split = make_split_json_dataset(tmp_path, "caltech101")
    split["train"].append(entry)
    write_json(_split_path(tmp_path, "caltech101"), split)
    with pytest.raises(DataError, match=rf"split_zhou_Caltech101\.json.*{message}"):
        build_dataset("caltech101", str(tmp_path))


def test_paths_outside_image_dir(tmp_path):
    split = make_split_json_dataset(tmp_path, "sun397")
    outside = write_image(tmp_path / "outside.jpg", (1, 1, 1))
    for rel, message in [(str(outside), "is absolute"), ("../../outside.jpg", "points outside")]:
        bad = {**split, "train": split["train"] + [[rel, 0, "class a"]]}
        write_json(_split_path(tmp_path, "sun397"), bad)
        with pytest.raises(DataError, match=rf"split_zhou_SUN397\.json.*{message}.*allow_outside_root"):
            build_dataset("sun397", str(tmp_path))
        ds = build_dataset("sun397", str(tmp_path), allow_outside_root=True)
        assert ds.train[-1].path == str(outside)


def test_unknown_and_bad_options(tmp_path):
    make_split_json_dataset(tmp_path, "ucf101")
    with pytest.raises(DataError, match=r"unknown option 'shots_per_class'.*ucf101"):
        build_dataset("ucf101", str(tmp_path), shots_per_class=3)
    with pytest.raises(DataError, match=r"data\.options\.check_files.*true or false"):
        build_dataset("ucf101", str(tmp_path), check_files="no")


# ---------------------------------------------------------------- FGVC Aircraft


def test_fgvc_aircraft(tmp_path):
    make_fgvc_aircraft(tmp_path, per_split={"train": 2, "val": 1, "test": 1})
    ds = build_dataset("FGVCAircraft", str(tmp_path))
    assert ds.name == "fgvc_aircraft"
    assert ds.classnames == ["707-320", "A300B4", "Boeing 747"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 3, 3)
    assert [d.label for d in ds.train] == [0, 0, 1, 1, 2, 2]
    assert ds.train[4].classname == "Boeing 747"
    assert ds.train[0].path == str(tmp_path / "fgvc_aircraft" / "images" / "1000000.jpg")
    assert ds.template == COOP_TEMPLATES["FGVCAircraft"]


def test_fgvc_aircraft_errors(tmp_path):
    base = make_fgvc_aircraft(tmp_path)
    with open(base / "images_variant_val.txt", "a") as f:
        f.write("1234567 Concorde\n")
    with pytest.raises(DataError, match=r"images_variant_val\.txt', line 4: variant 'Concorde'"):
        build_dataset("fgvc_aircraft", str(tmp_path))
    (base / "images_variant_val.txt").write_text("9999999 A300B4\n")
    with pytest.raises(DataError, match=r"images_variant_val\.txt', line 1.*9999999\.jpg.*does not exist"):
        build_dataset("fgvc_aircraft", str(tmp_path))
    os.remove(base / "variants.txt")
    with pytest.raises(DataError, match=r"fgvc_aircraft/variants\.txt' not found.*DATASETS\.md"):
        build_dataset("fgvc_aircraft", str(tmp_path))


# ---------------------------------------------------------------- ImageNet


def test_imagenet(tmp_path):
    base = make_imagenet(tmp_path, train_per_class=3, val_per_class=2)
    (base / "preprocessed.pkl").write_bytes(b"not a pickle")  # must never be read
    ds = build_dataset("ImageNet", str(tmp_path))
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert (len(ds.train), len(ds.test)) == (9, 6)
    assert ds.val == ds.test  # CoOp: ImageNet's val is its test set
    assert ds.train[-1].label == 2 and ds.train[-1].classname == "great white shark"
    assert "/images/val/" in ds.test[0].path
    assert ds.template == "a photo of a {}."


def test_imagenet_labels_follow_sorted_folders(tmp_path):
    wnids = {"n02": "second", "n01": "first", "n03": "third"}  # classnames.txt not sorted
    make_imagenet(tmp_path, wnids=wnids, train_per_class=1, val_per_class=1)
    ds = build_dataset("imagenet", str(tmp_path))
    assert ds.classnames == ["first", "second", "third"]


def test_imagenet_errors(tmp_path):
    base = make_imagenet(tmp_path)
    write_image(base / "images" / "val" / "n09999999" / "x.JPEG", (0, 0, 0))
    with pytest.raises(DataError, match=r"images/val/n09999999' is not one of the classes"):
        build_dataset("imagenet", str(tmp_path))
    write_imagenet_classnames(base / "classnames.txt", {"n01440764": "tench"})
    with pytest.raises(DataError, match=r"images/train/n01443537' has no entry in .*classnames\.txt"):
        build_dataset("imagenet", str(tmp_path))
    os.remove(base / "classnames.txt")
    with pytest.raises(DataError, match=r"imagenet/classnames\.txt' not found"):
        build_dataset("imagenet", str(tmp_path))


# ---------------------------------------------------------------- domain generalisation targets


@pytest.mark.parametrize("name", ["imagenetv2", "imagenet_sketch"])
def test_dg_full(tmp_path, name):
    make_imagenet_dg(tmp_path, name, per_class=2)
    ds = build_dataset(name, str(tmp_path))
    assert isinstance(ds, DGSplits)
    assert ds.train == [] and ds.val == []
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert ds.imagenet_indices == [0, 1, 2]
    assert [d.label for d in ds.test] == [0, 0, 1, 1, 2, 2]
    assert ds.test[2].classname == "goldfish"


@pytest.mark.parametrize("name", ["imagenet_a", "imagenet_r"])
def test_dg_subset(tmp_path, name):
    make_imagenet_dg(tmp_path, name, present=["n01443537", "n01484850"], per_class=2)
    ds = build_dataset(name, str(tmp_path))
    assert isinstance(ds, DGSplits)
    assert ds.classnames == ["goldfish", "great white shark"]
    assert ds.imagenet_indices == [1, 2]
    assert [d.label for d in ds.test] == [0, 0, 1, 1]
    assert ds.template == "a photo of a {}."


def test_dg_aliases_and_classnames_fallback(tmp_path):
    make_imagenet_dg(tmp_path, "imagenet_r")
    os.remove(tmp_path / DG_DATASETS["imagenet_r"][0] / "classnames.txt")
    with pytest.raises(DataError, match=r"imagenet-rendition/classnames\.txt' not found"):
        build_dataset("ImageNetR", str(tmp_path))
    write_imagenet_classnames(tmp_path / "imagenet" / "classnames.txt")
    assert build_dataset("ImageNetR", str(tmp_path)).imagenet_indices == [0, 1, 2]


def test_dg_errors(tmp_path):
    base = make_imagenet_dg(tmp_path, "imagenetv2")
    (base / DG_DATASETS["imagenetv2"][1] / "7").mkdir()
    with pytest.raises(
        DataError, match=r"imagenetv2-matched-frequency-format-val/7' is not a label index 0\.\.2"
    ):
        build_dataset("imagenetv2", str(tmp_path))
    base = make_imagenet_dg(tmp_path, "imagenet_a")
    for image in (base / "imagenet-a" / "n01443537").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"imagenet-a/n01443537' contains no images"):
        build_dataset("imagenet_a", str(tmp_path))
    with pytest.raises(DataError, match=r"imagenet-sketch"):
        build_dataset("imagenet_sketch", str(tmp_path))


# ---------------------------------------------------------------- templates


def test_dataset_templates_match_coop():
    for coop_name, template in COOP_TEMPLATES.items():
        assert get_dataset_info(coop_name).template == template
        assert get_templates("dataset", coop_name) == [template]
    assert get_dataset_info("imagefolder").template == "a photo of a {}."


def test_imagenet_select_like_zeroshotclip2():
    assert len(IMAGENET_TEMPLATES_SELECT) == 7
    assert get_templates("imagenet_select", "oxford_pets") == [
        *IMAGENET_TEMPLATES_SELECT,
        "a photo of a {}, a type of pet.",
    ]
    assert get_templates("imagenet_select", "imagenet") == list(IMAGENET_TEMPLATES_SELECT)


def test_imagenet80():
    from vlprompt.data.templates import IMAGENET_TEMPLATES

    templates = get_templates("imagenet80", "dtd")
    assert len(templates) == 80 and templates == list(IMAGENET_TEMPLATES)
    assert "a bad photo of a {}." in templates
    assert all(t.count("{}") == 1 for t in templates)


def test_explicit_templates_and_errors():
    assert get_templates(["a {}.", "the {} here"], "dtd") == ["a {}.", "the {} here"]
    assert get_templates("my photo of {}", "dtd") == ["my photo of {}"]
    assert get_templates("dataset", "csv", template="an image of {}.") == ["an image of {}."]
    with pytest.raises(DataError, match=r"prompt template #1 'no placeholder' must contain exactly one"):
        get_templates(["a {}.", "no placeholder"], "dtd")
    with pytest.raises(DataError, match=r"'\{\} and \{\}' must contain exactly one"):
        get_templates(["{} and {}"], "dtd")
    with pytest.raises(DataError, match=r"'a \{name\}'"):
        get_templates(["a {name}"], "dtd")
    with pytest.raises(DataError, match=r"unknown prompt template spec 'imagenet81'"):
        get_templates("imagenet81", "dtd")
    with pytest.raises(DataError, match=r"empty"):
        get_templates([], "dtd")


def test_split_file_is_plain_json(tmp_path):
    # the split files the helpers write are what CoOp ships: a JSON object of three lists
    split = make_split_json_dataset(tmp_path, "oxford_pets")
    assert json.loads(_split_path(tmp_path, "oxford_pets").read_text()) == split
    assert IMAGENET_WNIDS["n01484850"] == "great white shark"
