"""Hugging Face ``transformers`` backbones: ``CLIPModel``, ``SiglipModel``, ``Siglip2Model`` (``--model hf:...``).

Loaded offline only (``local_files_only=True``): a local directory written by ``save_pretrained``
or a hub id already in the local Hugging Face cache. Needs the optional dependency
``pip install vlprompt[hf]``; the core package never imports this module.

Text path on prompt embeddings: the model's own text forward runs on the token ids of the prompt
layout, with a forward pre-hook on its embedding module that passes the prompt embeddings as
``inputs_embeds`` (the model adds its position embeddings, masks and pools exactly as for ids):
CLIP pools at the first EOS token (``argmax`` for legacy configs with ``eos_token_id == 2``),
SigLIP at the last position of the ``max_length``-padded sequence.

Image preprocessing comes from the saved ``preprocessor_config.json`` (size, crop, mean, std,
resample) mapped onto open_clip's transform pipeline (:func:`open_clip.transform.image_transform_v2`).
SigLIP 2 (NaFlex) processors resize each image to fit ``max_num_patches`` keeping its aspect ratio;
here every image is resized to the square ``floor(sqrt(max_num_patches)) * patch_size`` (what the
processor does for square images) and cut into the processor's patch sequence
(``pixel_values [B, N, p*p*3]``, ``spatial_shapes``, an all-ones ``pixel_attention_mask``).
"""

from __future__ import annotations

import json
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
)
from vlprompt.core.errors import ModelError, VlpromptError

#: transformers model types this adapter drives.
SUPPORTED_TYPES = ("clip", "siglip", "siglip2")
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelError("Hugging Face models (--model hf:...) need the optional dependency: "
                         "pip install 'vlprompt[hf]'") from exc
    return transformers


