"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023).

Language prompts ``P_i [n, D]`` at blocks ``i = 0 .. J-1`` of the text tower; the vision prompts of the
same blocks are obtained from them by per-layer *coupling functions* ``F_i`` (linear maps ``D -> W``)::

    V_i = F_i(P_i)                                                    # [n, W]
    logits[b, c] = logit_scale * cos(f(x_b; V), g(t_c; P))            # [B, n_cls]

trained with cross-entropy. As in the reference (muzairkhattak/multimodal-prompt-learning,
trainers/maple.py ``MultiModalPromptLearner``): ``P_0`` (``text_prompt.ctx``) is initialised from the
words of ``ctx_init``, ``F_0`` is its own linear layer (``proj``), the deeper ``P_1 .. P_{J-1}``
(``compound_prompts_text``) are N(0, 0.02), and their couplings ``F_1 .. F_{J-1}``
(``compound_prompt_projections``) start as copies of one randomly initialised linear layer (``_get_clones``).
Prompts enter and are replaced as in clip/model.py ``ResidualAttentionBlock_MaPLe`` (lines 259-331) and
``VisionTransformer_MaPLe`` (lines 425-476); see :mod:`vlprompt.backbones.deep_prompts`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import (
    check_vision_deep,
    encode_image_deep,
    text_depth,
    vision_depth,
    vision_width,
)
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.ivlp.prompt import DeepTextPrompt
from vlprompt.methods.maple.config import MaPLeConfig


class MaPLe(PromptMethod):
    """Coupled deep prompts in both towers (needs a ViT image tower)."""

    def __init__(self, backbone: Backbone, classnames: list[str], config: MaPLeConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        check_vision_deep(backbone)
        d, w, dev = backbone.text_width, vision_width(backbone), backbone.device
        depth = min(config.prompt_depth, text_depth(backbone), vision_depth(backbone))
        self.text_prompt = DeepTextPrompt(backbone, self.classnames, n_ctx=config.n_ctx, ctx_init=config.ctx_init,
                                          init_std=config.init_std)
        self.proj = nn.Linear(d, w).to(dev)  # F_0
        deep = []
        for _ in range(depth - 1):
            p = torch.empty(config.n_ctx, d)
            nn.init.normal_(p, std=config.init_std)
            deep.append(nn.Parameter(p.to(dev)))
        self.compound_prompts_text = nn.ParameterList(deep)  # P_1 .. P_{J-1}
        single = nn.Linear(d, w).to(dev)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])

    def vision_prompts(self) -> tuple[Tensor, list[Tensor]]:
        """``V_0 = F_0(P_0)`` ``[n, W]`` and ``[V_1 .. V_{J-1}]`` (each ``[n, W]``)."""
        first = self.proj(self.text_prompt.ctx)
        deep = [f(p) for f, p in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return first, deep

    def raw_text_features(self) -> Tensor:
        """``[n_cls, E]`` text features of the deep language prompts before L2 normalisation."""
        return self.text_prompt.encode(self.backbone, list(self.compound_prompts_text))

    def text_features(self) -> Tensor:
        """``[n_cls, E]`` normalised text features of the deep language prompts."""
        return F.normalize(self.raw_text_features().float(), dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, E]`` image features through the ViT with the coupled vision prompts."""
        first, deep = self.vision_prompts()
        return encode_image_deep(self.backbone, images, first, deep)
