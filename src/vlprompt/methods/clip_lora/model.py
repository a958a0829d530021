"""CLIP-LoRA: low-rank adaptation of both CLIP encoders for few-shot classification (Zanella, Ben Ayed; CVPRW 2024).

LoRA adapters (:mod:`vlprompt.methods.clip_lora.lora`) on the query, key and value projections of every
attention block of the text and the vision transformer; the classifier is the adapted text encoder's
feature of the dataset's first hand-crafted template, re-encoded at every step, and the loss
cross-entropy on ``logit_scale * cos`` (``lora.py`` l.94-113). Defaults (``run_utils.py`` l.28-37):
rank 2, alpha 1, dropout 0.25, q/k/v, both encoders, all blocks; AdamW lr 2e-4, weight decay 1e-2,
batch 32 (``lora.py`` l.75) go in the ``optim`` section. CLIP-LoRA's position presets ('bottom',
'mid', 'up', 'half-up', 'half-bottom', 'top3') name blocks of 12-block towers (``loralib/utils.py``
l.10-44); a list of block indices works for any depth. ResNet image towers have no attention blocks
CLIP-LoRA adapts (it supports ViTs only): with them only the text encoder is adapted.

The adapters change what the encoders compute, so the method owns a private copy of the backbone
(the shared one, its feature cache and other runs are untouched) and declares ``modifies_encoders``:
the engine then encodes images anew at every step and evaluation, without feature caches.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.openclip import OpenClipBackbone
from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_choice, check_float, check_int
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.clip_lora.lora import (
    PROJECTIONS,
    LoRAMultiheadAttention,
    attention_modules,
)

#: CLIP-LoRA's named positions (``loralib/utils.py`` INDEX_POSITIONS_TEXT, l.10-19), for 12-block towers
POSITIONS = {
    "top1": [11], "top2": [10, 11], "top3": [9, 10, 11], "bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7],
    "up": [8, 9, 10, 11], "half-up": [6, 7, 8, 9, 10, 11], "half-bottom": [0, 1, 2, 3, 4, 5],
}


@dataclass
class ClipLoRAConfig:
    """CLIP-LoRA's options (``run_utils.py``: --r, --alpha, --dropout_rate, --params, --encoder, --position)."""

    r: int = field(default=2, metadata={"help": "rank of the low-rank matrices"})
    alpha: float = field(default=1.0, metadata={"help": "scaling numerator: the update is alpha / sqrt(r) * B A"})
    dropout_rate: float = field(default=0.25, metadata={"help": "dropout on the LoRA branch's input"})
    params: list[str] = field(default_factory=lambda: ["q", "k", "v"],
                              metadata={"help": "attention projections adapted: q, k, v, o"})
    encoder: str = field(default="both", metadata={"help": "text, vision or both"})
    position: str | list[int] = field(
        default="all", metadata={"help": "all, a CLIP-LoRA preset (bottom, mid, up, half-up, half-bottom, top3; "
                                 "12-block towers) or a list of block indices"})

    def __post_init__(self) -> None:
        check_int(self.r, "method.r", minimum=1)
        check_float(self.alpha, "method.alpha", minimum=0.0, strict=True)
        check_float(self.dropout_rate, "method.dropout_rate", minimum=0.0)
        if self.dropout_rate >= 1:
            raise ConfigError(f"option method.dropout_rate must be below 1, got {self.dropout_rate}")
        if isinstance(self.params, str):
            self.params = [self.params]
        if not self.params or any(p not in PROJECTIONS for p in self.params):
            raise ConfigError(f"option method.params must list some of {', '.join(PROJECTIONS)}, got {self.params!r}")
        self.params = list(dict.fromkeys(self.params))
        check_choice(self.encoder, "method.encoder", ("text", "vision", "both"))
        if isinstance(self.position, str):
            check_choice(self.position, "method.position", ("all", *POSITIONS))
        elif not (isinstance(self.position, list) and self.position
                  and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.position)):
            raise ConfigError(f"option method.position must be a preset name or a list of block indices, "
                              f"got {self.position!r}")

    def blocks(self, depth: int, tower: str) -> list[int]:
        """The adapted block indices of a ``depth``-block tower."""
        if self.position == "all":
            return list(range(depth))
        wanted = POSITIONS[self.position] if isinstance(self.position, str) else list(self.position)
        if max(wanted) >= depth:
            raise ConfigError(f"option method.position {self.position!r} names block {max(wanted)} but the {tower} "
                              f"tower has {depth} blocks; use 'all' or a list of indices below {depth}")
        return wanted


