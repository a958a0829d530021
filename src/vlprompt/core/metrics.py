"""Classification metrics: accuracy overall and per class (pure torch), and the harmonic mean."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def accuracy_report(preds: Tensor, labels: Tensor, classnames: list[str]) -> dict[str, Any]:
    """Overall accuracy, mean per-class accuracy and per-class accuracy, all in percent.

    Args:
        preds: ``[N]`` predicted labels.
        labels: ``[N]`` true labels in ``[0, n_cls)``.
        classnames: ``n_cls`` names (per-class keys).

    Classes without test images get ``None`` and are excluded from the mean per-class accuracy.
    """
    preds, labels = preds.long().cpu(), labels.long().cpu()
    n_cls = len(classnames)
    correct = (preds == labels).float()
    total = torch.bincount(labels, minlength=n_cls).float()
    hits = torch.bincount(labels, weights=correct, minlength=n_cls)
    per_class = {
        name: (None if total[i] == 0 else round(100.0 * float(hits[i] / total[i]), 4))
        for i, name in enumerate(classnames)
    }
    present = total > 0
    # counts -> float64 percentages: a float32 mean prints 96% of 25 images as 95.99999785423279
    recall = hits[present].double() / total[present].double()
    return {
        "accuracy": 100.0 * int((preds == labels).sum()) / len(labels) if len(labels) else 0.0,
        "macro_accuracy": 100.0 * float(recall.mean()) if present.any() else 0.0,
        "n": int(len(labels)),
        "per_class": per_class,
    }


def harmonic_mean(a: float, b: float) -> float:
    """H = 2ab / (a + b) of base and new accuracy (CoCoOp's base-to-new metric, Zhou et al., CVPR 2022);
    0 when both are 0."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


#: Bins of the expected calibration error (C-TPT, hee-suk-yoon/C-TPT tpt_classification.py line 91).
ECE_BINS = 20


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error in percent (Guo et al., ICML 2017; C-TPT's calibration metric).

    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width confidence bins, each
    bin ``(lower, upper]`` (C-TPT tpt_classification.py lines 43-76: ``bin_lower < confidence <= bin_upper``),
    with confidence the top-1 probability.

    Args:
        probs: ``[N, n_cls]`` predicted class probabilities (softmax of the logits).
        labels: ``[N]`` true labels.
        n_bins: number of bins (C-TPT: 20).
    """
    if probs.dim() != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"ECE needs probabilities [N, n_cls] and labels [N], got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    if probs.shape[0] == 0:
        return 0.0
    conf, pred = probs.double().max(dim=1)
    correct = (pred.cpu() == labels.long().cpu()).double()
    conf = conf.cpu()
    edges = torch.linspace(0, 1, n_bins + 1).double()  # float32 edges, as the reference's torch.linspace
    # bin b holds edges[b] < conf <= edges[b + 1]; confidence 0 falls in no bin, as in the reference
    index = torch.bucketize(conf, edges, right=False) - 1
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        if count:
            ece += count / len(conf) * (correct[inside].mean() - conf[inside].mean()).abs()
    return 100.0 * float(ece)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for one value): the ± of every summary over seeds or stream
    orders (protocols, the test-time protocol, reports)."""
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)
