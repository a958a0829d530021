"""LoCoOp: Local regularized Context Optimization (Miyai, Yu, Irie, Aizawa; NeurIPS 2023).

Loss (Eq. 4-6 of the paper, as in the reference ``trainers/locoop.py``)::

    L = CE(logit_scale * cos(f_global(x), t), y) + lambda * L_ood
    local logits  l_p = logit_scale * cos(f_local(x)_p, t)              # [B, P, n_cls]
    J = { p : y not in top-K classes of l_p }                          # ID-irrelevant patches
    L_ood = - mean_{p in J} H(softmax(l_p)),  H(q) = -sum_c q_c log(q_c + 1e-5)

L_ood is 0 (without error) when no patch is selected. Local features: see
:meth:`~vlprompt.backbones.base.Backbone.local_features`. Any CoOp prompt (unified or
class-specific) can be trained with the regulariser: the options are CoOp's plus ``lambda_value``
and ``top_k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.local import packed_global_local
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import LossTerms, MethodContext
from vlprompt.methods.coop.model import CoOp
from vlprompt.methods.locoop.config import LoCoOpConfig


def entropy_sum_of_selected(local_logits: Tensor, labels: Tensor, top_k: int,
                            weights: Tensor | None = None) -> tuple[Tensor, int]:
    """Summed entropy of the softmax of ID-irrelevant patches (ground truth not in their top-K).

    Args:
        local_logits: ``[B, P, C]`` scaled local logits.
        labels: ``[B]`` ground-truth labels.
        top_k: K.
        weights: optional ``[B]`` per-image weights, each patch's entropy multiplied by its image's weight
            (SCT's ``1e-7 + p(y|x)``, :mod:`vlprompt.methods.sct`); None = 1 (LoCoOp).

    Returns:
        (0-dim tensor: sum over the selected patches of w_b H(softmax(l_p)), number of selected patches).
    """
    b, p, c = local_logits.shape
    probs = F.softmax(local_logits.reshape(b * p, c).float(), dim=-1)
    topk = probs.topk(top_k, dim=1).indices  # [B*P, K]
    contains = topk.eq(labels.repeat_interleave(p).unsqueeze(1)).any(dim=1)
    selected = probs[~contains]
    entropies = -(selected * torch.log(selected + 1e-5)).sum(dim=1)  # [n_selected]
    if weights is not None:
        entropies = entropies * weights.float().repeat_interleave(p)[~contains]
    return entropies.sum(), int(selected.shape[0])


def entropy_of_selected(local_logits: Tensor, labels: Tensor, top_k: int) -> Tensor:
    """Mean entropy of the softmax of ID-irrelevant patches (0-dim tensor; 0 when none is selected)."""
    total, n = entropy_sum_of_selected(local_logits, labels, top_k)
    return total / n if n else local_logits.new_zeros(())


class LoCoOp(CoOp):
    """CoOp + LoCoOp's OOD regulariser on local features; inference is CoOp's (global features)."""

    def __init__(self, backbone: Backbone, classnames: list[str], config: LoCoOpConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        k = config.top_k if config.top_k is not None else max(1, round(0.2 * len(classnames)))
        if k > len(classnames):
            raise ConfigError(f"option method.top_k ({k}) is larger than the number of classes ({len(classnames)})")
        self.top_k = k

    def encode_images(self, images: Tensor) -> Tensor:
        """Global and local features packed as ``[B, 1 + P, E]`` (global first)."""
        return packed_global_local(self.backbone, images)

    @staticmethod
    def _global(features: Tensor) -> Tensor:
        return features[:, 0] if features.dim() == 3 else features

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        return super().logits(self._global(image_features), text_features)

    def local_logits(self, features: Tensor, text: Tensor) -> Tensor:
        """Scaled local logits ``[B, P, C]``: ``logit_scale * cos(f_local(x)_p, t_c)`` of the packed features'
        patches (``features [B, 1 + P, E]``) against the text features ``[C, E]``."""
        local = F.normalize(features[:, 1:].float(), dim=-1)
        return self.backbone.logit_scale.to(local.device) * local @ text.t()

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Terms ``ce`` (global logits) and ``ood`` (``-lambda`` x entropy summed over the ID-irrelevant
        patches, counted by the number of selected patches): the trainer divides each by its count over
        the global batch, so the regulariser is the mean over the selected patches of all ranks."""
        text = self.text_features()
        logits = super().logits(self._global(features), text)
        terms = {"ce": (F.cross_entropy(logits, labels, reduction="sum"), labels.shape[0])}
        if features.dim() == 3 and self.config.lambda_value > 0:
            total, n_sel = entropy_sum_of_selected(self.local_logits(features, text), labels, self.top_k)
            terms["ood"] = (-self.config.lambda_value * total, n_sel)
        return LossTerms(terms, logits)