class HFBackbone(nn.Module):
    """A frozen ``CLIPModel`` / ``SiglipModel`` with the :class:`~vlprompt.backbones.base.Backbone` interface."""

    family = "hf"

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, preprocess_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained: str | None = None
        self.preprocess_cfg = dict(preprocess_cfg)
        self.model_type = model.config.model_type
        if self.model_type not in SUPPORTED_TYPES:
            raise ModelError(f"hf model '{name}' is a '{self.model_type}' model; vlprompt drives "
                             f"{', '.join(SUPPORTED_TYPES)} (CLIPModel, SiglipModel)")
        self._text_model = model.text_model
        tcfg = model.config.text_config
        self._context_length = int(tcfg.max_position_embeddings)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        eos = tokenizer.eos_token_id
        if self.model_type == "clip":
            self._legacy_argmax = getattr(self._text_model, "eos_token_id", tcfg.eos_token_id) == 2
            self._eos_id = int(getattr(self._text_model, "eos_token_id", tcfg.eos_token_id))
            causal, pool, kind = True, "eot", "causal-eot"
        else:
            self._legacy_argmax, self._eos_id = False, int(eos) if eos is not None else None
            causal, pool, kind = False, "last", "bidir-last"
        prefix = self._measure_prefix()
        sot = None
        if prefix:
            sot = int(tokenizer("a photo").input_ids[0])
        self._facts = TextTowerFacts(kind=kind, causal=causal, pool=pool, context_length=self._context_length,
                                     prefix_len=prefix, pad_id=self.pad_id,
                                     eot_id=None if eos is None else int(eos), sot_id=sot)
        self.model.requires_grad_(False)
        self.model.eval()

    def _measure_prefix(self) -> int:
        full = list(self.tokenizer("a photo").input_ids)
        bare = list(self.tokenizer("a photo", add_special_tokens=False).input_ids)
        for k in range(len(full) - len(bare) + 1):
            if full[k : k + len(bare)] == bare:
                return k
        raise ModelError(f"cannot locate the text within the tokens of '{self.name}''s tokenizer")

    # ------------------------------------------------------------------ properties
    @property
    def info(self) -> BackboneInfo:
        return BackboneInfo(self.name, None, self.embed_dim, self.text_width, family=self.family)

    @property
    def text_facts(self) -> TextTowerFacts:
        return self._facts

    @property
    def device(self) -> torch.device:
        return self._embedding_module().token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._embedding_module().token_embedding.weight.dtype

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def text_width(self) -> int:
        return int(self._embedding_module().token_embedding.weight.shape[1])

    @property
    def embed_dim(self) -> int:
        if self.model_type == "clip":
            return int(self.model.config.projection_dim)
        return int(self._text_model.head.out_features)

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.detach().float().exp()

    @property
    def logit_bias(self) -> Tensor | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.detach().float().reshape(())

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg.get("size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def train(self, mode: bool = True) -> HFBackbone:
        super().train(False)
        return self

    # ------------------------------------------------------------------ text side
    def _embedding_module(self) -> nn.Module:
        return self._text_model.embeddings

    def encode_tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def tokenize(self, texts: list[str] | str, *, what: str = "text") -> Tensor:
        """``[B, L]`` ids as the model's processor pads them (``max_length`` = the position count)."""
        if isinstance(texts, str):
            texts = [texts]
        for text in texts:
            n = len(self.tokenizer(text).input_ids)
            if n > self.context_length:
                raise VlpromptError(
                    f"{what} '{text}' is {n} tokens long with special tokens, {n - self.context_length} more "
                    f"than the context length {self.context_length} of '{self.name}'; shorten it (or use fewer "
                    "context tokens, option method.n_ctx).")
        return self.tokenizer(list(texts), padding="max_length", max_length=self.context_length,
                              truncation=False, return_tensors="pt").input_ids

    def pooled_index(self, ids: Tensor) -> Tensor:
        if self.model_type == "clip":
            if self._legacy_argmax:
                return ids.argmax(dim=-1)
            return (ids == self._eos_id).int().argmax(dim=-1)
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)

    eot_index = pooled_index

    def prompt_length(self, ids: Tensor) -> int:
        if self._facts.truncate_exact:
            return int(self.pooled_index(ids).max()) + 1
        return int(ids.shape[1])

    def token_embedding(self, ids: Tensor) -> Tensor:
        return self._embedding_module().token_embedding(ids.to(self.device))

    def token_embedding_table(self) -> Tensor:
        return self._embedding_module().token_embedding.weight

    def _pool_ids(self, ids: Tensor, eot_index: Tensor) -> Tensor:
        """Ids whose pooling position is ``eot_index`` for the model's own pooling rule."""
        if self.model_type != "clip":
            return ids
        rows = torch.arange(ids.shape[0])
        if self._legacy_argmax:  # pooled at argmax(ids)
            out = torch.zeros_like(ids)
            out[rows, eot_index.cpu()] = 1
        else:  # pooled at the first EOS
            out = torch.full_like(ids, self._eos_id + 1)
            out[rows, eot_index.cpu()] = self._eos_id
        return out

    def encode_text_embeddings(self, embeds: Tensor, eot_index: Tensor, *, ids: Tensor | None = None,
                               truncate: bool = True) -> Tensor:
        """The model's ``get_text_features`` with ``embeds [P, L, D]`` as token embeddings -> ``[P, E]``."""
        if self._facts.truncate_exact and truncate:
            length = int(eot_index.max().item()) + 1
            embeds = embeds[:, :length]
        length = embeds.shape[1]
        # the model reads ids only to pool (CLIP: first EOS / argmax) and for their shape (SigLIP)
        ids = self._pool_ids(torch.zeros(embeds.shape[0], length, dtype=torch.long), eot_index).to(embeds.device)
        emb_module = self._embedding_module()
        given = embeds.to(self.dtype)

        def swap(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            kwargs = dict(kwargs)
            kwargs["input_ids"] = None
            kwargs["inputs_embeds"] = given
            return (), kwargs

        handle = emb_module.register_forward_pre_hook(swap, with_kwargs=True)
        try:
            out = self.model.get_text_features(input_ids=ids)
        finally:
            handle.remove()
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def encode_text_shared_prefix(self, prefix: Tensor, suffix: Tensor, eot_in_suffix: Tensor, *,
                                  ids: Tensor | None = None) -> Tensor:
        return encode_prefix_suffix_in_full(self, prefix, suffix, eot_in_suffix, ids=ids)

    def encode_text(self, ids: Tensor) -> Tensor:
        ids = ids.to(self.device)
        return self.encode_text_embeddings(self.token_embedding(ids), self.pooled_index(ids), ids=ids)

    # ------------------------------------------------------------------ image side
    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """Image features ``[B, 3, H, W] -> [B, E]`` (the model's ``get_image_features``)."""
        images = images.to(self.device, self.dtype)
        if self.model_type == "siglip2":
            out = self.model.get_image_features(**siglip2_patches(images, self.model.config.vision_config.patch_size))
        else:
            out = self.model.get_image_features(pixel_values=images)
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def local_features_unsupported(self) -> str | None:
        return ("local (patch) features are defined for open_clip image towers only; "
                f"'{self.name}' is a Hugging Face {self.model_type} model")

    def local_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise ModelError(str(self.local_features_unsupported()))

    def eval_transform(self) -> Any:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)

    def train_transform(self) -> Any:
        return coop_train_transform(self.image_size, self.preprocess_cfg)


