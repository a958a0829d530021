"""K-shot sampling and few-shot split files (vlprompt.data.fewshot)."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

from vlprompt.core.errors import DataError
from vlprompt.data.coop_layouts import DGSplits
from vlprompt.data.fewshot import load_fewshot_json, make_fewshot, sample_fewshot, save_fewshot_json
from vlprompt.data.registry import build_dataset
from vlprompt.data.types import DatasetSplits, Datum

from data_trees import make_imagenet_dg

CLASSES = ["cat", "dog", "bird"]


def _items(per_class=(10, 8, 6), prefix="train"):
    return [
        Datum(f"/data/{prefix}/{CLASSES[label]}/{i:03d}.jpg", label, CLASSES[label])
        for label, n in enumerate(per_class)
        for i in range(n)
    ]


def _splits(train=(10, 8, 6), val=(5, 5, 5), test=(2, 2, 2)):
    return DatasetSplits(
        name="toy",
        classnames=list(CLASSES),
        train=_items(train, "train"),
        val=_items(val, "val") if val else [],
        test=_items(test, "test"),
        template="a photo of a {}.",
    )


def test_counts_sorted_no_duplicates():
    out = sample_fewshot(_items(), 4, seed=1)
    assert Counter(d.label for d in out) == {0: 4, 1: 4, 2: 4}
    assert out == sorted(out, key=lambda d: (d.label, d.path))
    assert len(set(out)) == len(out)
    assert set(out) <= set(_items())


def test_deterministic_seeds_and_order_independent():
    items = _items()
    a = sample_fewshot(items, 3, seed=7)
    assert sample_fewshot(items, 3, seed=7) == a
    shuffled = list(items)
    random.Random(0).shuffle(shuffled)
    assert sample_fewshot(shuffled, 3, seed=7) == a
    assert sample_fewshot(list(reversed(items)), 3, seed=7) == a
    assert len({tuple(sample_fewshot(items, 3, seed=s)) for s in range(5)}) > 1


def test_all_and_bad_shots():
    items = _items()
    assert sample_fewshot(items, -1, seed=0) == sorted(items, key=lambda d: (d.label, d.path))
    assert len(sample_fewshot(items, None, seed=0)) == len(items)
    for bad in (0, -2):
        with pytest.raises(DataError, match=rf"data\.shots must be a positive number.*got {bad}"):
            sample_fewshot(items, bad, seed=0)
    with pytest.raises(DataError, match=r"data\.shots must be a whole number"):
        sample_fewshot(items, 2.5, seed=0)  # type: ignore[arg-type]


def test_not_enough_images():
    with pytest.raises(
        DataError,
        match=r"class 'bird' \(label 2\) has only 6 image\(s\) in the train split.*"
        r"data\.shots=8.*smaller data\.shots",
    ):
        sample_fewshot(_items(), 8, seed=0)
    out = sample_fewshot(_items(), 8, seed=0, strict=False, split_name="val")
    assert Counter(d.label for d in out) == {0: 8, 1: 8, 2: 6}
    with pytest.raises(DataError, match=r"class 'bird' \(label 2\) has only 0 image"):
        sample_fewshot(_items((3, 3)), 2, seed=0, classnames=CLASSES)


def test_make_fewshot():
    splits = _splits()
    few = make_fewshot(splits, 2, seed=3)
    assert Counter(d.label for d in few.train) == {0: 2, 1: 2, 2: 2}
    assert Counter(d.label for d in few.val) == {0: 2, 1: 2, 2: 2}
    assert few.test == splits.test and few.classnames == splits.classnames
    few16 = make_fewshot(_splits(train=(16, 16, 16)), 16, seed=3)
    assert Counter(d.label for d in few16.val) == {0: 4, 1: 4, 2: 4}  # min(K, 4), like CoOp
    assert make_fewshot(_splits(val=None), 2, seed=3).val == []
    assert make_fewshot(splits, -1, seed=3).train == splits.train
    assert len(splits.train) == 24  # the input is not modified


def test_make_fewshot_keeps_dg_type(tmp_path):
    make_imagenet_dg(tmp_path, "imagenet_a", present=["n01443537"])
    ds = build_dataset("imagenet_a", str(tmp_path))
    few = make_fewshot(ds, 1, seed=0)
    assert isinstance(few, DGSplits) and few.imagenet_indices == [1] and few.train == []


def test_json_round_trip(tmp_path):
    few = make_fewshot(_splits(), 3, seed=5)
    path = tmp_path / "sub" / "shot_3-seed_5.json"
    save_fewshot_json(path, few, dataset="toy", shots=3, seed=5)
    train, val, meta = load_fewshot_json(path)
    assert train == few.train and val == few.val
    assert meta == {
        "format": "vlprompt-fewshot",
        "version": 1,
        "dataset": "toy",
        "shots": 3,
        "seed": 5,
        "classnames": CLASSES,
    }
    assert os.listdir(path.parent) == ["shot_3-seed_5.json"]  # no temp files left behind
    save_fewshot_json(path, (few.train[:2], []), dataset="toy", shots=1, seed=0)  # overwrite, lists
    train, val, meta = load_fewshot_json(path)
    assert train == few.train[:2] and val == [] and meta["classnames"] == ["cat"]


def test_load_errors(tmp_path):
    path = tmp_path / "f.json"
    with pytest.raises(DataError, match=r"f\.json' not found"):
        load_fewshot_json(path)
    path.write_text('{"format": "vlprompt-fewshot",\n "version": 1,,\n}')
    with pytest.raises(DataError, match=r"f\.json' is not valid JSON.*line 2, column"):
        load_fewshot_json(path)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match=r"f\.json' is not a vlprompt few-shot file"):
        load_fewshot_json(path)
    base = {"format": "vlprompt-fewshot", "version": 1, "classnames": ["a"], "train": [], "val": []}
    path.write_text(json.dumps({**base, "version": 2}))
    with pytest.raises(DataError, match=r"version 2, newer"):
        load_fewshot_json(path)
    path.write_text(json.dumps({**base, "train": [["/x.jpg", 3, "a"]]}))
    with pytest.raises(DataError, match=r"'train' entry #0: label 3 is outside"):
        load_fewshot_json(path)
    path.write_text(json.dumps({**base, "val": [["/x.jpg", 0]]}))
    with pytest.raises(DataError, match=r"'val' entry #0: expected \[path, label, classname\]"):
        load_fewshot_json(path)
