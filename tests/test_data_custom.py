"""No-code custom datasets (vlprompt.data.custom): ImageFolder trees and CSV files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from vlprompt.core.errors import DataError
from vlprompt.data.registry import build_dataset

from data_trees import class_color, make_csv_dataset, make_imagefolder, write_image

# ---------------------------------------------------------------- imagefolder


def test_imagefolder_basic(tmp_path):
    root = make_imagefolder(
        tmp_path / "d", classes=("golden_retriever", "cat", "zebra"), per_class=3, test_per_class=2
    )
    ds = build_dataset("imagefolder", str(root))
    assert ds.name == "imagefolder"
    assert ds.classnames == ["cat", "golden retriever", "zebra"]  # sorted folder names, "_" -> " "
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 0, 6)
    assert [d.label for d in ds.test] == [0, 0, 1, 1, 2, 2]
    assert all(os.path.isabs(d.path) for d in ds.train)
    assert ds.template == "a photo of a {}."
    assert build_dataset("ImageFolder", str(root), template="a satellite photo of {}.").template == (
        "a satellite photo of {}."
    )


def test_imagefolder_images_are_distinguishable(tmp_path):
    root = make_imagefolder(tmp_path, classes=("a", "b", "c"), per_class=2)
    ds = build_dataset("imagefolder", str(root))
    means = {}
    for d in ds.train:
        means.setdefault(d.label, []).append(np.asarray(ds.loader(d.path), dtype=float).mean(axis=(0, 1)))
    for label, ms in means.items():
        for m in ms:
            assert np.abs(m - np.asarray(class_color(label))).max() < 8
    assert len({tuple(np.round(ms[0])) for ms in means.values()}) == 3


def test_imagefolder_val_and_nested_images(tmp_path):
    root = make_imagefolder(tmp_path, classes=("a", "b"), per_class=2, val_per_class=1)
    write_image(root / "train" / "a" / "sub" / "deep.png", class_color(0))
    (root / "train" / "a" / ".hidden.png").write_bytes(b"junk")
    ds = build_dataset("imagefolder", str(root))
    assert len(ds.val) == 2
    assert sum(d.label == 0 for d in ds.train) == 3


def test_imagefolder_classnames_file(tmp_path):
    root = make_imagefolder(tmp_path / "d", classes=("n01", "n02"), per_class=1)
    (root / "names.txt").write_text("n01 red fox\nn02   grey  wolf \n")
    ds = build_dataset("imagefolder", str(root), classnames_file="names.txt")
    assert ds.classnames == ["red fox", "grey  wolf"]
    names_json = tmp_path / "names.json"
    names_json.write_text(json.dumps({"n01": "fox", "n02": "wolf", "n03": "unused"}))
    assert build_dataset("imagefolder", str(root), classnames_file=str(names_json)).classnames == [
        "fox",
        "wolf",
    ]
    names_json.write_text(json.dumps({"n01": "fox"}))
    with pytest.raises(DataError, match=r"names\.json.*no entry for class folder 'n02'"):
        build_dataset("imagefolder", str(root), classnames_file=str(names_json))
    with pytest.raises(DataError, match=r"missing\.txt.*data\.options\.classnames_file.*not found"):
        build_dataset("imagefolder", str(root), classnames_file="missing.txt")


def test_imagefolder_test_class_not_in_train(tmp_path):
    root = make_imagefolder(tmp_path, classes=("a", "b"), per_class=1)
    write_image(root / "test" / "c" / "x.png", (0, 0, 0))
    with pytest.raises(DataError, match=rf"class folder '{root / 'test' / 'c'}' has no matching folder in"):
        build_dataset("imagefolder", str(root))


def test_imagefolder_empty_class_folder(tmp_path):
    root = make_imagefolder(tmp_path, classes=("a", "b"), per_class=1)
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=rf"class folder '{root / 'train' / 'empty'}' contains no images"):
        build_dataset("imagefolder", str(root))


def test_imagefolder_duplicate_classnames(tmp_path):
    root = make_imagefolder(tmp_path, classes=("sea_lion", "sea lion"), per_class=1)
    with pytest.raises(DataError, match=r"class name 'sea lion' is used for two classes"):
        build_dataset("imagefolder", str(root))


def test_imagefolder_layout_errors(tmp_path):
    root = make_imagefolder(tmp_path, classes=("a", "b"), per_class=1)
    write_image(root / "train" / "loose.png", (0, 0, 0))
    with pytest.raises(DataError, match=r"loose\.png' sits directly in"):
        build_dataset("imagefolder", str(root))
    os.remove(root / "train" / "loose.png")
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match=rf"test folder '{root / 'test'}' not found"):
        build_dataset("imagefolder", str(root))
    with pytest.raises(DataError, match=r"unknown option 'classnames' in data\.options.*classnames_file"):
        build_dataset("imagefolder", str(root), classnames="x")
    with pytest.raises(DataError, match=r"data\.options\.template 'photo' must contain exactly one"):
        build_dataset("imagefolder", str(root), template="photo")
    with pytest.raises(DataError, match=r"does not exist \(option data\.root\)"):
        build_dataset("imagefolder", str(tmp_path / "nope"))


# ---------------------------------------------------------------- csv


def test_csv_class_names(tmp_path):
    root = make_csv_dataset(tmp_path, classes=("dog", "cat", "bird"), per_class=2, with_val=True)
    ds = build_dataset("csv", str(root))
    assert ds.name == "csv"
    assert ds.classnames == ["bird", "cat", "dog"]  # sorted unique train labels
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 6, 6)
    assert ds.train[0].classname == "dog" and ds.train[0].label == 2
    assert ds.train[0].path == str(root / "images" / "train" / "dog" / "img_000.png")


def test_csv_integer_labels(tmp_path):
    root = make_csv_dataset(tmp_path, classes=("dog", "cat"), per_class=1, integer_labels=True)
    ds = build_dataset("csv", str(root), classnames_file="classnames.txt")
    assert ds.classnames == ["dog", "cat"]
    assert [d.label for d in ds.train] == [0, 1] and ds.train[1].classname == "cat"
    assert ds.val == []
    with pytest.raises(
        DataError, match=r"train\.csv', line 2: label '0' is an integer index.*classnames_file"
    ):
        build_dataset("csv", str(root))


def test_csv_explicit_files_without_root(tmp_path, monkeypatch):
    root = make_csv_dataset(tmp_path / "data", per_class=1)
    shutil.move(root / "test.csv", root / "eval.csv")
    monkeypatch.chdir(tmp_path)
    ds = build_dataset("csv", None, train_csv="data/train.csv", test_csv=str(root / "eval.csv"))
    assert len(ds.test) == 3
    with pytest.raises(DataError, match=r"test\.csv' not found \(or set data\.options\.test_csv\)"):
        build_dataset("csv", str(root))
    with pytest.raises(DataError, match=r"needs data\.root or data\.options\.train_csv"):
        build_dataset("csv", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.png,cat\n", r"line 1: the header must name the columns 'path' and 'label'"),
        ("path,label\nimages/a.png,cat,extra\n", r"line 2: expected 2 columns"),
        ("path,label\n\nimages/a.png\n", r"line 3: expected 2 columns"),
        ("", r"line 1: the header"),
    ],
)
def test_csv_malformed(tmp_path, text, message):
    root = make_csv_dataset(tmp_path, per_class=1)
    (root / "train.csv").write_text(text)
    with pytest.raises(DataError, match=rf"CSV file '{root / 'train.csv'}', {message}"):
        build_dataset("csv", str(root))


def test_csv_label_not_in_class_list(tmp_path):
    root = make_csv_dataset(tmp_path, classes=("a", "b"), per_class=1)
    with open(root / "test.csv", "a") as f:
        f.write("images/test/a/img_000.png,zebra\n")
    with pytest.raises(DataError, match=r"test\.csv', line 4: label 'zebra' is not in the class list"):
        build_dataset("csv", str(root))
    root2 = make_csv_dataset(tmp_path / "i", classes=("a", "b"), per_class=1, integer_labels=True)
    with open(root2 / "test.csv", "a") as f:
        f.write("images/test/a/img_000.png,5\n")
    with pytest.raises(DataError, match=r"line 4: label index 5 is outside the class list \(0\.\.1"):
        build_dataset("csv", str(root2), classnames_file="classnames.txt")


def test_csv_paths(tmp_path):
    root = make_csv_dataset(tmp_path / "d", classes=("a", "b"), per_class=1)
    outside = write_image(tmp_path / "outside.png", class_color(0))
    base = (root / "train.csv").read_text()
    for rel, message in [(str(outside), "is absolute"), ("../outside.png", "points outside")]:
        (root / "train.csv").write_text(base + f"{rel},a\n")
        with pytest.raises(DataError, match=rf"train\.csv', line 4: path .* {message}.*allow_outside_root"):
            build_dataset("csv", str(root))
        ds = build_dataset("csv", str(root), allow_outside_root=True)
        assert ds.train[-1].path == str(outside)
    (root / "train.csv").write_text(base + "images/ghost.png,a\n")
    with pytest.raises(
        DataError, match=r"train\.csv', line 4 names image '.*ghost\.png', which does not exist"
    ):
        build_dataset("csv", str(root))
