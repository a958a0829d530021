"""The reference's few-shot images (issue 18): vlprompt's ``reference`` sampler against the independent
re-implementation of CoOp's readers + Dassl's ``generate_fewshot_dataset`` in ``coop_reference.py``, on
small trees in every CoOp layout (split files sorted and shuffled), seeds 1-3, K in {1, 2, 4, 8, 16},
all / base / new classes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from vlprompt.config import DataConfig
from vlprompt.core.errors import ConfigError, DataError
from vlprompt.data.fewshot import load_fewshot_json, make_fewshot
from vlprompt.data.pipeline import fewshot_splits, prepare_data
from vlprompt.data.reference_fewshot import ShortClassWarning
from vlprompt.data.registry import build_dataset
from vlprompt.data.subsample import subsample_classes

from coop_reference import (
    CLASSES,
    COOP_LAYOUTS,
    SEEDS,
    SHORT,
    SHOTS,
    VARIANTS,
    WNIDS,
    as_items,
    build_tree,
    reference_run,
)
from data_trees import make_imagefolder

# ------------------------------------------------------------------ the comparison
CASES = [(name, order) for name in COOP_LAYOUTS for order in ("sorted", "shuffled")] + [("imagenet", "listdir")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "order"), CASES)
def test_reference_sampler_matches_coop(tmp_path, name, order):
    build_tree(tmp_path, name, order)
    options = {"order": "listdir"} if name == "imagenet" else {}
    full = build_dataset(name, str(tmp_path), **options)
    short_name = (WNIDS[sorted(WNIDS)[3]] if name == "imagenet"
                  else VARIANTS[3] if name == "fgvc_aircraft" else CLASSES[3].replace("_", " "))
    compared = 0
    for seed in SEEDS:
        for shots in SHOTS:
            for subsample in ("all", "base", "new"):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    few = fewshot_splits(full, shots=shots, seed=seed, sampler="auto", subsample=subsample)
                ref_train, ref_val = reference_run(tmp_path, name, seed, shots, subsample)
                assert as_items(few.train) == ref_train, (seed, shots, subsample)
                assert as_items(few.val) == ref_val, (seed, shots, subsample)
                short = [str(w.message) for w in caught if issubclass(w.category, ShortClassWarning)]
                if shots > SHORT["train"]:
                    assert any(f"'{short_name}' ({SHORT['train']})" in m and "train" in m for m in short)
                else:
                    assert not [m for m in short if " train " in m]
                compared += 1
    assert compared == len(SEEDS) * len(SHOTS) * 3


def test_reference_differs_from_stable_and_order_matters(tmp_path):
    """Guards against a vacuous comparison: the two samplers and the two orders really differ."""
    build_tree(tmp_path / "a", "dtd", "sorted")
    build_tree(tmp_path / "b", "dtd", "shuffled")
    sorted_ds, shuffled_ds = (build_dataset("dtd", str(tmp_path / x)) for x in "ab")
    ref = fewshot_splits(sorted_ds, shots=4, seed=1, sampler="reference")
    stable = fewshot_splits(sorted_ds, shots=4, seed=1, sampler="stable")
    assert as_items(ref.train) != as_items(stable.train)
    shuffled = fewshot_splits(shuffled_ds, shots=4, seed=1, sampler="reference")
    rel = [(Path(d.path).name, d.label) for d in ref.train]
    assert rel != [(Path(d.path).name, d.label) for d in shuffled.train]


def test_prepare_data_samplers(tmp_path):
    """auto = reference on CoOp data, stable on ImageFolder; stable is today's order-independent sampler."""

    build_tree(tmp_path, "eurosat", "shuffled")
    want = reference_run(tmp_path, "eurosat", seed=2, shots=2, subsample="base")
    cfg = DataConfig(dataset="EuroSAT", root=str(tmp_path), shots=2, subsample_classes="base")  # alias works
    data = prepare_data(cfg, seed=2, fewshot_path=tmp_path / "run" / "fewshot.json")
    assert (as_items(data.train), as_items(data.val)) == want
    saved_train, saved_val, meta = load_fewshot_json(tmp_path / "run" / "fewshot.json")
    assert (saved_train, saved_val, meta["classnames"]) == (data.train, data.val, data.splits.classnames)
    cfg.fewshot_sampler = "stable"
    old = make_fewshot(subsample_classes(build_dataset("eurosat", str(tmp_path)), "base"), 2, 2)
    stable = prepare_data(cfg, seed=2)
    assert (stable.train, stable.val) == (old.train, old.val) and stable.train != data.train
    make_imagefolder(tmp_path / "if", per_class=4, val_per_class=2)
    folder = build_dataset("imagefolder", str(tmp_path / "if"))
    auto = prepare_data(DataConfig(dataset="imagefolder", root=str(tmp_path / "if"), shots=2), seed=1)
    assert auto.train == make_fewshot(folder, 2, 1).train
    with pytest.raises(ConfigError, match="data.fewshot_sampler"):
        DataConfig(dataset="dtd", fewshot_sampler="random")
    with pytest.raises(DataError, match=r"data\.options\.order .*sorted, listdir, preprocessed"):
        build_dataset("imagenet", str(tmp_path), order="random")


def test_imagenet_val_is_test_and_orders(tmp_path):
    build_tree(tmp_path, "imagenet", "listdir")
    sorted_ds = build_dataset("imagenet", str(tmp_path))
    listed = build_dataset("imagenet", str(tmp_path), order="listdir")
    assert sorted(as_items(listed.train)) == sorted(as_items(sorted_ds.train))
    assert as_items(sorted_ds.train) == sorted(as_items(sorted_ds.train), key=lambda x: (x[1], x[0]))
    few = fewshot_splits(listed, shots=2, seed=1)
    assert few.val == listed.test and len(few.train) == 2 * len(WNIDS)
    with pytest.raises(DataError, match=r"ImageNet listing '.*preprocessed\.pkl' not found"):
        build_dataset("imagenet", str(tmp_path), order="preprocessed")
