"""Every open_clip architecture classified from its config: text-tower kind, image tower, methods.

``vlprompt models`` prints this table. The text-tower kind decides how prompts are encoded
(:data:`vlprompt.backbones.base.TOWER_KINDS`); the image tower decides whether local (patch)
features exist (LoCoOp, GL-MCM): open_clip's own ``VisionTransformer`` (class-token or average
pooling) and ``ModifiedResNet`` have them; timm towers (SigLIP, EVA, ConvNeXt, MobileCLIP's FastViT)
and attention-pooled ViTs (CoCa) do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelEntry:
    """One architecture: ``family``, ``text_kind`` (a TOWER_KINDS key), ``image_tower`` and notes."""

    name: str
    family: str
    text_kind: str
    image_tower: str
    local_features: bool
    needs: str = ""  # what loading needs beyond open_clip (transformers, a tokenizer download, ...)


def text_kind_of(cfg: dict[str, Any]) -> str:
    """The text-tower kind of an open_clip model config (``text_cfg`` + ``multimodal_cfg``)."""
    t = cfg.get("text_cfg", {})
    if t.get("hf_model_name"):
        return "hf-encoder"
    if t.get("embed_cls") or "multimodal_cfg" in cfg:
        return "appended-cls"
    pool = t.get("pool_type", "argmax")
    if t.get("no_causal_mask", False):
        return "bidir-eot" if pool in ("argmax", "eos") else f"bidir-{pool}"
    return "causal-eot" if pool in ("argmax", "eos") else f"causal-{pool}"


def image_tower_of(cfg: dict[str, Any]) -> tuple[str, bool]:
    """``(kind, has local features)`` of the image tower of an open_clip model config."""
    v = cfg.get("vision_cfg", {})
    if v.get("timm_model_name"):
        return f"timm:{v['timm_model_name']}", False
    if isinstance(v.get("layers"), (list, tuple)):
        return "modified-resnet", True
    if v.get("attentional_pool"):
        return "vit-attention-pool", False
    return "vit", True


def classify(name: str, cfg: dict[str, Any]) -> ModelEntry:
    kind = text_kind_of(cfg)
    image, local = image_tower_of(cfg)
    t = cfg.get("text_cfg", {})
    needs = []
    if kind == "hf-encoder":
        needs.append(f"transformers + the '{t['hf_model_name']}' config (HF cache)")
    elif t.get("hf_tokenizer_name"):
        needs.append(f"transformers + the '{t['hf_tokenizer_name']}' tokenizer (HF cache)")
    elif "siglip" in name.lower():
        needs.append("transformers + the SigLIP sentencepiece vocabulary")
    return ModelEntry(name, "open_clip", kind, image, local, "; ".join(needs))


def open_clip_catalog() -> list[ModelEntry]:
    """Every model name open_clip (plus vlprompt's own configs) knows, classified from its config."""
    import open_clip

    from vlprompt.backbones.configs import register_model_configs

    register_model_configs()
    return [classify(name, open_clip.get_model_config(name) or {}) for name in open_clip.list_models()]

