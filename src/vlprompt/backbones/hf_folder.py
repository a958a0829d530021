"""Checks of a Hugging Face model folder (``--model hf:<dir>``) before ``transformers`` reads it.

A model folder is data, never code. Before any ``transformers`` call, :func:`check_model_folder`:

* refuses custom code: an ``auto_map`` in ``config.json``, ``tokenizer_config.json``,
  ``preprocessor_config.json`` or ``processor_config.json`` names Python files that transformers would
  run (after asking ``[y/N]`` on standard input); vlprompt never runs them and never asks;
* reads ``config.json`` itself (valid JSON object, a ``model_type`` vlprompt drives);
* accepts safetensors weights only, each file's header checked against its size (a truncated
  download is named); pickled weights (``pytorch_model.bin``, ...) are refused, never unpickled;
* requires tokenizer files (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``, or a
  sentencepiece model): without them transformers builds an empty tokenizer and the model
  classifies at chance.

:func:`preprocess_from_processor` maps a ``preprocessor_config.json`` onto open_clip's
``PreprocessCfg`` fields, checking every field it reads (image sides are whole numbers of pixels
within :data:`MAX_IMAGE_SIDE`, the mean / std are three finite numbers, the std positive, the image
size what the model's position embeddings take); a folder without the file gets the default
preprocessing with one warning line naming it.

Every refusal is a :class:`~vlprompt.core.errors.ModelError` naming the file and what to do.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from vlprompt.core.errors import ModelError
from vlprompt.core.validate import shown

logger = logging.getLogger("vlprompt.backbones.hf")

#: Largest image side (pixels) a ``preprocessor_config.json`` may ask for: the largest released
#: CLIP / SigLIP inputs are under 1,000 pixels a side; 100,000 would need ~30 GB per image.
MAX_IMAGE_SIDE = 2048
#: transformers model types the ``hf`` family drives.
SUPPORTED_TYPES = ("clip", "siglip", "siglip2")
#: Files whose ``auto_map`` entry makes transformers import Python code shipped with the model.
CODE_MAP_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
#: Sets of files that each make a complete tokenizer (fast ``tokenizer.json`` first).
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("spiece.model",), ("tokenizer.model",),
                   ("sentencepiece.bpe.model",), ("vocab.txt",))
#: Weight files that are pickles (or other formats vlprompt does not read).
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt.index", "tf_model.h5",
                   "flax_model.msgpack")
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_AGAIN = "save the model again (save_pretrained) or download it again"


def model_folder(model: str, cache_dir: str | None = None) -> Path:
    """The folder of ``model``: a local directory, or the snapshot of a hub id in the local cache."""
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True, cache_dir=cache_dir))
    except Exception as exc:  # noqa: BLE001 - not a repo id, not cached, no huggingface_hub: all "not here"
        raise ModelError(
            f"hf model '{model}' is not available locally (option backbone.model): no folder of that name and no "
            "hub model of that id in the local Hugging Face cache. vlprompt loads Hugging Face models "
            "offline: give a directory written by save_pretrained / `hf download`, or a hub id "
            "already in the local cache.") from exc


def read_json_object(file: Path, fix: str = _AGAIN) -> dict[str, Any]:
    """The JSON object in ``file``; anything else is a ModelError naming the file and saying ``fix``."""
    try:
        data = json.loads(file.read_bytes())
    except OSError as exc:
        raise ModelError(f"cannot read '{file}': {exc.strerror or exc}; {fix}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ModelError(f"'{file}' is not valid JSON ({getattr(exc, 'msg', exc)}{where}); {fix}") from exc
    except RecursionError as exc:
        raise ModelError(f"'{file}' is not valid JSON (nested too deeply); {fix}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"'{file}' is not a JSON object (it holds a {type(data).__name__}); {fix}")
    return data


def refuse_custom_code(folder: Path) -> None:
    """Refuse a folder whose JSON files map transformers' Auto classes onto its own Python code."""
    for name in CODE_MAP_FILES:
        file = folder / name
        if not file.is_file():
            continue
        auto_map = read_json_object(file).get("auto_map")
        if auto_map:
            entries = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
            named = sorted({str(x) for entry in entries for x in (entry if isinstance(entry, list) else [entry]) if x})
            raise ModelError(
                f"hf model folder '{folder}' ships its own code: auto_map in {name} names {', '.join(named)[:200]}. "
                "vlprompt never runs code from a model folder (nor asks whether to); use a folder of a stock "
                "transformers CLIPModel / SiglipModel / Siglip2Model, without auto_map.")


