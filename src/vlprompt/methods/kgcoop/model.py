"""KgCoOp: Knowledge-guided Context Optimization (Yao, Zhang, Xu; CVPR 2023).

CoOp's prompt plus a penalty keeping each class's learned text feature close to the frozen text
feature of the dataset's hand-crafted prompt (``w_c^clip``; the template(s) of the build context)::

    L = CE(logit_scale * cos(f(x), w), y) + W * (1 - 1/C sum_c cos(w_c, w_c^clip))

as the reference computes it (``KgCoOp/trainers/kgcoop.py`` l.238-241 and l.309-310; the paper's Eq. 5
writes the squared distance ||w_c - w_c^clip||^2, which is 2 (1 - cos) for unit vectors). ``W`` = 8.0
(``scripts/run.sh``). Inference is CoOp's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import LossTerms, MethodContext, template_text_features
from vlprompt.methods.coop.model import CoOp
from vlprompt.methods.kgcoop.config import KgCoOpConfig


class KgCoOp(CoOp):
    """CoOp + ``W * (1 - mean_c cos(w_c, w_c^clip))``; ``w^clip`` is a frozen buffer ``[n_cls, E]``."""

    clip_text_features: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: KgCoOpConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        clip = template_text_features(backbone, self.classnames, self.context.templates)
        self.register_buffer("clip_text_features", clip, persistent=False)

    def knowledge_penalty(self, text: Tensor) -> Tensor:
        """``1 - mean_c cos(w_c, w_c^clip)`` (0-dim) for learned text features ``[n_cls, E]``."""
        cos = F.cosine_similarity(text.float(), self.clip_text_features.to(text.device).float(), dim=1, eps=1e-7)
        return 1.0 - cos.mean()

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        text = self.text_features()
        logits = self.logits(features, text)
        n = labels.shape[0]
        terms = {"ce": (F.cross_entropy(logits.float(), labels, reduction="sum"), n)}
        if self.config.w > 0:  # a per-batch value: weighted by the batch size, it stays exact across ranks
            terms["kg"] = (self.config.w * self.knowledge_penalty(text) * n, n)
        return LossTerms(terms, logits)
