"""Entropy of predictions over an image's views, shared by the test-time methods (TPT, C-TPT, TDA, BoostAdapter,
DPE): every one of their authors' repositories copies TPT's two helpers (azshue/TPT tpt_classification.py
``select_confident_samples`` l.41-44, ``avg_entropy`` l.46-51; kdiAAA/TDA utils.py l.24-33; taolinzhang/BoostAdapter
utils.py l.25-36; zhangce01/DPE-CLIP utils.py l.55-60 and l.148-150).
"""

from __future__ import annotations

import torch
from torch import Tensor


def softmax_entropy(logits: Tensor) -> Tensor:
    """``-sum softmax(l) log_softmax(l)`` over the last axis: ``[..., n_cls] -> [...]`` (nats)."""
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def select_confident_views(logits: Tensor, selection_p: float) -> Tensor:
    """Indices of the ``int(V * selection_p)`` views of lowest prediction entropy, lowest first.

    ``logits [V, n_cls] -> [k]`` (``select_confident_samples``, tpt_classification.py l.41-44). At least one
    view is kept: below 10 views the authors' ``int(V * 0.1)`` is 0 and their loss is undefined. Ties are
    broken by view order (stable sort).
    """
    k = max(1, int(logits.shape[0] * selection_p))
    return torch.argsort(softmax_entropy(logits), stable=True)[:k]


def average_prediction_entropy(logits: Tensor) -> Tensor:
    """``H(mean_v softmax(z_v))`` of ``logits [k, n_cls]`` -> scalar, in log space (``avg_entropy``,
    tpt_classification.py l.46-51: log of the mean probability by logsumexp, clamped at the dtype's minimum);
    for one row, the entropy of its softmax. Differentiable (TPT's and DPE's loss)."""
    log_p = logits.float().log_softmax(dim=-1)  # [k, n_cls]
    log_mean = torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(log_p.shape[0]), device=log_p.device))
    log_mean = log_mean.clamp(min=torch.finfo(log_mean.dtype).min)
    return -(log_mean * log_mean.exp()).sum(dim=-1)
