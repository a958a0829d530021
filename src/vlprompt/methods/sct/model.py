"""SCT: Self-Calibrated Tuning of vision-language models for OOD detection (Yu et al., NeurIPS 2024).

LoCoOp's two terms, each weighted by the prediction's uncertainty, exactly as the authors' trainer computes
them (tmlr-group/SCT ``trainers/sct.py``, fp32 path ``forward_backward`` lines 313-329, ``entropy_select_topk``
lines 24-41)::

    p_b   = softmax(logit_scale * cos(f_global(x_b), t))[y_b]             # [B], NOT detached (as the authors)
    L_id  = mean_b  CE_b * (1.0000001 - p_b)                              # sct.py:317-321
    J     = { (b, q) : y_b not in the top-K classes of softmax(l_{b,q}) }  # LoCoOp's ID-irrelevant patches
    L_ood = - mean_{(b,q) in J} H(softmax(l_{b,q})) * (1e-7 + p_b)          # sct.py:28-41, 326
    L     = L_id + lambda * L_ood                                          # sct.py:329

with ``H(q) = -sum_c q_c log(q_c + 1e-5)`` and ``l_{b,q}`` the scaled local logits of patch q. L_ood is 0
when no patch is selected (the authors return ``tensor([0])``, sct.py:38-39). Both weights carry gradient:
the authors gather ``p_b`` from the softmax without ``detach`` (sct.py:318-319), so vlprompt does too.

Built on :class:`~vlprompt.methods.locoop.model.LoCoOp`: its local logits and its selection rule
(:func:`~vlprompt.methods.locoop.model.entropy_sum_of_selected` with per-image weights); inference and the OOD
scores are LoCoOp's (MCM and GL-MCM of the global / local features at T = 1: the authors' ``test_ood``,
sct.py:419-451, divides the logits by 100, i.e. cosines for OpenAI CLIP's logit scale).

Differences from the authors' code: vlprompt computes in fp32 (the authors' LoCoOp trainer defaults to fp16,
``train.py:72``; their ``amp`` branch takes ``log(softmax + 1e-12)`` instead of ``log_softmax``, sct.py:297);
the authors' repository defines no ``TRAINER.sct`` config node (train.py:68-80 extends only LOCOOP and LOCOOP_v5),
so their trainer needs one added before it runs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vlprompt.methods.base import LossTerms
from vlprompt.methods.locoop.model import LoCoOp, entropy_sum_of_selected

#: The authors' constants: ``1.0000001 - p`` on the ID term (sct.py:320), ``0.0000001 + p`` on the OOD term (sct.py:41).
ID_WEIGHT_OFFSET = 1.0000001
OOD_WEIGHT_OFFSET = 1e-7


class SCT(LoCoOp):
    """LoCoOp whose CE and entropy regulariser are weighted by the ground truth's global probability."""

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Terms ``ce`` (``sum_b CE_b (1.0000001 - p_b)``, counted by B) and ``ood`` (``-lambda sum_J H (1e-7 + p_b)``,
        counted by the selected patches): the trainer's means over the global batch give the authors' loss."""
        text = self.text_features()
        logits = self.logits(features, text)  # [B, C] global
        p_true = logits.float().softmax(dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)  # [B]
        ce = F.cross_entropy(logits.float(), labels, reduction="none")  # [B] = -log_softmax[y]
        terms = {"ce": (((ID_WEIGHT_OFFSET - p_true) * ce).sum(), labels.shape[0])}
        if features.dim() == 3 and self.config.lambda_value > 0:
            total, n_sel = entropy_sum_of_selected(self.local_logits(features, text), labels, self.top_k,
                                                   weights=OOD_WEIGHT_OFFSET + p_true)
            terms["ood"] = (-self.config.lambda_value * total, n_sel)
        return LossTerms(terms, logits)
