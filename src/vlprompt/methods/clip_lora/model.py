"""CLIP-LoRA: low-rank adaptation of both CLIP encoders for few-shot classification (Zanella, Ben Ayed; CVPRW 2024).

LoRA adapters (:mod:`vlprompt.methods.clip_lora.lora`) on the query, key and value projections of every
attention block of the text and the vision transformer; the classifier is the adapted text encoder's
feature of the dataset's first hand-crafted template, re-encoded at every step, and the loss
cross-entropy on ``logit_scale * cos`` (``lora.py`` l.94-113). Defaults (``run_utils.py`` l.28-37):
rank 2, alpha 1, dropout 0.25, q/k/v, both encoders, all blocks; AdamW lr 2e-4, weight decay 1e-2,
batch 32 (``lora.py`` l.75) go in the ``optim`` section. CLIP-LoRA's position presets 'all',
'half-up' and 'half-bottom' scale with each tower's depth as its tables do (``loralib/utils.py``
l.17-19 for 12 blocks, l.41-43 for ViT-L/14's 24-block image tower: the 12 upper blocks for 'half-up');
'top1', 'top2', 'top3', 'bottom', 'mid' and 'up' name blocks of 12-block towers (l.10-38) and are
refused on other depths; a list of block indices works for any depth. ResNet image towers have no attention blocks
CLIP-LoRA adapts (it supports ViTs only): with them only the text encoder is adapted.

The adapters change what the encoders compute, so the method owns a private copy of the backbone
(the shared one, its feature cache and other runs are untouched) and declares ``modifies_encoders``:
the engine then encodes images anew at every step and evaluation, without feature caches.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.clip_lora.config import ClipLoRAConfig
from vlprompt.methods.clip_lora.lora import (
    LoRAMultiheadAttention,
    attention_modules,
)

#: the towers ``encoder`` adapts (their names in :meth:`~vlprompt.backbones.base.Backbone.transformer_blocks`)
_TOWERS = {"text": ("text",), "vision": ("image",), "both": ("text", "image")}


class ClipLoRA(PromptMethod):
    """Both encoders with LoRA adapters; text classifier from the first template, re-encoded each step."""

    prompt_ids: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: ClipLoRAConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(copy.deepcopy(backbone), classnames, config, context)  # the adapters change the copy only
        own = self.backbone
        self.adapters: list[LoRAMultiheadAttention] = []
        for tower in _TOWERS[config.encoder]:
            blocks = own.transformer_blocks(tower)
            if not blocks:  # e.g. a ResNet image tower: nothing CLIP-LoRA adapts there
                continue
            found = attention_modules(blocks)
            keep = set(config.blocks(len(blocks), "vision" if tower == "image" else tower))
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
        return self.backbone.encode_image(images)
