"""Hugging Face ``transformers`` backbones: ``CLIPModel``, ``SiglipModel``, ``Siglip2Model`` (``--model hf:...``).

Loaded offline only (``local_files_only=True``): a local directory written by ``save_pretrained``
or a hub id already in the local Hugging Face cache. Needs the optional dependency
``pip install -e '.[hf]'`` in the vlprompt clone. Importing this module declares the ``hf`` family and imports no
``transformers`` (that happens on the first load); its test model is the tiny open_clip test ViT
converted to a ``CLIPModel`` folder (:func:`write_test_model`).

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

import contextlib
import sys
from collections.abc import Iterator
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
from vlprompt.backbones.hf_folder import (
    MAX_IMAGE_SIDE,
    SUPPORTED_TYPES,
    check_config,
    check_tokenizer_files,
    check_weights,
    model_folder,
    preprocess_from_processor,
    refuse_custom_code,
)
from vlprompt.core.errors import ModelError, VlpromptError

__all__ = ["SUPPORTED_TYPES", "HFBackbone", "load_hf_backbone", "preprocess_from_processor", "quiet_progress_bars",
           "siglip2_patches", "write_test_model"]


def quiet_progress_bars() -> None:
    """No ``transformers`` progress bars in this process from now on (``--no-progress``, ``train.progress=false``).

    vlprompt's own loads (:func:`load_hf_backbone`) never show them; this turns them off for any other use of
    ``transformers`` in the process (a plugin, the user's code), and only where it is already imported: it imports
    nothing itself.
    """
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.utils.logging.disable_progress_bar()


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelError("Hugging Face models (--model hf:...) need the optional dependency: "
                         "pip install -e '.[hf]' in the vlprompt clone") from exc
    return transformers


class HFBackbone(nn.Module):
    """A frozen ``CLIPModel`` / ``SiglipModel`` with the :class:`~vlprompt.backbones.base.Backbone` interface."""

    family = "hf"

    def __init__(self, model: Any, tokenizer: Any, name: str, preprocess_cfg: dict[str, Any]) -> None:
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
            self._eos_id: int | None = int(getattr(self._text_model, "eos_token_id", tcfg.eos_token_id))
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
    def _embedding_module(self) -> Any:
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
            assert self._eos_id is not None  # set for CLIP models
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
            assert self._eos_id is not None  # set for CLIP models
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
    def encode_image(self, images: Tensor) -> Tensor:
        """Image features ``[B, 3, H, W] -> [B, E]`` (the model's ``get_image_features``); differentiable with
        respect to image-tower parameters that require gradients (none in the frozen model: no graph)."""
        images = images.to(self.device, self.dtype)
        if self.model_type == "siglip2":
            out = self.model.get_image_features(**siglip2_patches(images, self.model.config.vision_config.patch_size))
        else:
            out = self.model.get_image_features(pixel_values=images)
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def transformer_blocks(self, tower: str) -> list[nn.Module]:
        """The encoder layers of the ``"text"`` or ``"image"`` tower, input to output (``encoder.layers``)."""
        if tower not in ("text", "image"):
            raise ValueError(f"tower must be 'text' or 'image', got {tower!r}")
        part = self.model.text_model if tower == "text" else self.model.vision_model
        return list(part.encoder.layers)

    def local_features_unsupported(self) -> str | None:
        return ("local (patch) features are defined for open_clip image towers only; "
                f"'{self.name}' is a Hugging Face {self.model_type} model")

    def local_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise ModelError(str(self.local_features_unsupported()))

    def eval_transform(self) -> Any:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)

    def train_transform(self, scale: tuple[float, float] = (0.08, 1.0)) -> Any:
        return coop_train_transform(self.image_size, self.preprocess_cfg, scale=scale)


def siglip2_patches(images: Tensor, patch: int) -> dict[str, Tensor]:
    """SigLIP 2 inputs of ``images [B, 3, H, W]``: the processor's patch order (row-major patches, each
    ``(p, p, C)`` flattened), ``spatial_shapes [B, 2]`` and an all-ones ``pixel_attention_mask [B, N]``."""
    b, c, h, w = images.shape
    nh, nw = h // patch, w // patch
    x = images.reshape(b, c, nh, patch, nw, patch).permute(0, 2, 4, 3, 5, 1).reshape(b, nh * nw, -1)
    shapes = torch.tensor([[nh, nw]] * b, dtype=torch.long, device=images.device)
    mask = torch.ones(b, nh * nw, dtype=torch.int32, device=images.device)
    return {"pixel_values": x, "spatial_shapes": shapes, "pixel_attention_mask": mask}


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars or load reports from transformers (vlprompt checks the load itself)."""
    tf_logging = transformers.utils.logging
    bars, verbosity = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()


def _reason(exc: BaseException) -> str:
    """An exception's message on one line, cut to 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + " ..."


def _image_side(vcfg: Any, file: Path) -> int:
    """The model's input image side from its vision config (``image_size``, or NaFlex ``num_patches``)."""
    size = getattr(vcfg, "image_size", None)
    if size is None:
        size = int(getattr(vcfg, "num_patches", 256) ** 0.5) * int(vcfg.patch_size)
    if isinstance(size, (list, tuple)) and size:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIDE:
        raise ModelError(f"'{file}': vision_config.image_size must be a whole number of pixels from 1 to "
                         f"{MAX_IMAGE_SIDE:,}, got {size!r}; save the model again (save_pretrained) or download it "
                         "again")
    return size


def _ignored(key: Any) -> bool:
    return str(key[0] if isinstance(key, tuple) else key).endswith("position_ids")  # buffers, not weights


def _check_loaded(info: dict[str, Any], folder: Path, weights: str, model_type: str) -> None:
    """Refuse a load that left weights missing, unused or of another shape (config and weights disagree)."""
    missing = [k for k in info.get("missing_keys", ()) if not _ignored(k)]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not _ignored(k)]
    mismatched = [k for k in info.get("mismatched_keys", ()) if not _ignored(k)]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for what, keys in (("missing", missing), ("unused", unexpected), ("of another shape", mismatched)):
        if keys:
            first = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)[0]
            parts.append(f"{len(keys)} {what} (e.g. {first})")
    raise ModelError(f"the weights in '{folder / weights}' do not fit '{folder / 'config.json'}' (model_type "
                     f"'{model_type}'): {', '.join(parts)}; config.json and the weights are of different models: "
                     "save the model again (save_pretrained) or download it again")


