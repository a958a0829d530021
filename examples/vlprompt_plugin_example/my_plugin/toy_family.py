# my_plugin/toy_family.py
"""The backbone family ``toy``: open_clip models loaded as ``--model toy:<name>``."""

from __future__ import annotations

from typing import Any

from vlprompt.backbones.base import register_backbone_family
from vlprompt.backbones.openclip import OpenClipBackbone, load_backbone


class ToyBackbone(OpenClipBackbone):
    """An open_clip backbone recorded as family ``toy`` in prompt files and results."""

    family = "toy"


def load_toy(model: str, pretrained: str | None = None, **options: Any) -> ToyBackbone:
    """``model`` is what follows ``toy:``; ``options`` are ``device``, ``precision`` and ``cache_dir``."""
    inner = load_backbone(model, pretrained, **options)
    return ToyBackbone(inner.model, inner.tokenizer, inner.name, inner.pretrained, inner.preprocess_cfg)


register_backbone_family(
    "toy", load_toy, test_model="toy:vlprompt-test-vit",
    description="open_clip models under the prefix toy: (the docs example)",
)
