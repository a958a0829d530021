"""Run a classifier exported by ``vlprompt export`` (ONNX) with numpy, Pillow and onnxruntime only.

This module never imports torch: it is what a deployed classifier needs. The exported graph takes
``image``, a uint8 batch ``[B, S, S, 3]`` (RGB, already resized and centre-cropped to the model's
input size ``S``) and returns ``logits [B, n_cls]``; the normalisation (mean / std), the image
encoder and the class text features live inside the graph, the class names and preprocessing
parameters in its metadata (key ``vlprompt``, JSON).

The resize and crop are open_clip's evaluation transform done with Pillow exactly as torchvision
does it on PIL images (``Resize(S)`` = shortest side to ``S`` with ``int(S * long / short)`` for the
other side, ``CenterCrop(S)`` with ``round((h - S) / 2)``, then RGB conversion), so the pixels equal
those vlprompt feeds its encoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlprompt.core.errors import CheckpointError, VlpromptError

#: ``format`` of the metadata of an exported classifier.
CLASSIFIER_FORMAT = "vlprompt-classifier"
CLASSIFIER_VERSION = 1
#: File suffixes ``vlprompt predict`` treats as exported classifiers.
EXPORT_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}

_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                "nearest": Image.Resampling.NEAREST}


def exported_format(path: str | Path) -> str | None:
    """``"onnx"`` / ``"torchscript"`` when ``path`` names an exported classifier (by suffix), else None."""
    return EXPORT_SUFFIXES.get(Path(path).suffix.lower())


def preprocess(image: Image.Image, size: int, *, interpolation: str = "bicubic",
               resize_mode: str = "shortest") -> np.ndarray:
    """open_clip's evaluation resize + centre crop of one PIL image: uint8 ``[size, size, 3]`` (RGB)."""
    if interpolation not in _PIL_FILTERS:
        raise VlpromptError(f"exported classifier: unsupported interpolation '{interpolation}'")
    resample = _PIL_FILTERS[interpolation]
    w, h = image.size
    if resize_mode == "squash":
        image = image.resize((size, size), resample)
    elif resize_mode == "shortest":
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    else:
        raise VlpromptError(f"exported classifier: unsupported resize mode '{resize_mode}' (shortest, squash)")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as RGB (transparent pixels composited onto white, as vlprompt's loader does)."""
    with Image.open(path) as img:
        img.load()
        if img.mode == "RGB" and "transparency" not in img.info:
            return img.copy()
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return img.convert("RGB")


def check_metadata(meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``meta`` if it describes a vlprompt classifier this version reads, else :class:`CheckpointError`."""
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"'{path}' is not a classifier exported by `vlprompt export` "
                              f"(metadata format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > CLASSIFIER_VERSION:
        raise CheckpointError(f"'{path}' was exported by a newer vlprompt (version {meta.get('version')}); "
                              "upgrade vlprompt to read it")
    return meta


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, classnames: Sequence[str], k: int) -> list[list[list[Any]]]:
    """Per row: ``[[class, probability], ...]`` of the ``k`` most probable classes (softmax of the logits)."""
    probs = softmax(logits.astype(np.float64))
    k = min(k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[[classnames[i], round(float(p[i]), 6)] for i in row] for p, row in zip(probs, order)]


class OnnxClassifier:
    """An exported ONNX classifier on onnxruntime's CPU provider.

    Args:
        path: the ``.onnx`` file written by ``vlprompt export``.
    """

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise VlpromptError("running an exported ONNX classifier needs onnxruntime: "
                                "pip install 'vlprompt[export]' (or pip install onnxruntime)") from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"exported classifier '{path}' does not exist")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf classes
            raise CheckpointError(f"'{path}' is not a readable ONNX model ({exc})") from exc
        self._init_meta(json.loads(self.session.get_modelmeta().custom_metadata_map.get("vlprompt", "{}")))

    def _init_meta(self, meta: dict[str, Any]) -> None:
        self.meta = check_metadata(meta, self.path)
        self.classnames: list[str] = list(self.meta["classnames"])
        pre = self.meta["preprocess"]
        self.size = int(pre["size"])
        self.interpolation, self.resize_mode = str(pre["interpolation"]), str(pre["resize_mode"])
        self.batch: int | None = self.meta["input"].get("batch")  # fixed batch (1) for image-conditional graphs

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": images})[0]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.size, interpolation=self.interpolation, resize_mode=self.resize_mode)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """``[B, n_cls]`` float32 logits of a uint8 batch ``[B, S, S, 3]``."""
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) or images.dtype != np.uint8:
            raise VlpromptError(f"'{self.path}' takes uint8 images [B, {self.size}, {self.size}, 3], "
                                f"got {images.dtype} {list(images.shape)}")
        if self.batch is None:
            return self._run(images)
        return np.concatenate([self._run(images[i:i + self.batch]) for i in range(0, images.shape[0], self.batch)])

    def predict(self, files: Sequence[str], *, topk: int = 5, batch_size: int = 32,
                loader: Callable[[str], Image.Image] = open_rgb) -> list[dict[str, Any]]:
        """``[{"image", "top": [[class, probability], ...]}]`` for image files (as ``vlprompt predict``)."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(files), batch_size):
            chunk = list(files[start:start + batch_size])
            batch = np.stack([self.preprocess(loader(f)) for f in chunk])
            for f, top in zip(chunk, top_k(self.logits(batch), self.classnames, topk)):
                out.append({"image": f, "top": top})
        return out