def load_hf_backbone(model: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                     precision: str = "fp32", cache_dir: str | None = None) -> HFBackbone:
    """Load ``model`` (a local ``save_pretrained`` directory or a cached hub id) offline.

    ``pretrained`` is not used: the weights are the model's own (recorded as None). The folder is
    checked before transformers reads it (:mod:`vlprompt.backbones.hf_folder`): no custom code
    (``auto_map``), safetensors weights only, tokenizer files present, a sound preprocessor config;
    every transformers call passes ``trust_remote_code=False`` and ``local_files_only=True``.

    Raises:
        ModelError: transformers missing, model not available locally, custom code, unsupported
            model type, malformed / damaged / pickled files, weights that do not fit the config.
    """
    transformers = _require_transformers()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    folder = model_folder(model, cache_dir)
    refuse_custom_code(folder)
    model_type = check_config(folder)["model_type"]
    weights = check_weights(folder)
    check_tokenizer_files(folder)
    where = str(folder)
    safe = {"local_files_only": True, "trust_remote_code": False}
    config_file = folder / "config.json"
    with _quiet(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(where, **safe)
        except Exception as exc:  # noqa: BLE001 - transformers' field validation raises many types
            raise ModelError(f"'{config_file}' cannot be used: {_reason(exc)}; fix the field or save the model "
                             "again (save_pretrained)") from exc
        vcfg = config.vision_config
        image_size = _image_side(vcfg, config_file)
        patch = getattr(vcfg, "patch_size", None)
        pre = preprocess_from_processor(folder, image_size, patch_size=patch if isinstance(patch, int) else None,
                                        fixed_size=model_type != "siglip2")
        try:
            net, info = transformers.AutoModel.from_pretrained(
                where, config=config, dtype=dtype, use_safetensors=True, output_loading_info=True,
                ignore_mismatched_sizes=True, **safe)
        except (OSError, ValueError, TypeError, RuntimeError, KeyError, AttributeError, IndexError) as exc:
            raise ModelError(f"cannot build the model of '{config_file}' with the weights in '{folder / weights}': "
                             f"{_reason(exc)}; save the model again (save_pretrained) or download it again") from exc
        _check_loaded(info, folder, weights, model_type)
        try:
            tok = transformers.AutoTokenizer.from_pretrained(where, **safe)
        except Exception as exc:  # noqa: BLE001 - tokenizers' parse errors have no common type
            raise ModelError(f"cannot read the tokenizer files in '{folder}' (tokenizer.json, tokenizer_config.json, "
                             f"...): {_reason(exc)}; copy the model's tokenizer files into the folder again "
                             "(tokenizer.save_pretrained)") from exc
    return HFBackbone(net.to(device), tok, model, pre)


def write_test_model(folder: Path) -> str:
    """The ``hf`` family's test model: the tiny random-init open_clip ``vlprompt-test-vit`` converted to a
    ``CLIPModel`` folder in ``folder`` (weights, tokenizer, processor config); returns ``"hf:<folder>"``."""
    from vlprompt.backbones.hf_convert import save_open_clip_as_hf
    from vlprompt.backbones.openclip import load_backbone

    _require_transformers()
    tiny = load_backbone("vlprompt-test-vit")
    save_open_clip_as_hf(tiny.model, str(folder), tiny.preprocess_cfg)
    return f"hf:{folder}"


register_backbone_family(
    "hf", load_hf_backbone, test_model=write_test_model, requires=("transformers",),
    description="Hugging Face transformers CLIPModel / SiglipModel (local directory or cached hub id; needs "
                "`pip install -e '.[hf]'` in the vlprompt clone)",
)
