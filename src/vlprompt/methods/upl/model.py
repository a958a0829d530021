"""UPL's prompt-representation ensemble (Huang et al., 2022, Sec. 3.3).

``n_prompts`` CoOp prompts (unified context, class token at the end), each from its own random
initialisation, learned on the same pseudo-labels. The reference trains them as separate runs; here
they are one module whose contexts ``ctx [N, M, D]`` go through the text tower in one batched pass
(N x n_cls prompts) while the image features are shared. The training loss is the *sum* of the N
cross-entropies, so every prompt receives exactly the gradient it would get alone (SGD's momentum and
weight decay act element-wise, so the N prompts stay independent). At test time the scaled logits are
averaged:

    logits[b, c] = (1 / N) * sum_n  logit_scale * cos(f(x_b), g(t_c^n))
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import LossTerms, MethodContext, PromptMethod
from vlprompt.methods.coop.prompt import PromptLearner
from vlprompt.methods.upl.config import UPLConfig


class UPL(PromptMethod):
    """Ensemble of ``N`` unified CoOp prompts: ``ctx [N, M, D]``."""

    def __init__(self, backbone: Backbone, classnames: list[str], config: UPLConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.prompt_learner = PromptLearner(backbone, self.classnames, n_ctx=config.n_ctx, init_std=config.init_std)
        ctx = torch.empty(config.n_prompts, config.n_ctx, backbone.text_width)
        nn.init.normal_(ctx, std=config.init_std)
        self.prompt_learner.ctx = nn.Parameter(ctx.to(backbone.device))  # [N, M, D]

    @property
    def ctx(self) -> Tensor:
        """The N learned contexts ``[n_prompts, n_ctx, D]``."""
        return self.prompt_learner.ctx

    def text_features_all(self) -> Tensor:
        """Normalised text features of every prompt of the ensemble: ``[N, n_cls, E]`` (one text pass)."""
        feats = self.prompt_learner.encode_grouped(self.backbone, self.ctx)  # shared prefix per prompt
        return F.normalize(feats.float(), dim=-1)

    def logits_per_prompt(self, image_features: Tensor, text_all: Tensor | None = None) -> Tensor:
        """``[N, B, n_cls]`` scaled cosine logits of each prompt."""
        text_all = self.text_features_all() if text_all is None else text_all
        img = F.normalize(image_features.float(), dim=-1)
        out = self.backbone.logit_scale.to(img.device) * torch.einsum("be,nce->nbc", img, text_all)
        bias = self.backbone.logit_bias
        return out if bias is None else out + bias.to(img.device)

    def text_features(self) -> Tensor:
        """``[N, n_cls, E]``: fixed for evaluation, consumed by :meth:`logits`."""
        return self.text_features_all()

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Ensemble logits ``[B, n_cls]``: the mean of the N prompts' scaled logits."""
        return self.logits_per_prompt(image_features, text_features).mean(dim=0)

    def forward_features(self, image_features: Tensor) -> Tensor:
        """Per-prompt logits ``[N, B, n_cls]`` while training, ensemble logits ``[B, n_cls]`` otherwise."""
        per_prompt = self.logits_per_prompt(image_features)
        return per_prompt if self.training else per_prompt.mean(dim=0)

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Sum of the N prompts' cross-entropies (term ``ce``: summed over prompts and images, counted by
        images); the ensemble's logits for the accuracy log."""
        per_prompt = self.logits_per_prompt(features)
        ce = cast(Tensor, sum(F.cross_entropy(lg, labels, reduction="sum") for lg in per_prompt))  # N >= 1 prompts
        return LossTerms({"ce": (ce, labels.shape[0])}, per_prompt.mean(dim=0))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Sum over prompts of cross-entropy on the pseudo-labels (independent prompts)."""
        if logits.dim() == 2:
            return F.cross_entropy(logits, labels)
        return cast(Tensor, sum(F.cross_entropy(lg, labels) for lg in logits))  # N >= 1 prompts
