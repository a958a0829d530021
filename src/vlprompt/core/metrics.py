"""Classification metrics: accuracy overall and per class (pure torch), and the harmonic mean."""

from __future__ import annotations

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
    return {
        "accuracy": 100.0 * float(correct.mean()) if len(labels) else 0.0,
        "macro_accuracy": 100.0 * float((hits[present] / total[present]).mean()) if present.any() else 0.0,
        "n": int(len(labels)),
        "per_class": per_class,
    }


def harmonic_mean(a: float, b: float) -> float:
    """H = 2ab / (a + b) of base and new accuracy (CoCoOp's base-to-new metric, Zhou et al., CVPR 2022);
    0 when both are 0."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)