def _towers(model: nn.Module, encoder: str) -> list[tuple[str, nn.Module]]:
    """The transformer stacks to adapt: ``("text", ...)`` and/or ``("vision", ...)`` (ViT only)."""
    out = []
    if encoder in ("text", "both"):
        text = model.text if hasattr(model, "text") else model
        out.append(("text", text.transformer))
    if encoder in ("vision", "both"):
        tower = getattr(model.visual, "transformer", None)
        if tower is not None:
            out.append(("vision", tower))
    return out


def _private_copy(backbone: OpenClipBackbone) -> OpenClipBackbone:
    """A deep copy of ``backbone`` for the adapters to change (whatever the engine keeps on the shared
    backbone, such as its feature cache, is not copied)."""
    memo = {id(v): None for k, v in vars(backbone).items() if k.startswith("_vlprompt_")}
    own = copy.deepcopy(backbone, memo)
    for key in [k for k in vars(own) if k.startswith("_vlprompt_")]:
        delattr(own, key)
    return own


class ClipLoRA(PromptMethod):
    """Both encoders with LoRA adapters; text classifier from the first template, re-encoded each step."""

    method_name = "clip_lora"
    modifies_encoders = True  # LoRA on both encoders: no cached features anywhere

    def __init__(self, backbone: OpenClipBackbone, classnames: list[str], config: ClipLoRAConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(_private_copy(backbone), classnames, config, context)
        own = self.backbone
        self.adapters: list[LoRAMultiheadAttention] = []
        for tower_name, tower in _towers(own.model, config.encoder):
            found = attention_modules(tower)
            depth = len(getattr(tower, "resblocks", []))
            keep = set(config.blocks(depth, tower_name))
            for index, block, attr in found:
                if index in keep:
                    wrapped = LoRAMultiheadAttention(getattr(block, attr), config.params, config.r, config.alpha,
                                                     config.dropout_rate)
                    setattr(block, attr, wrapped)
                    self.adapters.append(wrapped)
        if not self.adapters:
            raise ConfigError("clip_lora found no attention block to adapt in this backbone "
                              f"(encoder {config.encoder!r}); use encoder: text or both")
        template = self.context.templates[0]
        ids = own.tokenize([template.format(c.replace("_", " ")) for c in self.classnames], what="the prompt")
        self.register_buffer("prompt_ids", ids, persistent=False)

    # ------------------------------------------------------------------ learned state
    def learned_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The adapters' ``lora_A`` / ``lora_B`` (named by their place in the backbone)."""
        for name, p in self.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                yield name, p

    def train(self, mode: bool = True) -> ClipLoRA:
        super().train(mode)  # the backbone stays in eval mode ...
        for adapter in self.adapters:  # ... except the adapters' dropout
            adapter.train(mode)
        return self

    # ------------------------------------------------------------------ forward
    def text_features(self) -> Tensor:
        """``[n_cls, E]`` normalised features of the template prompts through the adapted text encoder."""
        return F.normalize(self.backbone.encode_text(self.prompt_ids).float(), dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """Image features ``[B, E]`` through the adapted image encoder (differentiable)."""
        model = self.backbone.model
        dtype = next(model.visual.parameters()).dtype
        return model.encode_image(images.to(self.backbone.device, dtype))

    def extra_state_info(self) -> dict[str, Any]:
        return {"adapters": len(self.adapters)}