def never_ask_for_remote_code() -> None:
    """Make ``transformers`` refuse custom code instead of asking ``[y/N]`` on standard input.

    transformers asks only when ``trust_remote_code`` is not given and its prompt timeout
    (``transformers.dynamic_module_utils.TIME_OUT_REMOTE_CODE``) is positive; with 0 it raises at once.
    vlprompt passes ``trust_remote_code=False`` to every call it makes itself; this covers the calls made
    for it by open_clip (Hugging Face text towers and tokenizers). No-op without transformers.
    """
    try:
        import transformers.dynamic_module_utils as dmu
    except ImportError:
        return
    dmu.TIME_OUT_REMOTE_CODE = 0


def check_open_clip_hf_parts(names: list[str], cache_dir: str | None = None) -> None:
    """Refuse custom code in the Hugging Face folders an open_clip model config names (``hf_model_name``,
    ``hf_tokenizer_name``: a local folder or a hub id), checked before open_clip builds the model; a hub id
    not in the local cache is left to open_clip (transformers then refuses custom code without asking, see
    :func:`never_ask_for_remote_code`)."""
    never_ask_for_remote_code()
    for name in names:
        try:
            folder = model_folder(name, cache_dir)
        except ModelError:
            continue
        refuse_custom_code(folder)


def check_config(folder: Path) -> dict[str, Any]:
    """``config.json`` as read by vlprompt: a JSON object whose ``model_type`` the ``hf`` family drives."""
    file = folder / "config.json"
    if not file.is_file():
        raise ModelError(f"hf model folder '{folder}' has no config.json; {_AGAIN} (a folder written by "
                         "save_pretrained / `hf download` holds one)")
    config = read_json_object(file)
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ModelError(f"'{file}' names no model_type (got {shown(model_type)}); it must say one of "
                         f"{', '.join(SUPPORTED_TYPES)}: {_AGAIN}")
    if model_type not in SUPPORTED_TYPES:
        raise ModelError(f"'{file}' is of a {shown(model_type)} model; the hf family drives "
                         f"{', '.join(SUPPORTED_TYPES)} (CLIPModel, SiglipModel, Siglip2Model)")
    return config


