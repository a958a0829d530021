"""CLIP-Adapter (Gao, Geng, Zhang, Ma, Fang, Zhang, Li, Qiao; IJCV 2023).

A bottleneck MLP ``A(f) = ReLU(W_2 ReLU(W_1 f))`` (``W_1 [E/r, E]``, ``W_2 [E, E/r]``, no biases) blends
into the frozen image feature with the residual ratio ``alpha`` (Eq. 2-3 of the paper)::

    f' = alpha * A(f) + (1 - alpha) * f
    logits = logit_scale * cos(f', w_c)          w_c: frozen text feature of the hand-crafted prompt

as ``clip_adapter.py`` of gaopengcuhk/CLIP-Adapter computes it (Adapter l.55-67 with reduction 4 (l.97),
ratio 0.2 (l.104-105) on the unnormalised feature, classifier of the dataset template l.79-86,
logits l.109-113). The text classifier comes from the build context's templates (several are
ensembled like zero-shot CLIP) and is rebuilt for whatever class names the adapter is used with.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodContext, PromptMethod, template_text_features
from vlprompt.methods.clip_adapter.config import ClipAdapterConfig


class ClipAdapter(PromptMethod):
    """Learned visual adapter ``adapter`` on frozen image features; frozen hand-crafted text classifier."""

    classifier: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: ClipAdapterConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        dim = backbone.embed_dim
        hidden = max(1, dim // config.reduction)
        self.adapter = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(dim, hidden, bias=False)),
            ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(hidden, dim, bias=False)),
            ("relu2", nn.ReLU()),
        ])).to(backbone.device)
        clip = template_text_features(backbone, self.classnames, self.context.templates)
        self.register_buffer("classifier", clip, persistent=False)

    def adapt(self, image_features: Tensor) -> Tensor:
        """``alpha * A(f) + (1 - alpha) * f``: ``[B, E] -> [B, E]`` (unnormalised)."""
        f = image_features.float()
        return self.config.ratio * self.adapter(f) + (1 - self.config.ratio) * f

    def text_features(self) -> Tensor:
        return self.classifier

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        return super().logits(self.adapt(image_features), text_features)
