"""OOD detection: scores (MCM, GL-MCM, max-logit, energy) and metrics (FPR@95TPR, AUROC, AUPR).

Convention (as MCM and LoCoOp report): **in-distribution is the positive class** and a higher score
means "more in-distribution".

* ``FPR95``: the false-positive rate (OOD images accepted as ID) at the threshold whose true-positive
  rate (ID recall) is closest to 0.95, exactly as ``fpr_and_fdr_at_recall`` in MCM's / LoCoOp's
  evaluation code (ties of the distance resolved towards the higher recall).
* ``AUROC``: area under the ROC curve (ties count 1/2), equal to scikit-learn's ``roc_auc_score``.
* ``AUPR``: average precision with ID as positive, equal to ``average_precision_score``.

Scores are computed in fp32 from cosine similarities (in fp16, max softmax at T = 1 collapses to ties):

* ``mcm``: max_c softmax_c(cos(f, t_c) / T) (Ming et al., NeurIPS 2022); T = 1 by default, which is
  the reference's ``softmax(logits / 100)`` for OpenAI CLIP's logit scale of 100.
* ``glmcm``: MCM of the global feature + max over patches and classes of softmax(cos(f_p, t_c) / T)
  (Miyai et al., 2023).
* ``maxlogit``: max_c logit_scale * cos; ``energy``: logsumexp_c of the same logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SCORES = ("mcm", "glmcm", "maxlogit", "energy")


# ---------------------------------------------------------------------------------- scores
def ood_scores(global_features: Tensor, text_features: Tensor, *, kind: str = "mcm", temperature: float = 1.0,
               logit_scale: float = 100.0, local_features: Tensor | None = None) -> Tensor:
    """ID-ness scores ``[B]`` (higher = more in-distribution).

    Args:
        global_features: ``[B, E]`` image features.
        text_features: ``[C, E]`` class text features.
        kind: one of :data:`SCORES`.
        temperature: T of MCM / GL-MCM.
        logit_scale: the model's logit scale (for ``maxlogit`` / ``energy``).
        local_features: ``[B, P, E]`` patch features (``glmcm`` only).
    """
    img = F.normalize(global_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    cos = img @ txt.t()  # [B, C]
    if kind == "mcm":
        return (cos / temperature).softmax(dim=-1).max(dim=-1).values
    if kind == "glmcm":
        if local_features is None:
            raise ValueError("GL-MCM needs local features")
        loc = F.normalize(local_features.float(), dim=-1) @ txt.t()  # [B, P, C]
        local = (loc / temperature).softmax(dim=-1).amax(dim=(1, 2))
        return (cos / temperature).softmax(dim=-1).max(dim=-1).values + local
    if kind == "maxlogit":
        return (logit_scale * cos).max(dim=-1).values
    if kind == "energy":
        return torch.logsumexp(logit_scale * cos, dim=-1)
    raise ValueError(f"unknown OOD score '{kind}'; choose from {', '.join(SCORES)}")


# ---------------------------------------------------------------------------------- metrics
def _labels_scores(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(id_scores, dtype=np.float64).ravel()
    neg = np.asarray(ood_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("OOD metrics need at least one ID and one OOD score")
    y = np.r_[np.ones(pos.size, dtype=bool), np.zeros(neg.size, dtype=bool)]
    return y, np.r_[pos, neg]


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (tps, fps) at each distinct threshold, scores descending (as sklearn / Hendrycks)."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    idx = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[idx]
    fps = 1 + idx - tps
    return tps, fps


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> float:
    """FPR at the threshold whose TPR (ID recall) is closest to ``tpr`` (MCM's ``fpr_and_fdr_at_recall``)."""
    y, s = _labels_scores(id_scores, ood_scores)
    tps, fps = _curve(y, s)
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - tpr))
    return float(fps[cutoff] / np.sum(~y))


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve, ID positive (Mann-Whitney U with tied ranks averaged)."""
    y, s = _labels_scores(id_scores, ood_scores)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty_like(s)
    sorted_s = s[order]
    start = 0
    for end in np.r_[np.where(np.diff(sorted_s))[0] + 1, s.size]:
        ranks[order[start:end]] = (start + end + 1) / 2.0  # average 1-based rank of the tie group
        start = end
    n_pos, n_neg = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def aupr(id_scores: Any, ood_scores: Any) -> float:
    """Average precision with ID as positive: ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds."""
    y, s = _labels_scores(id_scores, ood_scores)
    tps, fps = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ood_metrics(id_scores: Any, ood_scores: Any) -> dict[str, float]:
    """``{"fpr95", "auroc", "aupr"}`` in percent."""
    return {
        "fpr95": 100.0 * fpr_at_tpr(id_scores, ood_scores, 0.95),
        "auroc": 100.0 * auroc(id_scores, ood_scores),
        "aupr": 100.0 * aupr(id_scores, ood_scores),
    }
