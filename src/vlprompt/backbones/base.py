"""The backbone interface every method, the engine and the tasks depend on.

A backbone is a frozen vision-language model (an ``nn.Module`` kept in eval mode) seen through
:class:`Backbone`: tokenizer, token embeddings, the text tower run on prompt *embeddings*, the image
tower, the logit scale / bias and the facts about its text tower that a prompt method must not
guess (:class:`TextTowerFacts`). Concrete adapters live beside this module: ``openclip.py`` (every
open_clip architecture) and ``hf.py`` (Hugging Face ``transformers`` CLIP / SigLIP models); a
*family registry* maps a model string to the adapter that loads it (:func:`register_backbone_family`).

Prompt layout contract (what makes learned prompts exact on every tower):

* ``tokenize(texts)`` lays a written sentence out exactly as the model's own tokenizer does (same
  start / end / padding tokens, same length), never truncating silently;
* a prompt is that layout with the context slots ``[ctx_start, ctx_start + n_ctx)`` replaced by
  learned vectors, where ``ctx_start = text_facts.prefix_len`` (the tokens the tokenizer puts before the
  text: 1 for CLIP's SOT, 0 for T5-style SigLIP tokenizers);
* ``prompt_length(ids)`` says how many positions must be encoded: up to the pooled EOT token for
  causal towers pooling at EOT (exact: no earlier position sees later ones), the full padded
  sequence otherwise (bidirectional towers, ``last`` pooling, appended class tokens);
* ``encode_text_embeddings(embeds, pooled_index, ids=ids)`` runs the tower; ``ids`` carries the
  token ids of the layout (placeholders in the context slots) for towers whose attention masks or
  poolers read them (padding masks, CoCa, Hugging Face encoders).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from vlprompt.core.errors import ModelError

#: Text-tower kinds (``TextTowerFacts.kind``), as listed by ``vlprompt models``.
TOWER_KINDS: dict[str, str] = {
    "causal-eot": "causal transformer pooled at the EOT token (OpenAI CLIP, LAION, EVA, MobileCLIP-B, ...)",
    "bidir-last": "bidirectional transformer pooled at the last position (SigLIP, SigLIP 2, CLIPA)",
    "bidir-eot": "bidirectional transformer pooled at the EOT token (MobileCLIP-S, MobileCLIP2)",
    "appended-cls": "causal transformer with an appended class token and padding mask (CoCa)",
    "hf-encoder": "Hugging Face text encoder with its own pooler (mean / CLS; XLM-R, mT5, NLLB, RoBERTa)",
}


@dataclass(frozen=True)
class TextTowerFacts:
    """Facts about a text tower that prompt methods rely on (decided by the adapter, never guessed).

    Attributes:
        kind: one of :data:`TOWER_KINDS`.
        causal: each position attends only to earlier ones.
        pool: ``"eot"`` (feature at the end-of-text token), ``"last"`` (last position of the padded
            sequence), ``"first"``, ``"cls"`` (appended class token), ``"mean"`` (masked mean), ...
        context_length: L, the padded sequence length of the tokenizer.
        prefix_len: tokens the tokenizer puts before the text (SOT / BOS / CLS), where context starts.
        pad_id: padding token id; eot_id: end-of-text id (None when the tower does not use it);
        sot_id: start token id or None.
        needs_ids: the tower reads token ids besides embeddings (padding masks, HF attention masks).
    """

    kind: str
    causal: bool
    pool: str
    context_length: int
    prefix_len: int
    pad_id: int | None
    eot_id: int | None
    sot_id: int | None = None
    needs_ids: bool = False

    @property
    def truncate_exact(self) -> bool:
        """Cutting the sequence after the pooled EOT token is exact (causal tower pooled at EOT)."""
        return self.causal and self.pool == "eot"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "causal": self.causal, "pool": self.pool,
                "context_length": self.context_length, "prefix_len": self.prefix_len,
                "pad_id": self.pad_id, "eot_id": self.eot_id, "sot_id": self.sot_id}


@dataclass(frozen=True)
class BackboneInfo:
    """What identifies a backbone in prompt files and checkpoints: a prompt only fits its backbone."""

    model: str
    pretrained: str | None
    embed_dim: int
    text_width: int
    family: str = "open_clip"

    #: Keys compared when a prompt file is loaded onto a backbone.
    MATCH_KEYS = ("family", "model", "pretrained", "embed_dim", "text_width")

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model": self.model,
            "pretrained": self.pretrained,
            "embed_dim": self.embed_dim,
            "text_width": self.text_width,
        }


@runtime_checkable
class Backbone(Protocol):
    """What methods, engine and tasks may use of a frozen backbone (an ``nn.Module`` in eval mode).

    Shapes: B images, P prompts, L sequence length, D token width (``text_width``), E joint
    embedding dimension (``embed_dim``).
    """

    name: str
    pretrained: str | None

    # ------------------------------------------------------------------ identity and facts
    @property
    def family(self) -> str: ...  # "open_clip", "hf", ...
    @property
    def info(self) -> BackboneInfo: ...
    @property
    def text_facts(self) -> TextTowerFacts: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def context_length(self) -> int: ...
    @property
    def text_width(self) -> int: ...
    @property
    def embed_dim(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def logit_scale(self) -> Tensor: ...  # exp(temperature), 0-dim fp32
    @property
    def logit_bias(self) -> Tensor | None: ...  # SigLIP's bias, None for CLIP

    # ------------------------------------------------------------------ text side
    def tokenize(self, texts: list[str] | str, *, what: str = "text") -> Tensor: ...  # [B, L]
    def encode_tokens(self, text: str) -> list[int]: ...  # ids of text, no special tokens
    def decode(self, ids: list[int]) -> str: ...
    def pooled_index(self, ids: Tensor) -> Tensor: ...  # [B] position whose feature is pooled
    def eot_index(self, ids: Tensor) -> Tensor: ...  # alias of pooled_index
    def prompt_length(self, ids: Tensor) -> int: ...  # positions that must be encoded
    def token_embedding(self, ids: Tensor) -> Tensor: ...  # [B, L] -> [B, L, D]
    def token_embedding_table(self) -> Tensor: ...  # [vocab, D]
    def encode_text_embeddings(self, embeds: Tensor, eot_index: Tensor, *, ids: Tensor | None = None,
                               truncate: bool = True) -> Tensor: ...  # [P, L, D] -> [P, E]
    def encode_text_shared_prefix(self, prefix: Tensor, suffix: Tensor, eot_in_suffix: Tensor, *,
                                  ids: Tensor | None = None) -> Tensor: ...  # -> [G, n, E]
    def encode_text(self, ids: Tensor) -> Tensor: ...  # [P, L] -> [P, E]

    # ------------------------------------------------------------------ image side
    def encode_image(self, images: Tensor) -> Tensor: ...  # [B, 3, H, W] -> [B, E]; differentiable w.r.t.
    # image-tower parameters that require gradients (none in a frozen backbone, so no graph is built; a
    # method's private copy with adapters, CLIP-LoRA)
    def local_features(self, images: Tensor) -> tuple[Tensor, Tensor]: ...  # [B, E], [B, N, E]
    def local_features_unsupported(self) -> str | None: ...  # why not, or None when available
    def eval_transform(self) -> Any: ...
    def train_transform(self) -> Any: ...

    # ------------------------------------------------------------------ structure (for methods that adapt it)
    def transformer_blocks(self, tower: str) -> list[nn.Module]: ...  # "text" / "image": residual blocks in
    # order, [] when the tower has none (ResNet, timm); a method changing them works on copy.deepcopy(backbone)


# ---------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class BackboneFamily:
    """A way to load backbones: ``loader(model, pretrained, device=, precision=, cache_dir=)``.

    ``prefix`` selects the family from the model string (``hf:`` for Hugging Face); the family
    without prefix (open_clip) takes every other name. ``loader`` may be ``"module:function"``
    (imported on first use, so optional dependencies are imported only when that family is used).
    """

    name: str
    loader: Callable[..., Any] | str
    prefix: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def load(self, model: str, pretrained: str | None, **kwargs: Any) -> Any:
        fn = self.loader
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(model, pretrained, **kwargs)


_FAMILIES: dict[str, BackboneFamily] = {}
_DEFAULT_FAMILY = "open_clip"


def register_backbone_family(name: str, loader: Callable[..., Any] | str, *, prefix: str | None = None,
                             description: str = "") -> None:
    """Register a backbone family; ``prefix`` (e.g. ``"hf:"``) routes model strings to it."""
    _FAMILIES[name] = BackboneFamily(name, loader, prefix, description)


def backbone_families() -> dict[str, BackboneFamily]:
    """The registered families by name."""
    return dict(_FAMILIES)


def family_of(model: str) -> tuple[BackboneFamily, str]:
    """The family that loads ``model`` and the model string without its family prefix."""
    for fam in _FAMILIES.values():
        if fam.prefix and model.startswith(fam.prefix):
            return fam, model[len(fam.prefix):]
    if _DEFAULT_FAMILY not in _FAMILIES:
        raise ModelError(f"no backbone family can load '{model}'")
    return _FAMILIES[_DEFAULT_FAMILY], model


def load_any_backbone(model: str, pretrained: str | None = None, **kwargs: Any) -> Any:
    """Load ``model`` through the family its string names (``hf:...`` or an open_clip name)."""
    fam, name = family_of(model)
    return fam.load(name, pretrained, **kwargs)


register_backbone_family("open_clip", "vlprompt.backbones.openclip:load_backbone",
                         description="open_clip model names (+ pretrained tag or local weights file)")
register_backbone_family("hf", "vlprompt.backbones.hf:load_hf_backbone", prefix="hf:",
                         description="Hugging Face transformers CLIPModel / SiglipModel (local directory or "
                                     "cached hub id; needs `pip install vlprompt[hf]`)")


def encode_prefix_suffix_in_full(backbone: Any, prefix: Tensor, suffix: Tensor, eot_in_suffix: Tensor, *,
                                 ids: Tensor | None = None) -> Tensor:
    """The plain path of ``encode_text_shared_prefix``: every prompt ``cat(prefix[g], suffix[c])`` encoded in
    full (towers where the shared-prefix pass is not exact). ``prefix [G, P, D]``, ``suffix [n, S, D]``,
    ``eot_in_suffix [n]``, ``ids [n, L]`` (towers that read token ids) -> ``[G, n, E]``."""
    g, n = prefix.shape[0], suffix.shape[0]
    full = torch.cat([prefix.unsqueeze(1).expand(-1, n, -1, -1), suffix.unsqueeze(0).expand(g, -1, -1, -1)], 2)
    eot = (eot_in_suffix + prefix.shape[1]).repeat(g)
    rep = None if ids is None else ids.repeat(g, 1)
    return backbone.encode_text_embeddings(full.flatten(0, 1), eot, ids=rep).view(g, n, -1)


def coop_train_transform(image_size: int, preprocess_cfg: dict[str, Any],
                         scale: tuple[float, float] = (0.08, 1.0)) -> Any:
    """CoOp's training transform: random resized crop (``scale`` 0.08-1, bicubic), flip, normalise.

    This is Dassl's ``random_resized_crop, random_flip, normalize`` recipe used by every CoOp
    config, not the backbone's pretraining augmentation; mean / std are the backbone's.
    """
    from torchvision import transforms as T

    mean = preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