def siglip2_patches(images: Tensor, patch: int) -> dict[str, Tensor]:
    """SigLIP 2 inputs of ``images [B, 3, H, W]``: the processor's patch order (row-major patches, each
    ``(p, p, C)`` flattened), ``spatial_shapes [B, 2]`` and an all-ones ``pixel_attention_mask [B, N]``."""
    b, c, h, w = images.shape
    nh, nw = h // patch, w // patch
    x = images.reshape(b, c, nh, patch, nw, patch).permute(0, 2, 4, 3, 5, 1).reshape(b, nh * nw, -1)
    shapes = torch.tensor([[nh, nw]] * b, dtype=torch.long, device=images.device)
    mask = torch.ones(b, nh * nw, dtype=torch.int32, device=images.device)
    return {"pixel_values": x, "spatial_shapes": shapes, "pixel_attention_mask": mask}


def preprocess_from_processor(path: Path, image_size: int) -> dict[str, Any]:
    """open_clip ``PreprocessCfg`` fields from a saved ``preprocessor_config.json``.

    CLIP processors resize the shortest edge then centre-crop (open_clip ``resize_mode="shortest"``);
    SigLIP processors resize to ``height x width`` without crop (``resize_mode="squash"``).
    """
    cfg: dict[str, Any] = {}
    file = path / "preprocessor_config.json"
    if file.is_file():
        cfg = json.loads(file.read_text())
    crop = cfg.get("crop_size")
    size = cfg.get("size")
    if "max_num_patches" in cfg:  # SigLIP 2 (NaFlex): the square the processor gives square images
        side = int(int(cfg["max_num_patches"]) ** 0.5) * int(cfg.get("patch_size", 16))
        size = {"height": side, "width": side}
    do_crop = bool(cfg.get("do_center_crop", False)) and crop is not None
    out: dict[str, Any] = {}
    if do_crop:
        side = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
        out["size"] = (int(side), int(crop.get("width", side) if isinstance(crop, dict) else side))
        out["resize_mode"] = "shortest"
    else:
        if isinstance(size, dict) and "height" in size:
            out["size"] = (int(size["height"]), int(size["width"]))
        elif isinstance(size, dict) and "shortest_edge" in size:
            out["size"] = int(size["shortest_edge"])
        else:
            out["size"] = image_size
        out["resize_mode"] = "squash" if isinstance(size, dict) and "height" in size else "shortest"
    if "image_mean" in cfg:
        out["mean"] = tuple(float(v) for v in cfg["image_mean"])
    if "image_std" in cfg:
        out["std"] = tuple(float(v) for v in cfg["image_std"])
    out["interpolation"] = _RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic")
    return out


def load_hf_backbone(model: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                     precision: str = "fp32", cache_dir: str | None = None) -> HFBackbone:
    """Load ``model`` (a local ``save_pretrained`` directory or a cached hub id) offline.

    ``pretrained`` is not used: the weights are the model's own (recorded as None).

    Raises:
        ModelError: transformers missing, model not available locally, unsupported model type.
    """
    transformers = _require_transformers()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    local = Path(os.path.expanduser(model))
    where = str(local) if local.is_dir() else model
    try:
        config = transformers.AutoConfig.from_pretrained(where, local_files_only=True, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"hf model '{model}' is not available locally (option backbone.model): {exc}. vlprompt loads "
            "Hugging Face models offline: give a directory written by save_pretrained / "
            "`huggingface-cli download`, or a hub id already in the local cache.") from exc
    if config.model_type not in SUPPORTED_TYPES:
        raise ModelError(f"hf model '{model}' is a '{config.model_type}' model; supported: "
                         f"{', '.join(SUPPORTED_TYPES)} (CLIPModel, SiglipModel, Siglip2Model)")
    try:
        net = transformers.AutoModel.from_pretrained(where, local_files_only=True, cache_dir=cache_dir,
                                                     dtype=dtype)
        tok = transformers.AutoTokenizer.from_pretrained(where, local_files_only=True, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load hf model '{model}' from local files: {exc}") from exc
    vcfg = config.vision_config
    image_size = int(getattr(vcfg, "image_size", 0) or int(getattr(vcfg, "num_patches", 256) ** 0.5) * vcfg.patch_size)
    proc_dir = local if local.is_dir() else None
    if proc_dir is None:
        try:
            from huggingface_hub import snapshot_download

            proc_dir = Path(snapshot_download(model, local_files_only=True, cache_dir=cache_dir))
        except Exception:  # noqa: BLE001 - no processor config: fall back to model defaults
            proc_dir = Path("/nonexistent")
    pre = preprocess_from_processor(proc_dir, image_size)
    backbone = HFBackbone(net.to(device), tok, model, pre)
    return backbone
