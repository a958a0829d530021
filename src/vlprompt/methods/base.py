"""Base class of every prompt method: CLIP's cosine-similarity classifier over class prompts.

A method owns a frozen backbone (see :mod:`vlprompt.backbones.openclip`), a list of class names
and a small set of learned tensors. Logits follow CLIP (Radford et al., 2021, Eq. in Fig. 3):

    logits[b, c] = logit_scale * cos(f_b, t_c)        # [B, n_cls]

where f_b is the image feature and t_c the text feature of class c's prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone


class PromptMethod(nn.Module):
    """A classifier ``images -> logits [B, n_cls]`` built on a frozen CLIP backbone.

    Subclasses implement :meth:`text_features` (and, for image-conditional prompts such as
    CoCoOp, set ``image_conditional = True`` and override :meth:`forward_features`).
    """

    method_name: ClassVar[str] = "base"
    #: True when text features depend on the image (CoCoOp); evaluation then cannot cache them.
    image_conditional: ClassVar[bool] = False
    #: What :meth:`encode_images` returns (a key of the per-backbone feature cache).
    feature_kind: ClassVar[str] = "global"

    def __init__(self, backbone: Backbone, classnames: list[str], config: Any) -> None:
        super().__init__()
        if not classnames:
            raise ValueError("a method needs at least one class name")
        self.backbone = backbone
        self.classnames = list(classnames)
        self.config = config

    @property
    def n_cls(self) -> int:
        return len(self.classnames)

    # -------------------------------------------------------------- learned state
    def learned_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything the method learns; never the backbone's."""
        for name, p in self.named_parameters():
            if p.requires_grad and not name.startswith("backbone."):
                yield name, p

    def learned_state(self) -> dict[str, Tensor]:
        """The tensors a prompt checkpoint stores (detached CPU copies)."""
        return {name: p.detach().cpu().contiguous() for name, p in self.learned_parameters()}

    def load_learned_state(self, state: dict[str, Tensor]) -> None:
        """Load tensors saved by :meth:`learned_state`; names and shapes must match exactly."""
        own = dict(self.learned_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"learned state mismatch: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            if tuple(state[name].shape) != tuple(p.shape):
                raise ValueError(
                    f"learned tensor '{name}' has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}"
                )
            with torch.no_grad():
                p.copy_(state[name].to(p.device, p.dtype))

    # -------------------------------------------------------------- forward
    def train(self, mode: bool = True) -> PromptMethod:
        super().train(mode)
        self.backbone.train(False)  # frozen encoders stay in eval mode
        return self

    def text_features(self) -> Tensor:
        """L2-normalised text features of every class prompt: ``[n_cls, E]``."""
        raise NotImplementedError

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``logit_scale * cos``: image features ``[B, E]`` x text features ``[n_cls, E]`` -> ``[B, n_cls]``."""
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        out = self.backbone.logit_scale.to(img.device) * img @ txt.t()
        bias = self.backbone.logit_bias
        return out if bias is None else out + bias.to(img.device)

    def forward_features(self, image_features: Tensor) -> Tensor:
        """Logits ``[B, n_cls]`` from image features ``[B, E]`` (training path: text re-encoded)."""
        return self.logits(image_features, self.text_features())

    def encode_images(self, images: Tensor) -> Tensor:
        """Frozen image features ``[B, E]``."""
        return self.backbone.encode_image(images)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, n_cls]`` for a batch of preprocessed images ``[B, 3, H, W]``."""
        return self.forward_features(self.encode_images(images))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy (CoOp, Eq. 3 of Zhou et al., IJCV 2022)."""
        return F.cross_entropy(logits, labels)

    def training_loss(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, logits [B, n_cls])`` of one training step on (possibly cached) image features."""
        logits = self.forward_features(features)
        return self.loss(logits.float(), labels), logits
