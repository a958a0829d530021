"""The backbone interface every method, the engine and the tasks depend on.

A backbone is a frozen vision-language model (an ``nn.Module`` kept in eval mode) seen through
:class:`Backbone`: tokenizer, token embeddings, the text tower run on prompt *embeddings*, the image
tower, the logit scale / bias and the facts about its text tower that a prompt method must not
guess (:class:`TextTowerFacts`). Concrete adapters live beside this module: ``openclip.py`` (every
open_clip architecture) and ``hf.py`` (Hugging Face ``transformers`` CLIP / SigLIP models). Each
declares its *family* in its own module (:func:`register_backbone_family`, with a tiny test model);
the family registry imports the modules listed in ``vlprompt.core.plugins.BUILTINS`` and the plugins
before a look-up and maps a model string (``<family>:<model>``, or a plain open_clip name) to its family.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from vlprompt.core.backbone_record import DEFAULT_FAMILY, FAMILY_NAME, BackboneRecord
from vlprompt.core.errors import ModelError
from vlprompt.core.plugins import load_extensions

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
    family: str = DEFAULT_FAMILY

    #: Keys compared when a prompt file is loaded onto a backbone.
    MATCH_KEYS = ("family", "model", "pretrained", "embed_dim", "text_width")

    @property
    def record(self) -> BackboneRecord:
        """The backbone's identity in result files (family, model, pretrained)."""
        return BackboneRecord(self.family, self.model, self.pretrained)

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
    preprocess_cfg: dict[str, Any]  # image preprocessing: size, mean, std, interpolation, resize mode

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
    def train_transform(self, scale: tuple[float, float] = (0.08, 1.0)) -> Any: ...

    # ------------------------------------------------------------------ structure (for methods that adapt it)
    def transformer_blocks(self, tower: str) -> list[nn.Module]: ...  # "text" / "image": residual blocks in
    # order, [] when the tower has none (ResNet, timm); a method changing them works on copy.deepcopy(backbone)


# ---------------------------------------------------------------------------------- families
#: A family's tiny test model: a ``backbone.model`` string that loads offline with ``pretrained: null``
#: (random init), or a function that writes such a model into the empty folder it is given and returns
#: the model string that loads it.
FamilyTestModel = str | Callable[[Path], str]


def _qualified(fn: Callable[..., Any] | str) -> str:
    """``module:function`` of a loader (equal across re-imports of its module)."""
    return fn if isinstance(fn, str) else f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"


@dataclass(frozen=True)
class BackboneFamily:
    """A way to load backbones, declared once by :func:`register_backbone_family` in its own module.

    Attributes:
        name: the family name; model strings ``<name>:<model>`` are routed to it (the default family,
            ``open_clip``, also takes every string without a family prefix).
        loader: ``loader(model, pretrained, device=, precision=, cache_dir=) -> Backbone``, or
            ``"module:function"`` (imported on first use).
        test_model: its tiny offline test model (:data:`FamilyTestModel`), loaded by the family contract test.
        description: one line for ``vlprompt models``.
        requires: optional packages (import names) the family needs beyond vlprompt's own dependencies.
    """

    name: str
    loader: Callable[..., Any] | str
    test_model: FamilyTestModel
    description: str = ""
    requires: tuple[str, ...] = ()

    @property
    def prefix(self) -> str | None:
        """What starts its model strings (``"hf:"``); None for the default family (plain names)."""
        return None if self.name == DEFAULT_FAMILY else f"{self.name}:"

    def load(self, model: str, pretrained: str | None, **kwargs: Any) -> Any:
        """The backbone ``model`` (without the family prefix) through the family's loader."""
        fn = self.loader
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(model, pretrained, **kwargs)

    def make_test_model(self, folder: Path) -> str:
        """The ``backbone.model`` string of the family's tiny test model, written into ``folder`` if the
        family builds it there (``folder`` is empty and kept while the model is used)."""
        return self.test_model if isinstance(self.test_model, str) else self.test_model(folder)


