"""``data.fewshot_sampler: lpclip`` against an independent re-implementation of the sampling of CoOp's
linear-probe script (KaiyangZhou/CoOp@ff61507 ``lpclip/linear_probe.py`` l.25-51), on a small labelled list
in shuffled order (issue 30 §3)."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

from vlprompt.config import DataConfig
from vlprompt.core.errors import ConfigError
from vlprompt.data.lpclip_fewshot import make_fewshot_lpclip
from vlprompt.data.pipeline import fewshot_splits
from vlprompt.data.reference_fewshot import ShortClassWarning
from vlprompt.data.types import DatasetSplits, Datum

CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def _labelled(seed: int) -> DatasetSplits:
    """5 classes, 9-13 train and 4-8 val images each, listed in a shuffled order (as a split file may)."""
    rng = random.Random(seed)
    train = [Datum(f"train/{c}/{i}.jpg", y, c) for y, c in enumerate(CLASSES) for i in range(9 + 1 * y)]
    val = [Datum(f"val/{c}/{i}.jpg", y, c) for y, c in enumerate(CLASSES) for i in range(4 + y)]
    rng.shuffle(train)
    rng.shuffle(val)
    return DatasetSplits("dtd", list(CLASSES), train, val, test=[Datum("test/0.jpg", 0, "ant")])


def _lpclip(train_label: np.ndarray, val_label: np.ndarray, num_shot: int, seed: int) -> tuple[list, list]:
    """``linear_probe.py`` l.25-51 on the label arrays of the feature files: the selected indices."""
    val_shot_list = {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}  # l.25
    np.random.seed(seed)  # l.30
    all_label_list = np.unique(train_label)  # l.33
    selected_idx_list = []
    for label in all_label_list:  # l.35-38
        label_collection = np.where(train_label == label)[0]
        selected_idx = np.random.choice(label_collection, size=num_shot, replace=False)
        selected_idx_list.extend(selected_idx)
    val_num_shot = val_shot_list[num_shot]  # l.43
    val_selected_idx_list = []
    for label in all_label_list:  # l.45-48
        label_collection = np.where(val_label == label)[0]
        selected_idx = np.random.choice(label_collection, size=val_num_shot, replace=False)
        val_selected_idx_list.extend(selected_idx)
    return selected_idx_list, val_selected_idx_list


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lpclip_sampler_draws_the_images_of_coop_linear_probe_script(seed):
    splits = _labelled(seed)
    train_label = np.array([d.label for d in splits.train])
    val_label = np.array([d.label for d in splits.val])
    for k in (1, 2, 4, 8):  # 8: the val draw is min(8, 4) = 4 per class (linear_probe.py l.25)
        want_train, want_val = _lpclip(train_label, val_label, k, seed)
        np.random.seed(12345)  # vlprompt's draw must not use (or move) numpy's global stream
        state = np.random.get_state()[1].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("error", ShortClassWarning)
            ours = make_fewshot_lpclip(splits, k, seed)
            via_config = fewshot_splits(splits, shots=k, seed=seed, sampler="lpclip", dataset="dtd")
        assert np.array_equal(np.random.get_state()[1], state)
        assert [d.path for d in ours.train] == [splits.train[i].path for i in want_train], (seed, k)
        assert [d.path for d in ours.val] == [splits.val[i].path for i in want_val], (seed, k)
        assert (via_config.train, via_config.val) == (ours.train, ours.val)
        assert ours.test == splits.test
    with pytest.warns(ShortClassWarning, match="fewer than 10 train images .*: 'ant' \\(9\\)\\."):
        short = make_fewshot_lpclip(splits, 10, seed)  # lpclip stops with numpy's ValueError there
    assert sum(d.label == 0 for d in short.train) == 9 and len(short.train) == 9 + 4 * 10
    assert DataConfig(dataset="dtd", fewshot_sampler="lpclip").fewshot_sampler == "lpclip"
    with pytest.raises(ConfigError, match="data.fewshot_sampler"):
        DataConfig(dataset="dtd", fewshot_sampler="numpy")
