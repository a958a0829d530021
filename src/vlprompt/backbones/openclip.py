"""Adapter over open_clip models: the only module (with ``openclip_towers.py``) that knows open_clip's internals.

Methods never touch open_clip directly: :class:`OpenClipBackbone` implements the
:class:`~vlprompt.backbones.base.Backbone` protocol for every open_clip architecture:

* ``tokenize(texts) -> LongTensor [B, L]``: exactly the model tokenizer's layout (no silent
  truncation); ``pooled_index(ids) -> [B]`` where the tower pools;
* ``token_embedding(ids) -> [B, L, D]``;
* ``encode_text_embeddings(embeds [P, L, D], pooled_index [P], ids=) -> [P, E]``: the text tower run
  on prompt *embeddings*. For causal towers pooled at EOT the sequence is cut right after the
  longest EOT, which is exact (no earlier position sees later ones); bidirectional towers (SigLIP,
  CLIPA, MobileCLIP-S), CoCa's appended class token and Hugging Face text towers run the full
  padded sequence, so prompt features equal ``model.encode_text`` of the written sentence;
* ``encode_image(images [B, 3, H, W]) -> [B, E]``, ``local_features``;
* ``logit_scale`` (already exponentiated), ``logit_bias`` (SigLIP), ``embed_dim`` (E), ``text_width``
  (D), train / eval transforms, ``text_facts`` (:class:`~vlprompt.backbones.base.TextTowerFacts`).

The wrapped model is frozen: no parameter requires grad and it always stays in eval mode.

Importing this module declares the ``open_clip`` family (the default: every model string without a
family prefix); its test model is the tiny random-init ``vlprompt-test-vit``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlprompt.backbones.base import (
    BackboneInfo,
    TextTowerFacts,
    coop_train_transform,
    encode_prefix_suffix_in_full,
    register_backbone_family,
)
from vlprompt.backbones.configs import load_parts, pretrained_weights, register_model_configs, weights_files
from vlprompt.backbones.openclip_towers import TokenizerView, TransformerTextView, text_view
from vlprompt.core.errors import ModelError, VlpromptError

__all__ = ["BackboneInfo", "OpenClipBackbone", "load_backbone", "list_pretrained_tags"]


class OpenClipBackbone(nn.Module):
    """A frozen open_clip model with the prompt-learning interface described in the module doc.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` instance.
        tokenizer: the open_clip tokenizer of that model.
        name: open_clip model name (e.g. ``"ViT-B-16-quickgelu"``).
        pretrained: tag or weights path it was loaded with (None = random init).
        preprocess_cfg: open_clip's preprocess config (size, mean, std, interpolation, ...).
    """

    family = "open_clip"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        pretrained: str | None,
        preprocess_cfg: dict[str, Any],
    ) -> None:
        super().__init__()
        self.model: Any = model  # open_clip's model, read by attribute (torch types those Tensor | Module)
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.preprocess_cfg = dict(preprocess_cfg)
        src = model.text if hasattr(model, "text") else model
        length = getattr(tokenizer, "context_length", None) or int(getattr(src, "context_length", 77))
        self._tok = TokenizerView(tokenizer, int(length), name)
        self._tower = text_view(model, self._tok, name)
        self.model.requires_grad_(False)
        self.model.eval()

    # ------------------------------------------------------------------ properties
    @property
    def info(self) -> BackboneInfo:
        return BackboneInfo(self.name, self.pretrained, self.embed_dim, self.text_width, family=self.family)

    @property
    def text_facts(self) -> TextTowerFacts:
        """How the text tower attends and pools, its special token ids and where context starts."""
        return self._tower.facts

    @property
    def device(self) -> torch.device:
        return self._tower.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the text transformer (fp32 unless the model was cast)."""
        return self._tower.cast_dtype()

    @property
    def context_length(self) -> int:
        return self._tok.context_length

    @property
    def text_width(self) -> int:
        """D: width of token embeddings (= width of learned context vectors)."""
        return self._tower.width

    @property
    def embed_dim(self) -> int:
        """E: dimension of the joint image-text embedding space."""
        return self._tower.output_dim

    @property
    def logit_scale(self) -> Tensor:
        """exp(learned temperature) of the CLIP model, a 0-dim fp32 tensor (100 for OpenAI CLIP)."""
        return self.model.logit_scale.detach().float().exp()

    @property
    def logit_bias(self) -> Tensor | None:
        """SigLIP's learned logit bias (added to every scaled logit), None for CLIP."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.detach().float()

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg.get("size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def train(self, mode: bool = True) -> OpenClipBackbone:
        """The backbone is frozen: its modules stay in eval mode (BatchNorm, dropout) whatever ``mode``."""
        super().train(False)
        return self

    # ------------------------------------------------------------------ text side
    @property
    def sot_token_id(self) -> int | None:
        return self._tok.sot_id

    @property
    def eot_token_id(self) -> int | None:
        return self._tok.eot_id

    def encode_tokens(self, text: str) -> list[int]:
        """Token ids of ``text`` without start / end tokens (CoOp's ``_tokenizer.encode``)."""
        return self._tok.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def tokenize(self, texts: list[str] | str, *, what: str = "text") -> Tensor:
        """Tokenize as the model's tokenizer does, padded to the context length: ``[B, context_length]``.

        Unlike ``open_clip.tokenize`` this never truncates silently: a text longer than the text
        tower's context raises :class:`VlpromptError` naming the text and the excess.
        """
        if isinstance(texts, str):
            texts = [texts]
        return self._tok.tokenize(list(texts), what=what)

    def pooled_index(self, ids: Tensor) -> Tensor:
        """Position whose feature the tower pools, per row of ``ids [B, L]`` -> ``[B]`` (EOT for CLIP)."""
        return self._tower.pooled_index(ids)

    def eot_index(self, ids: Tensor) -> Tensor:
        """Alias of :meth:`pooled_index` (the EOT position for CLIP-style towers)."""
        return self._tower.pooled_index(ids)

    def prompt_length(self, ids: Tensor) -> int:
        """Positions of ``ids [B, L]`` that must be encoded: up to the last EOT where that is exact, else L."""
        if self.text_facts.truncate_exact:
            return int(self.pooled_index(ids).max()) + 1
        return int(ids.shape[1])

    def token_embedding(self, ids: Tensor) -> Tensor:
        """Frozen token embeddings: ``[B, L] -> [B, L, D]``."""
        return self._tower.token_embedding(ids.to(self.device))

    def token_embedding_table(self) -> Tensor:
        """The frozen token-embedding matrix ``[vocab, D]``."""
        return self._tower.token_embedding.weight

    def encode_text_embeddings(self, embeds: Tensor, eot_index: Tensor, *, ids: Tensor | None = None,
                               truncate: bool = True) -> Tensor:
        """Run the text tower on prompt embeddings (CoOp's ``TextEncoder``).

        Args:
            embeds: ``[P, L, D]`` token embeddings laid out as the tokenizer lays out a sentence.
            eot_index: ``[P]`` pooled position of each prompt (:meth:`pooled_index`).
            ids: ``[P, L]`` token ids of that layout; needed by towers that mask padding (CoCa,
                Hugging Face text towers).

        Returns:
            ``[P, E]`` unnormalised text features. For causal towers pooled at EOT the sequences are
            cut after ``max(eot_index)`` (exact; ``truncate=False`` runs every given position).
        """
        if truncate and self.text_facts.truncate_exact:
            length = int(eot_index.max().item()) + 1
            embeds = embeds[:, :length]
            ids = None if ids is None else ids[:, :length]
        if ids is not None:
            ids = ids.to(embeds.device)
        return self._tower.encode(embeds, eot_index.to(embeds.device), ids)

    def encode_text_shared_prefix(self, prefix: Tensor, suffix: Tensor, eot_in_suffix: Tensor, *,
                                  ids: Tensor | None = None) -> Tensor:
        """Prompts ``cat(prefix[g], suffix[c])`` for every group g and class c: ``[G, n, E]``.

        Exact shared-prefix encoding (:mod:`vlprompt.backbones.shared_prefix`) when the tower allows
        it (causal, pooled at EOT, standard blocks), else the plain path on the concatenated
        sequences (``ids [n, P + S]`` the token ids of the n prompts, for towers that read them).
        """
        from vlprompt.backbones.shared_prefix import encode_shared_prefix, supports_shared_prefix

        facts = self.text_facts
        if (facts.truncate_exact and not facts.needs_ids and isinstance(self._tower, TransformerTextView)
                and supports_shared_prefix(self._tower.transformer)):
            return encode_shared_prefix(self._tower, prefix, suffix, eot_in_suffix)
        return encode_prefix_suffix_in_full(self, prefix, suffix, eot_in_suffix, ids=ids)

    def encode_text(self, ids: Tensor) -> Tensor:
        """Text features of token ids ``[P, L] -> [P, E]`` through :meth:`encode_text_embeddings`."""
        ids = ids.to(self.device)
        return self.encode_text_embeddings(self.token_embedding(ids), self.pooled_index(ids), ids=ids)

    # ------------------------------------------------------------------ image side
    def encode_image(self, images: Tensor) -> Tensor:
        """Image features ``[B, 3, H, W] -> [B, E]`` (unnormalised). Differentiable with respect to image-tower
        parameters that require gradients (adapters of a method's private copy); frozen, no graph is built."""
        visual_dtype = next(self.model.visual.parameters()).dtype
        return self.model.encode_image(images.to(self.device, visual_dtype), normalize=False)

    def local_features_unsupported(self) -> str | None:
        """Why this image tower has no local features (LoCoOp, GL-MCM), or None when it has them."""
        from vlprompt.backbones.local import local_features_unsupported

        return local_features_unsupported(self.model)

    @torch.no_grad()
    def local_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Global and local (per patch / position) image features, comparable with text features.

        ViT (MaskCLIP / GL-MCM / LoCoOp): the tokens entering the last transformer block are captured
        during the ordinary forward (which gives the global feature); each patch token then goes
        through that block's *value path* (ln_1, value projection, output projection, the block's
        residual and MLP; i.e. attention restricted to itself), ``ln_post`` and the projection.
        ModifiedResNet: the attention pool's value and output projections applied to every position
        of the final feature map. Other image towers (timm, attention-pooled CoCa) raise ModelError.

        Returns:
            ``global [B, E]`` (equal to :meth:`encode_image`) and ``local [B, N, E]`` (N patches or
            H*W positions), both unnormalised.
        """
        from vlprompt.backbones.local import capture_and_encode

        visual_dtype = next(self.model.visual.parameters()).dtype
        return capture_and_encode(self.model, images.to(self.device, visual_dtype))

    def transformer_blocks(self, tower: str) -> list[nn.Module]:
        """The residual attention blocks of the ``"text"`` or ``"image"`` tower, input to output (open_clip
        ``Transformer.resblocks``); empty when the tower has none (ModifiedResNet, timm, Hugging Face text
        towers). A method that changes them (CLIP-LoRA) works on its own ``copy.deepcopy`` of the backbone."""
        if tower not in ("text", "image"):
            raise ValueError(f"tower must be 'text' or 'image', got {tower!r}")
        text = self.model.text if hasattr(self.model, "text") else self.model
        owner = text if tower == "text" else self.model.visual
        return list(getattr(getattr(owner, "transformer", None), "resblocks", []))

    # ------------------------------------------------------------------ transforms
    def eval_transform(self) -> Any:
        """CLIP's test transform: resize (bicubic) the short side, centre crop, normalise."""
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)

    def train_transform(self, scale: tuple[float, float] = (0.08, 1.0)) -> Any:
        """CoOp's training transform (:func:`~vlprompt.backbones.base.coop_train_transform`); ``scale`` of the
        random resized crop (Tip-Adapter uses 0.5-1)."""
        return coop_train_transform(self.image_size, self.preprocess_cfg, scale=scale)


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def list_pretrained_tags(model: str) -> list[str]:
    """open_clip's pretrained tags for ``model`` plus the ones vlprompt ships."""
    import open_clip

    tags = list(open_clip.list_pretrained_tags_by_model(model))
    tags += [tag for (name, tag) in pretrained_weights() if name == model]
    return tags


def _resolve_pretrained(model: str, pretrained: str | None) -> str | dict[str, Path] | None:
    """Return what to load: an open_clip tag or file path, registered parts (prefix -> file), or None."""
    if pretrained in (None, "", "none", "random"):
        return None
    assert pretrained is not None
    shipped = pretrained_weights()
    if (model, pretrained) in shipped:
        spec = shipped[(model, pretrained)]
        for path in weights_files(spec):
            if not path.is_file():
                raise ModelError(
                    f"the shipped weights for '{model}' (pretrained '{pretrained}') are missing at {path}; "
                    "reinstall the package that provides them."
                )
        return dict(spec) if isinstance(spec, dict) else str(spec)
    if os.path.exists(pretrained):
        if not os.path.isfile(pretrained):
            raise ModelError(f"pretrained weights path '{pretrained}' is a folder, not a file.")
        return pretrained
    if _looks_like_path(pretrained):
        raise ModelError(
            f"pretrained weights file '{pretrained}' does not exist (option backbone.pretrained); "
            "give an existing checkpoint file or an open_clip pretrained tag."
        )
    tags = list_pretrained_tags(model)
    if pretrained.lower() not in [t.lower() for t in tags]:
        hint = f"available tags for '{model}': {', '.join(tags)}." if tags else (
            f"open_clip knows no pretrained weights for '{model}'; give a local weights file."
        )
        if pretrained == "openai" and not model.endswith("-quickgelu"):
            hint += f" OpenAI weights use the QuickGELU variants, e.g. '{model}-quickgelu'."
        raise ModelError(f"unknown pretrained tag '{pretrained}' for model '{model}' (option "
                         f"backbone.pretrained); {hint}")
    return pretrained


def load_backbone(
    model: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> OpenClipBackbone:
    """Load an open_clip model through open_clip's own factory and wrap it.

    Args:
        model: open_clip model name (``"RN50-quickgelu"``, ``"ViT-B-16"``, ``"vlprompt-test-vit"``...)
            or an ``hf-hub:`` / ``local-dir:`` spec.
        pretrained: open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``), a local
            checkpoint file, ``"world"`` for vlprompt's shipped world model, or None for random init.
        device: where to put the model.
        precision: open_clip precision of the frozen weights (``fp32``, ``fp16``, ``bf16``).
        cache_dir: where open_clip caches downloaded weights.

    Raises:
        ModelError: unknown model name or tag, missing file, weights that do not fit, download failure.
    """
    import open_clip

    register_model_configs()
    has_schema = model.startswith(("hf-hub:", "local-dir:"))
    if not has_schema and model not in open_clip.list_models():
        close = difflib.get_close_matches(model, open_clip.list_models(), n=4, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model '{model}' (option backbone.model).{hint} "
            "Run `vlprompt models` to list the open_clip model names."
        )
    weights = None if has_schema else _resolve_pretrained(model, pretrained)
    _check_hf_parts(model, cache_dir)
    try:
        import logging

        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init via root logger
        try:
            # Random-init models (tests, timing) are made reproducible: the same name gives the same
            # weights in every process, without touching the caller's RNG state.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                clip_model, _, _ = open_clip.create_model_and_transforms(
                    model, pretrained=weights if not isinstance(weights, dict) else None, device=device,
                    precision=precision, cache_dir=cache_dir,
                )
            if isinstance(weights, dict):
                load_parts(clip_model, weights)
        finally:
            logging.getLogger().setLevel(level)
    except VlpromptError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError / OSError / HTTP errors
        what = f"weights '{pretrained}'" if pretrained else "the model"
        advice = (
            "the file does not match this architecture; check the model name"
            if isinstance(weights, dict) or (weights and os.path.exists(weights))
            else "if this machine is offline, download the weights elsewhere and pass the file path "
            "as backbone.pretrained"
        )
        raise ModelError(f"could not load {what} for model '{model}': {exc}. Hint: {advice}.") from exc
    try:
        tokenizer = open_clip.get_tokenizer(model, cache_dir=cache_dir)
    except Exception as exc:  # HF tokenizers (SigLIP, CLIPA, multilingual) are fetched from the hub
        raise ModelError(
            f"could not load the tokenizer of model '{model}': {exc}. Hint: its Hugging Face tokenizer must be "
            "in the local Hugging Face cache when this machine is offline (pip install -e '.[hf]' in the vlprompt "
            "clone for transformers; see docs/backbones.md)."
        ) from exc
    preprocess_cfg = open_clip.get_model_preprocess_cfg(clip_model)
    return OpenClipBackbone(clip_model, tokenizer, model, pretrained if weights or has_schema else None,
                            preprocess_cfg)


def _check_hf_parts(model: str, cache_dir: str | None) -> None:
    """Never let a Hugging Face text tower or tokenizer named by an open_clip config run code
    (:func:`vlprompt.backbones.hf_folder.check_open_clip_hf_parts`); ``hf-hub:`` / ``local-dir:`` specs
    whose config is not registered are guarded by transformers' refusal alone."""
    import open_clip

    if model.startswith(("hf-hub:", "local-dir:")):
        from vlprompt.backbones.hf_folder import never_ask_for_remote_code

        never_ask_for_remote_code()
        return
    text_cfg = (open_clip.get_model_config(model) or {}).get("text_cfg") or {}
    names = [text_cfg[k] for k in ("hf_model_name", "hf_tokenizer_name") if isinstance(text_cfg.get(k), str)]
    if names:
        from vlprompt.backbones.hf_folder import check_open_clip_hf_parts

        check_open_clip_hf_parts(names, cache_dir)


register_backbone_family(
    "open_clip", load_backbone, test_model="vlprompt-test-vit",
    description="open_clip model names (+ pretrained tag or local weights file)",
)