def check_weights(folder: Path) -> str:
    """The name of the folder's safetensors weights (single file or index), each file checked complete.

    Pickled weights are refused without being read: unpickling runs whatever the file says.
    """
    from safetensors import safe_open

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        name, files = single.name, [single]
    elif index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"'{index}' has no weight_map of tensor names to files; {_AGAIN}")
        names = sorted({str(v) for v in weight_map.values()})
        outside = [n for n in names if Path(n).name != n or n in ("", ".", "..")]
        if outside:
            raise ModelError(f"'{index}' names weight files outside its folder ({shown(outside[0])}); {_AGAIN}")
        name, files = index.name, [folder / n for n in names]
    else:
        pickled = [n for n in PICKLED_WEIGHTS if (folder / n).is_file()]
        if pickled:
            raise ModelError(
                f"hf model folder '{folder}' holds its weights as {pickled[0]}, which vlprompt does not read: "
                "pickled weights can run code when loaded. Convert them to model.safetensors where you trust the "
                "file (AutoModel.from_pretrained(folder).save_pretrained(folder), safetensors is the default) or "
                "download the model's safetensors weights.")
        raise ModelError(f"hf model folder '{folder}' has no weights (model.safetensors or "
                         f"model.safetensors.index.json); {_AGAIN}")
    for file in files:
        if not file.is_file():
            raise ModelError(f"weight file '{file}' named by '{index}' is missing; {_AGAIN}")
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors' own error type (SafetensorError) and OSError
            reason = " ".join(str(exc).split())[:200]
            raise ModelError(f"weight file '{file}' is damaged or incomplete ({os.path.getsize(file):,} bytes; "
                             f"{reason}); {_AGAIN}") from exc
    return name


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a folder without a complete set of tokenizer files (naming what is missing)."""
    present = {n for group in TOKENIZER_FILES for n in group if (folder / n).is_file()}
    if any(all(n in present for n in group) for group in TOKENIZER_FILES):
        return
    partial = [g for g in TOKENIZER_FILES if any(n in present for n in g)]
    has = ""
    if partial:
        group = partial[0]
        has = (f" (it has {', '.join(n for n in group if n in present)} but not "
               f"{', '.join(n for n in group if n not in present)})")
    options = ", or ".join(" + ".join(group) for group in TOKENIZER_FILES)
    raise ModelError(
        f"hf model folder '{folder}' has no tokenizer files{has}: it needs {options}. Without them the text "
        f"cannot be tokenized as the model was trained (it would classify at chance); copy the model's tokenizer "
        f"files into the folder (tokenizer.save_pretrained('{folder}')).")


# ------------------------------------------------------------------------------------ preprocessing
def _whole(value: Any, field: str, file: Path, *, limit: int = MAX_IMAGE_SIDE) -> int:
    """A whole number of pixels in ``[1, limit]`` (integral floats accepted) from ``field`` of ``file``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"'{file}': {field} must be a whole number of pixels, at least 1, got {shown(value)}; "
                         f"fix it or {_AGAIN}")
    if value > limit:
        raise ModelError(f"'{file}': {field} asks for images of {value:,} pixels a side, more than vlprompt's "
                         f"limit of {limit:,} pixels; fix it or {_AGAIN}")
    return value


def _sides(value: Any, field: str, file: Path) -> tuple[int, int] | int:
    """``{height, width}`` -> ``(h, w)``; ``{shortest_edge}`` or a number -> one side."""
    if isinstance(value, dict):
        if "height" in value or "width" in value:
            h = _whole(value.get("height", value.get("width")), f"{field}.height", file)
            return h, _whole(value.get("width", h), f"{field}.width", file)
        if "shortest_edge" in value:
            return _whole(value["shortest_edge"], f"{field}.shortest_edge", file)
        raise ModelError(f"'{file}': {field} must hold height and width or shortest_edge, got {shown(value)}; "
                         f"fix it or {_AGAIN}")
    return _whole(value, field, file)


def _three(value: Any, field: str, file: Path, *, positive: bool = False) -> tuple[float, float, float]:
    """Three finite numbers (one number stands for all three channels); ``positive``: each above 0."""
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    ok = (isinstance(values, list) and len(values) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))
    if ok and positive:
        ok = all(v > 0 for v in values)
    if not ok:
        need = "three finite numbers above 0" if positive else "three finite numbers"
        raise ModelError(f"'{file}': {field} must be {need} (one per colour channel), got {shown(value)}; "
                         f"fix it or {_AGAIN}")
    return float(values[0]), float(values[1]), float(values[2])


