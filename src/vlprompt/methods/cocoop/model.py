"""CoCoOp: Conditional Prompt Learning (Zhou, Yang, Loy, Liu; CVPR 2022).

A Meta-Net maps each image feature to a bias pi(x) added to every context token (Eq. 2 of the
paper): ``v_m(x) = v_m + pi(x)``, so the prompt of class c for image x is
``t_c(x) = [SOS] v_1(x) ... v_M(x) [CLASS_c] . [EOT]`` and

    logits[b, c] = logit_scale * cos(f(x_b), g(t_c(x_b)))          # [B, n_cls]

The reference implementation loops over the images of a batch, one text pass (all classes) per
image. Here the B x n_cls prompts of a batch go through the text tower together, in chunks of at
most ``max_prompts_per_pass`` prompts (whole images per chunk), which is the same computation; each
image's SOS + context is encoded once and shared by its classes (exact shared-prefix encoding).
As in the reference, the Meta-Net reads the L2-normalised image feature.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.cocoop.config import CoCoOpConfig
from vlprompt.methods.coop.prompt import PromptLearner


class CoCoOp(PromptMethod):
    """Image-conditional prompts: learned context ``ctx [M, D]`` + Meta-Net ``E -> E/16 -> D``."""

    def __init__(self, backbone: Backbone, classnames: list[str], config: CoCoOpConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.prompt_learner = PromptLearner(backbone, self.classnames, n_ctx=config.n_ctx, ctx_init=config.ctx_init,
                                            csc=False, class_token_position="end", init_std=config.init_std)
        vis_dim, ctx_dim = backbone.embed_dim, backbone.text_width
        hidden = max(1, vis_dim // config.hidden_ratio)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, ctx_dim)),
        ])).to(backbone.device)

    @property
    def ctx(self) -> Tensor:
        """The shared context ``[n_ctx, D]`` (before the image-conditional shift)."""
        return self.prompt_learner.ctx

    def conditional_ctx(self, image_features: Tensor) -> Tensor:
        """``v_m + pi(x)``: ``[B, E] -> [B, M, D]`` (Meta-Net on normalised features)."""
        x = F.normalize(image_features.float(), dim=-1)
        bias = self.meta_net(x)  # [B, D]
        return self.prompt_learner.ctx.unsqueeze(0) + bias.unsqueeze(1)  # [B, M, D]

    def raw_text_features_for(self, image_features: Tensor) -> Tensor:
        """Text features of each image's prompts before L2 normalisation: ``[B, E] -> [B, n_cls, E]`` (chunked)."""
        ctx = self.conditional_ctx(image_features)
        n_cls = self.n_cls
        per_pass = max(1, self.config.max_prompts_per_pass // n_cls)
        out = []
        for start in range(0, ctx.shape[0], per_pass):
            part = ctx[start : start + per_pass]  # each image's context is shared by all its classes
            out.append(self.prompt_learner.encode_grouped(self.backbone, part))
        return torch.cat(out)

    def text_features_for(self, image_features: Tensor) -> Tensor:
        """Normalised text features of each image's prompts: ``[B, E] -> [B, n_cls, E]`` (chunked)."""
        return F.normalize(self.raw_text_features_for(image_features).float(), dim=-1)

    def forward_features(self, image_features: Tensor) -> Tensor:
        """``logits[b, c] = scale * <f_b, t_c(x_b)>``: ``[B, E] -> [B, n_cls]``."""
        img = F.normalize(image_features.float(), dim=-1)
        txt = self.text_features_for(image_features)  # [B, C, E]
        logits = self.backbone.logit_scale.to(img.device) * torch.einsum("be,bce->bc", img, txt)
        bias = self.backbone.logit_bias
        return logits if bias is None else logits + bias.to(img.device)

    def text_features(self) -> Tensor:
        raise TypeError("CoCoOp's text features depend on the image: use text_features_for(image_features)")
