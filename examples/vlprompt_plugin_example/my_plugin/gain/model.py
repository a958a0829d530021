# my_plugin/gain/model.py
"""A learned gain on zero-shot CLIP's text features: t_c = normalise(g * w_c)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from my_plugin.gain.config import GainConfig
from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodContext, PromptMethod, template_text_features


class Gain(PromptMethod):
    """Zero-shot text features ``[n_cls, E]`` times a learned gain ``[E]`` (or ``[n_cls, E]``)."""

    def __init__(self, backbone: Backbone, classnames: list[str], config: GainConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        zeroshot = template_text_features(backbone, self.classnames, self.context.templates)
        self.register_buffer("zeroshot", zeroshot, persistent=False)  # frozen: not in prompt files
        shape = (self.n_cls, backbone.embed_dim) if config.class_gains else (backbone.embed_dim,)
        self.gain = nn.Parameter(torch.full(shape, config.init_gain, device=backbone.device))  # learned

    def text_features(self) -> Tensor:
        return F.normalize(self.zeroshot * self.gain, dim=-1)