def preprocess_from_processor(path: Path, image_size: int, *, patch_size: int | None = None,
                              fixed_size: bool = True) -> dict[str, Any]:
    """open_clip ``PreprocessCfg`` fields from the ``preprocessor_config.json`` in ``path``.

    CLIP processors resize the shortest edge then centre-crop (open_clip ``resize_mode="shortest"``);
    SigLIP processors resize to ``height x width`` without crop (``resize_mode="squash"``); SigLIP 2
    (NaFlex) ones give square images the side ``floor(sqrt(max_num_patches)) * patch_size``.
    ``image_size``: the model's input side (default size); ``fixed_size``: the model takes only that
    size (learned position embeddings of CLIP / SigLIP); ``patch_size``: the model's patch side, which a
    NaFlex processor's ``patch_size`` must equal.

    Raises:
        ModelError: the file is not valid JSON, or a field is of the wrong type, out of range or
            does not fit the model (naming the file and the field).
    """
    file = path / "preprocessor_config.json"
    if not file.is_file():
        logger.warning(f"warning: hf model folder '{path}' has no preprocessor_config.json; using default "
                       f"preprocessing: shorter side resized to {image_size} pixels, centre crop {image_size}x"
                       f"{image_size}, bicubic, OpenAI CLIP mean / std (copy the model's preprocessor_config.json "
                       "into the folder to use its own)")
        return {"size": image_size, "resize_mode": "shortest", "interpolation": "bicubic"}
    cfg = read_json_object(file)
    out: dict[str, Any] = {}
    size: tuple[int, int] | int | None = None if cfg.get("size") is None else _sides(cfg["size"], "size", file)
    if "max_num_patches" in cfg:  # SigLIP 2 (NaFlex): the square the processor gives square images
        patch = _whole(cfg.get("patch_size", 16), "patch_size", file)
        if patch_size is not None and patch != patch_size:
            raise ModelError(f"'{file}': patch_size {patch} is not the model's vision_config.patch_size "
                             f"{patch_size} (config.json); fix it or {_AGAIN}")
        patches = _whole(cfg["max_num_patches"], "max_num_patches", file, limit=2**62)
        side = math.isqrt(patches) * patch
        if side > MAX_IMAGE_SIDE:
            raise ModelError(f"'{file}': max_num_patches {patches:,} of {patch} pixels asks for images of {side:,} "
                             f"pixels a side, more than vlprompt's limit of {MAX_IMAGE_SIDE:,} pixels; fix it or "
                             f"{_AGAIN}")
        size = (side, side)
    do_crop = cfg.get("do_center_crop") or False
    if not isinstance(do_crop, bool):
        raise ModelError(f"'{file}': do_center_crop must be true or false, got {shown(do_crop)}; fix it or {_AGAIN}")
    crop = cfg.get("crop_size")
    if do_crop and crop is not None:
        sides = _sides(crop, "crop_size", file)
        out["size"] = sides if isinstance(sides, tuple) else (sides, sides)
        out["resize_mode"] = "shortest"
    else:
        out["size"] = image_size if size is None else size
        out["resize_mode"] = "squash" if isinstance(size, tuple) else "shortest"
    if fixed_size:
        final = out["size"] if isinstance(out["size"], tuple) else (out["size"], out["size"])
        if final != (image_size, image_size):
            field = "crop_size" if do_crop and crop is not None else "size"
            raise ModelError(f"'{file}' makes images of {final[0]}x{final[1]} pixels ({field}) but the model takes "
                             f"{image_size}x{image_size} (vision_config.image_size in config.json); fix {field} or "
                             f"{_AGAIN}")
    if cfg.get("image_mean") is not None:
        out["mean"] = _three(cfg["image_mean"], "image_mean", file)
    if cfg.get("image_std") is not None:
        out["std"] = _three(cfg["image_std"], "image_std", file, positive=True)
    resample = 3 if cfg.get("resample") is None else cfg["resample"]
    if isinstance(resample, bool) or not isinstance(resample, int):
        raise ModelError(f"'{file}': resample must be a PIL resampling number (2 bilinear, 3 bicubic), got "
                         f"{shown(resample)}; fix it or {_AGAIN}")
    out["interpolation"] = _RESAMPLE.get(resample, "bicubic")
    return out
