"""Accuracy metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score

from vlprompt.core.metrics import accuracy_report


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_cls = 7
    labels = rng.integers(0, n_cls, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, n_cls, 200))
    names = [f"c{i}" for i in range(n_cls)]
    rep = accuracy_report(torch.tensor(preds), torch.tensor(labels), names)
    assert rep["accuracy"] == pytest.approx(100 * accuracy_score(labels, preds))
    assert rep["macro_accuracy"] == pytest.approx(100 * balanced_accuracy_score(labels, preds))
    per = recall_score(labels, preds, average=None, labels=list(range(n_cls)), zero_division=0)
    for i, name in enumerate(names):
        assert rep["per_class"][name] == pytest.approx(100 * per[i], abs=1e-3)


def test_classes_without_images_are_reported_as_none():
    rep = accuracy_report(torch.tensor([0, 0]), torch.tensor([0, 1]), ["a", "b", "c"])
    assert rep["per_class"]["c"] is None
    assert rep["macro_accuracy"] == pytest.approx(50.0)


def test_accuracies_are_exact_percentages_not_float32_noise():
    # 24 of 25 right is 96.0, not float32's 95.99999785423279 (which the reports used to print)
    labels = torch.zeros(25, dtype=torch.long)
    preds = torch.cat([torch.zeros(24, dtype=torch.long), torch.ones(1, dtype=torch.long)])
    rep = accuracy_report(preds, labels, ["a", "b"])
    assert rep["accuracy"] == 96.0 and rep["macro_accuracy"] == 96.0 and rep["per_class"]["a"] == 96.0
    assert repr(rep["accuracy"]) == "96.0"