_FAMILIES: dict[str, BackboneFamily] = {}


def register_backbone_family(name: str, loader: Callable[..., Any] | str, *, test_model: FamilyTestModel,
                             description: str = "", requires: tuple[str, ...] = ()) -> BackboneFamily:
    """Declare a backbone family; ``--model <name>:<model>`` then loads through ``loader``.

    Called once, at import of the family's module (listed in ``vlprompt.core.plugins.BUILTINS`` or
    imported by a plugin's ``register()``). Registering the same name again with the same loader (a
    re-import) replaces the declaration; with another loader it is refused, as is a name that is not
    lowercase letters, digits and ``_`` (the prefix of its model strings is the name and ``:``, so two
    families' prefixes never overlap).

    Args:
        name: family name, e.g. ``"toy"`` for ``--model toy:...``.
        loader: ``loader(model, pretrained, *, device, precision, cache_dir) -> Backbone`` (``model``
            without the prefix), or ``"module:function"`` imported on first load.
        test_model: the tiny offline test model (:data:`FamilyTestModel`) every family must provide: the
            family contract test (``tests/test_backbone_contract.py``) loads it through
            :func:`~vlprompt.backbones.build.build_backbone` and checks the :class:`Backbone` protocol.
        description: one line for ``vlprompt models``.
        requires: optional packages (import names) the family needs (``("transformers",)`` for ``hf``).

    Raises:
        ModelError: malformed name, loader or test model, or the name taken by another loader.
    """
    if not isinstance(name, str) or not FAMILY_NAME.fullmatch(name):
        raise ModelError(f"backbone family name {name!r} must be lowercase letters, digits and '_', starting "
                         "with a letter (its model strings are written '<name>:<model>')")
    if not (callable(loader) or (isinstance(loader, str) and ":" in loader)):
        raise ModelError(f"backbone family '{name}': loader must be a function or 'module:function', got {loader!r}")
    if not (callable(test_model) or (isinstance(test_model, str) and test_model)):
        raise ModelError(f"backbone family '{name}': test_model must be a model string or a function of a folder "
                         f"returning one (a tiny offline model for the family contract test), got {test_model!r}")
    old = _FAMILIES.get(name)
    if old is not None and _qualified(old.loader) != _qualified(loader):
        raise ModelError(f"backbone family '{name}' is already registered with loader {_qualified(old.loader)}; "
                         f"a family with loader {_qualified(loader)} needs another name")
    family = BackboneFamily(name, loader, test_model, description, tuple(requires))
    _FAMILIES[name] = family
    return family


def backbone_families() -> dict[str, BackboneFamily]:
    """The registered families by name (built-ins and plugins)."""
    load_extensions("backbone_families")
    return dict(_FAMILIES)


def family_of(model: str) -> tuple[BackboneFamily, str]:
    """The family that loads ``model`` and the model string without its family prefix.

    ``"hf:/models/clip"`` -> (``hf``, ``"/models/clip"``); a string without a family prefix (open_clip
    names, open_clip's ``hf-hub:`` / ``local-dir:`` schemes) -> (``open_clip``, the string).
    """
    load_extensions("backbone_families")
    record = BackboneRecord.from_model_string(model)
    if record.family not in _FAMILIES:
        known = ", ".join(sorted(_FAMILIES)) or "none"
        raise ModelError(f"unknown backbone family '{record.family}' in model '{model}' (option backbone.model); "
                         f"registered families: {known} (docs/backbones.md, 'Adding a family')")
    return _FAMILIES[record.family], record.model


def load_any_backbone(model: str, pretrained: str | None = None, **kwargs: Any) -> Any:
    """Load ``model`` through the family its string names (``hf:...`` or an open_clip name), uncached
    (:func:`~vlprompt.backbones.build.build_backbone` shares one instance per spec)."""
    fam, name = family_of(model)
    return fam.load(name, pretrained, **kwargs)


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
