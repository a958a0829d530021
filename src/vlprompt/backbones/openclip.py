"""Adapter over open_clip models: the only module that knows open_clip's internals.

Methods never touch open_clip directly. :class:`OpenClipBackbone` exposes what every prompt
method needs (the backbone seam of docs/architecture.md):

* ``tokenize(texts) -> LongTensor [B, L]`` (no silent truncation) and ``eot_index(ids) -> [B]``;
* ``token_embedding(ids) -> [B, L, D]``;
* ``encode_text_embeddings(embeds [P, L, D], eot_index [P]) -> [P, E]``: the text tower run on
  prompt *embeddings* (positional embedding, causal transformer, ln_final, EOT feature, text
  projection). The attention mask is causal, so tokens after the last EOT cannot influence any
  EOT feature: the sequence is cut right after the longest EOT, which is exact;
* ``encode_image(images [B, 3, H, W]) -> [B, E]``;
* ``logit_scale`` (already exponentiated), ``embed_dim`` (E), ``text_width`` (D), train / eval
  transforms.

The wrapped model is frozen: no parameter requires grad and it always stays in eval mode.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vlprompt.backbones.configs import pretrained_weights, register_model_configs
from vlprompt.core.errors import ModelError, VlpromptError


@dataclass(frozen=True)
class BackboneInfo:
    """What identifies a backbone in checkpoints: a prompt only fits the backbone it was learned on."""

    model: str
    pretrained: str | None
    embed_dim: int
    text_width: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pretrained": self.pretrained,
            "embed_dim": self.embed_dim,
            "text_width": self.text_width,
        }


class _TextTower:
    """Uniform view of the text tower of ``open_clip.CLIP`` and ``CustomTextCLIP`` (TextTransformer)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        src = model.text if hasattr(model, "text") else model
        if not hasattr(src, "token_embedding") or not hasattr(src, "transformer"):
            raise ModelError(
                f"model '{name}' has a text tower vlprompt cannot drive (e.g. a Hugging Face text "
                "encoder); prompt learning needs an open_clip CLIP-style text transformer."
            )
        if getattr(src, "cls_emb", None) is not None or getattr(src, "use_pad_mask", False):
            raise ModelError(
                f"model '{name}': text towers with an appended class token or padding mask (CoCa-style) "
                "are not supported for prompt learning."
            )
        self.token_embedding: nn.Embedding = src.token_embedding
        self.positional_embedding: Tensor = src.positional_embedding
        self.transformer: nn.Module = src.transformer
        self.ln_final: nn.Module = src.ln_final
        self.text_projection = src.text_projection
        self.attn_mask: Tensor | None = src.attn_mask
        self.pool_type: str = getattr(src, "text_pool_type", None) or getattr(src, "pool_type", "argmax")
        self.eos_id: int | None = getattr(src, "text_eos_id", None) or getattr(src, "eos_id", None)
        if self.pool_type not in ("argmax", "eos"):
            raise ModelError(
                f"model '{name}' pools its text features with '{self.pool_type}'; prompt learning needs "
                "the EOT-token feature ('argmax' or 'eos' pooling, as in CLIP)."
            )
        if self.attn_mask is None:
            raise ModelError(f"model '{name}' has no causal text mask; prompt learning needs a causal tower.")
        self.context_length = int(self.positional_embedding.shape[0])
        self.width = int(self.token_embedding.weight.shape[1])


class OpenClipBackbone(nn.Module):
    """A frozen open_clip model with the prompt-learning interface described in the module doc.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` instance.
        tokenizer: the open_clip tokenizer of that model.
        name: open_clip model name (e.g. ``"ViT-B-16-quickgelu"``).
        pretrained: tag or weights path it was loaded with (None = random init).
        preprocess_cfg: open_clip's preprocess config (size, mean, std, interpolation, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        pretrained: str | None,
        preprocess_cfg: dict[str, Any],
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.preprocess_cfg = dict(preprocess_cfg)
        self._text = _TextTower(model, name)
        self.model.requires_grad_(False)
        self.model.eval()

    # ------------------------------------------------------------------ properties
    @property
    def info(self) -> BackboneInfo:
        return BackboneInfo(self.name, self.pretrained, self.embed_dim, self.text_width)

    @property
    def device(self) -> torch.device:
        return self._text.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the text transformer (fp32 unless the model was cast)."""
        return self._text.transformer.get_cast_dtype()

    @property
    def context_length(self) -> int:
        return self._text.context_length

    @property
    def text_width(self) -> int:
        """D: width of token embeddings (= width of learned context vectors)."""
        return self._text.width

    @property
    def embed_dim(self) -> int:
        """E: dimension of the joint image-text embedding space."""
        proj = self._text.text_projection
        if proj is None:
            return self.text_width
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def logit_scale(self) -> Tensor:
        """exp(learned temperature) of the CLIP model, a 0-dim fp32 tensor (100 for OpenAI CLIP)."""
        return self.model.logit_scale.detach().float().exp()

    @property
    def logit_bias(self) -> Tensor | None:
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
    def sot_token_id(self) -> int:
        return int(self.tokenizer.sot_token_id)

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eot_token_id)

    def encode_tokens(self, text: str) -> list[int]:
        """BPE token ids of ``text`` without SOT/EOT (CoOp's ``_tokenizer.encode``)."""
        if not hasattr(self.tokenizer, "encode"):
            raise ModelError(f"the tokenizer of '{self.name}' cannot encode text without padding.")
        return list(self.tokenizer.encode(text))

    def tokenize(self, texts: list[str] | str, *, what: str = "text") -> Tensor:
        """Tokenize with SOT/EOT, padded to the context length: LongTensor ``[B, context_length]``.

        Unlike ``open_clip.tokenize`` this never truncates silently: a text longer than the text
        tower's context raises :class:`VlpromptError` naming the text and the excess.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode_tokens(text), self.eot_token_id]
            if len(ids) > self.context_length:
                raise VlpromptError(
                    f"{what} '{text}' is {len(ids)} tokens long with start/end tokens, "
                    f"{len(ids) - self.context_length} more than the context length {self.context_length} "
                    f"of '{self.name}'; shorten it (or use fewer context tokens, option method.n_ctx)."
                )
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def eot_index(self, ids: Tensor) -> Tensor:
        """Position of the EOT token in each row of ``ids [B, L]`` -> ``[B]`` (as open_clip pools)."""
        if self._text.pool_type == "eos" and self._text.eos_id is not None:
            return (ids == self._text.eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)

    def token_embedding(self, ids: Tensor) -> Tensor:
        """Frozen token embeddings: ``[B, L] -> [B, L, D]``."""
        return self._text.token_embedding(ids.to(self.device))

    def encode_text_embeddings(self, embeds: Tensor, eot_index: Tensor, *, truncate: bool = True) -> Tensor:
        """Run the text tower on prompt embeddings (CoOp's ``TextEncoder``).

        Args:
            embeds: ``[P, L, D]`` token embeddings (SOT, context, class tokens, EOT, padding).
            eot_index: ``[P]`` position of the EOT token of each prompt.

        Returns:
            ``[P, E]`` unnormalised text features. Sequences are cut after ``max(eot_index)``:
            exact, because the causal mask hides later tokens from every EOT position
            (``truncate=False`` runs every given position, for tests and comparisons).
        """
        t = self._text
        length = int(eot_index.max().item()) + 1 if truncate else embeds.shape[1]
        cast = self.dtype
        x = embeds[:, :length].to(cast) + t.positional_embedding[:length].to(cast)
        mask = t.attn_mask[:length, :length].to(x.device) if t.attn_mask is not None else None
        x = t.transformer(x, attn_mask=mask)
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)]
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    def encode_text_shared_prefix(self, prefix: Tensor, suffix: Tensor, eot_in_suffix: Tensor) -> Tensor:
        """Prompts ``cat(prefix[g], suffix[c])`` for every group g and class c: ``[G, n, E]``.

        Exact shared-prefix encoding (:mod:`vlprompt.backbones.shared_prefix`) when the tower allows
        it, else the plain path on the concatenated sequences.
        """
        from vlprompt.backbones.shared_prefix import encode_shared_prefix, supports_shared_prefix

        if supports_shared_prefix(self._text.transformer):
            return encode_shared_prefix(self._text, prefix, suffix, eot_in_suffix)
        g, n = prefix.shape[0], suffix.shape[0]
        full = torch.cat([prefix.unsqueeze(1).expand(-1, n, -1, -1), suffix.unsqueeze(0).expand(g, -1, -1, -1)], 2)
        eot = (eot_in_suffix + prefix.shape[1]).repeat(g)
        return self.encode_text_embeddings(full.flatten(0, 1), eot).view(g, n, -1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """Text features of token ids ``[P, L] -> [P, E]`` through :meth:`encode_text_embeddings`."""
        ids = ids.to(self.device)
        return self.encode_text_embeddings(self.token_embedding(ids), self.eot_index(ids))

    # ------------------------------------------------------------------ image side
    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """Image features ``[B, 3, H, W] -> [B, E]`` (unnormalised; frozen, so no graph is built)."""
        visual_dtype = next(self.model.visual.parameters()).dtype
        return self.model.encode_image(images.to(self.device, visual_dtype))

    @torch.no_grad()
    def local_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Global and local (per patch / position) image features, comparable with text features.

        ViT (MaskCLIP / GL-MCM / LoCoOp): the tokens entering the last transformer block are captured
        during the ordinary forward (which gives the global feature); each patch token then goes
        through that block's *value path* (ln_1, value projection, output projection, the block's
        residual and MLP; i.e. attention restricted to itself), ``ln_post`` and the projection.
        ModifiedResNet: the attention pool's value and output projections applied to every position
        of the final feature map.

        Returns:
            ``global [B, E]`` (equal to :meth:`encode_image`) and ``local [B, N, E]`` (N patches or
            H*W positions), both unnormalised.
        """
        from vlprompt.backbones.local import capture_and_encode

        visual_dtype = next(self.model.visual.parameters()).dtype
        return capture_and_encode(self.model, images.to(self.device, visual_dtype))

    # ------------------------------------------------------------------ transforms
    def eval_transform(self) -> Any:
        """CLIP's test transform: resize (bicubic) the short side, centre crop, normalise."""
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)

    def train_transform(self, scale: tuple[float, float] = (0.08, 1.0)) -> Any:
        """CoOp's training transform: random resized crop (``scale`` 0.08-1, bicubic), flip, normalise.

        This is Dassl's ``random_resized_crop, random_flip, normalize`` recipe used by every CoOp
        config, not open_clip's pretraining augmentation.
        """
        from torchvision import transforms as T

        mean = self.preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = self.preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
        return T.Compose(
            [
                T.RandomResizedCrop(
                    self.image_size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC
                ),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def list_pretrained_tags(model: str) -> list[str]:
    """open_clip's pretrained tags for ``model`` plus the ones vlprompt ships."""
    import open_clip

    tags = list(open_clip.list_pretrained_tags_by_model(model))
    tags += [tag for (name, tag) in pretrained_weights() if name == model]
    return tags


def _resolve_pretrained(model: str, pretrained: str | None) -> str | None:
    """Return what open_clip should load: a tag, a file path, or None (random init)."""
    if pretrained in (None, "", "none", "random"):
        return None
    assert pretrained is not None
    shipped = pretrained_weights()
    if (model, pretrained) in shipped:
        path = shipped[(model, pretrained)]
        if not path.is_file():
            raise ModelError(
                f"the shipped weights for '{model}' (pretrained '{pretrained}') are missing at {path}; "
                "reinstall the package that provides them."
            )
        return str(path)
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
                    model, pretrained=weights, device=device, precision=precision, cache_dir=cache_dir
                )
        finally:
            logging.getLogger().setLevel(level)
    except VlpromptError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError / OSError / HTTP errors
        what = f"weights '{pretrained}'" if pretrained else "the model"
        advice = (
            "the file does not match this architecture; check the model name"
            if weights and os.path.exists(weights)
            else "if this machine is offline, download the weights elsewhere and pass the file path "
            "as backbone.pretrained"
        )
        raise ModelError(f"could not load {what} for model '{model}': {exc}. Hint: {advice}.") from exc
    tokenizer = open_clip.get_tokenizer(model)
    preprocess_cfg = open_clip.get_model_preprocess_cfg(clip_model)
    return OpenClipBackbone(clip_model, tokenizer, model, pretrained if weights or has_schema else None,
                            preprocess_cfg)


_SHARED: dict[tuple[str, str | None, str, str, str | None], OpenClipBackbone] = {}


def shared_backbone(model: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                    precision: str = "fp32", cache_dir: str | None = None) -> OpenClipBackbone:
    """:func:`load_backbone`, memoised per process: frozen backbones are safely shared between runs,
    so their per-backbone feature cache serves every seed, method and evaluation of a sweep."""
    key = (model, pretrained, str(torch.device(device)), precision, cache_dir)
    if key not in _SHARED:
        _SHARED[key] = load_backbone(model, pretrained, device=device, precision=precision, cache_dir=cache_dir)
    return _SHARED[key]
