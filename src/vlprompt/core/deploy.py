"""Run a classifier exported by ``vlprompt export`` (ONNX) with numpy, Pillow and onnxruntime only.

This module never imports torch: it is what a deployed classifier needs. The exported graph takes
``image``, a uint8 batch ``[B, S, S, 3]`` (RGB, already resized and centre-cropped to the model's
input size ``S``) and returns ``logits [B, n_cls]``; the normalisation (mean / std), the image
encoder and the class text features live inside the graph, the class names and preprocessing
parameters in its metadata (key ``vlprompt``, JSON).

Integrity: an exported file carries the SHA-256 of everything but its metadata (:func:`onnx_checksum`:
the graph and its weights; for TorchScript ``vlprompt.tasks.export.torchscript_checksum``), stored
next to the metadata under ``vlprompt_sha256`` and recomputed on loading, so a flipped byte in the
weights is an error instead of garbage predictions. Files exported before checksums existed carry none
and are loaded without the check. The metadata is checked field by field and against the graph (input
size, one class name per logit), and logits that are not finite are refused.

The resize and crop are open_clip's evaluation transform done with Pillow exactly as torchvision
does it on PIL images (``Resize(S)`` = shortest side to ``S`` with ``int(S * long / short)`` for the
other side, ``CenterCrop(S)`` with ``round((h - S) / 2)``, then RGB conversion), so the pixels equal
those vlprompt feeds its encoder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from PIL import Image

from vlprompt.core.errors import CheckpointError, VlpromptError

#: ``format`` of the metadata of an exported classifier.
CLASSIFIER_FORMAT = "vlprompt-classifier"
CLASSIFIER_VERSION = 1
#: Metadata key (ONNX ``metadata_props``; TorchScript extra file) of the SHA-256 of the graph and weights.
CHECKSUM_KEY = "vlprompt_sha256"
#: File suffixes ``vlprompt predict`` treats as exported classifiers.
EXPORT_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}

_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                "nearest": Image.Resampling.NEAREST}


def exported_format(path: str | Path) -> str | None:
    """``"onnx"`` / ``"torchscript"`` when ``path`` names an exported classifier (by suffix), else None."""
    return EXPORT_SUFFIXES.get(Path(path).suffix.lower())


def refuse_exported(path: str | Path, command: str) -> None:
    """Raise :class:`VlpromptError` when ``path``, given to ``vlprompt COMMAND`` as a prompt file, is a
    classifier written by ``vlprompt export`` (by suffix, and not a safetensors file)."""
    p = Path(path)
    fmt = exported_format(p)
    if fmt is None or not p.is_file():
        return
    try:
        with p.open("rb") as f:
            head = f.read(9)
    except OSError:
        return
    if len(head) == 9 and head[8:9] == b"{":  # a safetensors file (8-byte header length, then JSON)
        return
    kind = "ONNX" if fmt == "onnx" else "TorchScript"
    raise VlpromptError(f"'{p}' is an exported classifier ({kind}, written by `vlprompt export`), not a prompt "
                        f"file (.safetensors): `vlprompt {command}` needs the prompt file it was exported from. "
                        f"To classify images with the exported file use `vlprompt predict IMAGES --prompt {p}`.")


# ------------------------------------------------------------------------------------ ONNX bytes
_ONNX_METADATA_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto: 1 key, 2 value)


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or malformed protobuf")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """Top-level protobuf fields of ``data``: ``(field number, start, payload start, end)``."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        payload = pos
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, payload = _varint(data, pos)
            pos = payload + n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        if field == 0 or pos > len(data):
            raise ValueError("truncated or malformed protobuf")
        yield field, start, payload, pos


def onnx_metadata(data: bytes | memoryview) -> dict[str, str]:
    """``metadata_props`` of a serialised ONNX model (key -> value; the last entry wins, as in protobuf)."""
    view = memoryview(data)
    out: dict[str, str] = {}
    for field, _, payload, end in _fields(view):
        if field == _ONNX_METADATA_FIELD:
            entry = {f: bytes(view[payload:end][p:e]).decode("utf-8", "replace")
                     for f, _, p, e in _fields(view[payload:end]) if f in (1, 2)}
            out[entry.get(1, "")] = entry.get(2, "")
    return out


def onnx_checksum(data: bytes | memoryview, external: Path | None = None) -> str:
    """SHA-256 (hex) of a serialised ONNX model without its metadata (graph, weights, opsets, ... in file
    order), followed by the bytes of its external-data file ``external`` if it has one."""
    view = memoryview(data)
    h = hashlib.sha256()
    for field, start, _, end in _fields(view):
        if field != _ONNX_METADATA_FIELD:
            h.update(view[start:end])
    if external is not None:
        with external.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def onnx_metadata_entry(key: str, value: str) -> bytes:
    """One ``metadata_props`` entry as protobuf bytes; appended to a serialised model it adds the entry."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    k, v = key.encode(), value.encode()
    entry = b"\x0a" + varint(len(k)) + k + b"\x12" + varint(len(v)) + v
    return bytes([_ONNX_METADATA_FIELD << 3 | 2]) + varint(len(entry)) + entry


def corrupted(path: str | Path, detail: str) -> CheckpointError:
    """The error for an exported file whose graph / weights do not match their checksum."""
    return CheckpointError(f"exported file '{path}' is corrupted: {detail}; the file was damaged after it was "
                           "written: export the classifier again")


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


def _damaged(path: str | Path, detail: str) -> CheckpointError:
    return CheckpointError(f"exported classifier '{path}' has damaged metadata: {detail}; export the classifier "
                           "again with `vlprompt export`")


def parse_metadata(raw: str | bytes | None, path: str | Path) -> dict[str, Any]:
    """The ``vlprompt`` metadata text of an exported file as a checked dict (:func:`check_metadata`)."""
    if raw is None or raw == "" or raw == b"":
        raise CheckpointError(f"'{path}' is not a classifier exported by `vlprompt export` (it has no vlprompt "
                              "metadata)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"the vlprompt metadata is not valid JSON ({exc})") from exc
    return check_metadata(meta, path)


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_metadata(meta: Any, path: str | Path) -> dict[str, Any]:
    """``meta`` if it describes a vlprompt classifier this version reads, else one :class:`CheckpointError`
    naming what is wrong (every field :class:`OnnxClassifier` relies on, with its type)."""
    if not isinstance(meta, dict):
        raise _damaged(path, f"the vlprompt metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"'{path}' is not a classifier exported by `vlprompt export` "
                              f"(metadata format {meta.get('format')!r})")
    version = meta.get("version")
    if not _whole(version) or version < 1:
        raise _damaged(path, f"'version' must be a whole number >= 1, got {version!r}")
    if version > CLASSIFIER_VERSION:
        raise CheckpointError(f"'{path}' was exported by a newer vlprompt (version {version}); "
                              "upgrade vlprompt to read it")
    problems = []
    names = meta.get("classnames")
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        problems.append("'classnames' must be a non-empty list of class names")
    pre = meta.get("preprocess")
    if not isinstance(pre, dict):
        problems.append("'preprocess' must be a mapping (size, interpolation, resize_mode)")
    else:
        if not _whole(pre.get("size")) or pre["size"] < 1:
            problems.append(f"'preprocess.size' must be a whole number >= 1, got {pre.get('size')!r}")
        if pre.get("interpolation") not in _PIL_FILTERS:
            problems.append(f"'preprocess.interpolation' must be one of {', '.join(_PIL_FILTERS)}, "
                            f"got {pre.get('interpolation')!r}")
        if pre.get("resize_mode") not in ("shortest", "squash"):
            problems.append(f"'preprocess.resize_mode' must be shortest or squash, got {pre.get('resize_mode')!r}")
    inp = meta.get("input")
    if not isinstance(inp, dict):
        problems.append("'input' must be a mapping (name, shape, batch)")
    elif inp.get("batch") is not None and (not _whole(inp["batch"]) or inp["batch"] < 1):
        problems.append(f"'input.batch' must be null or a whole number >= 1, got {inp['batch']!r}")
    if problems:
        raise _damaged(path, "; ".join(problems))
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

    The file's checksum (when it has one), its metadata and the graph's input / output shapes are checked
    on loading; any mismatch is one :class:`CheckpointError`.

    Args:
        path: the ``.onnx`` file written by ``vlprompt export``.
    """

    batch: int | None  # fixed batch (1) for image-conditional graphs, else None

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise VlpromptError("running an exported ONNX classifier needs onnxruntime: "
                                "pip install -e '.[export]' in the vlprompt clone (or pip install "
                                "onnxruntime)") from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"exported classifier '{path}' does not exist")
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read exported classifier '{path}': {exc.strerror or exc}") from exc
        try:
            props = onnx_metadata(data)
        except ValueError as exc:
            raise CheckpointError(f"'{path}' is not a readable ONNX model ({exc}); it may be truncated or "
                                  "corrupted") from exc
        self._init_meta(parse_metadata(props.get("vlprompt"), self.path))
        if CHECKSUM_KEY in props:
            self._verify(data, props[CHECKSUM_KEY])
        del data
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf classes
            raise CheckpointError(f"'{path}' is not a readable ONNX model ({exc})") from exc
        self._check_graph()

    def _verify(self, data: bytes, expected: str) -> None:
        """Recompute the SHA-256 of the graph and weights (and of the external-data file, if any)."""
        name = self.meta.get("external_data")
        external = None
        if name is not None:
            if not isinstance(name, str) or not name or Path(name).name != name:
                raise _damaged(self.path, f"'external_data' must be a file name, got {name!r}")
            external = self.path.parent / name
            if not external.is_file():
                raise CheckpointError(f"exported classifier '{self.path}' keeps its weights in '{external}', "
                                      "which does not exist; keep the two files together")
        try:
            actual = onnx_checksum(data, external)
        except OSError as exc:
            raise CheckpointError(f"cannot read '{external}': {exc.strerror or exc}") from exc
        if actual != expected:
            raise corrupted(self.path, "its graph and weights do not match their checksum (SHA-256 in its metadata)")

    def _check_graph(self) -> None:
        """The graph takes ``image [B, S, S, 3]`` and gives ``logits [B, n_cls]``, as the metadata says."""
        inputs = {i.name: list(i.shape) for i in self.session.get_inputs()}
        outputs = {o.name: list(o.shape) for o in self.session.get_outputs()}
        if "image" not in inputs or "logits" not in outputs:
            raise CheckpointError(f"'{self.path}' is not a classifier exported by `vlprompt export`: its graph maps "
                                  f"{sorted(inputs)} to {sorted(outputs)}, not image to logits")
        shape = inputs["image"]
        if len(shape) == 4 and all(isinstance(d, int) for d in shape[1:3]) and shape[1:3] != [self.size] * 2:
            raise _damaged(self.path, f"'preprocess.size' is {self.size} but the graph takes images of "
                                      f"{shape[1]} x {shape[2]} pixels")
        if len(shape) == 4 and isinstance(shape[0], int):
            self.batch = shape[0]  # a graph specialised to one batch size (image-conditional methods)
        width = outputs["logits"][-1] if outputs["logits"] else None
        if isinstance(width, int):
            self._check_width(width)

    def _check_width(self, width: int) -> None:
        if width != len(self.classnames):
            raise CheckpointError(f"exported classifier '{self.path}' lists {len(self.classnames)} class names in its "
                                  f"metadata but its graph outputs {width} logits per image (one per class); the "
                                  "metadata is damaged: export the classifier again")

    def _init_meta(self, meta: dict[str, Any]) -> None:
        """Read the checked metadata (:func:`check_metadata`)."""
        self.meta = meta
        self.classnames: list[str] = list(meta["classnames"])
        pre = meta["preprocess"]
        self.size = int(pre["size"])
        self.interpolation, self.resize_mode = str(pre["interpolation"]), str(pre["resize_mode"])
        self.batch = meta["input"].get("batch")

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": images})[0]

    def _run_checked(self, images: np.ndarray) -> np.ndarray:
        try:
            out = np.asarray(self._run(images))
        except Exception as exc:  # onnxruntime / TorchScript errors come in many classes
            raise CheckpointError(f"exported classifier '{self.path}' failed on uint8 images {list(images.shape)} "
                                  f"({self._reason(exc)}); its metadata (preprocess.size {self.size}) may not match "
                                  "its graph: export the classifier again") from exc
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise CheckpointError(f"exported classifier '{self.path}' gave logits of shape {list(out.shape)} for "
                                  f"{images.shape[0]} images; export the classifier again")
        self._check_width(out.shape[1])
        return out

    @staticmethod
    def _reason(exc: Exception) -> str:
        """onnxruntime's message of a failed run, on one line."""
        return " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())[:300] or type(exc).__name__

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.size, interpolation=self.interpolation, resize_mode=self.resize_mode)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """``[B, n_cls]`` float32 logits of a uint8 batch ``[B, S, S, 3]``."""
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) or images.dtype != np.uint8:
            raise VlpromptError(f"'{self.path}' takes uint8 images [B, {self.size}, {self.size}, 3], "
                                f"got {images.dtype} {list(images.shape)}")
        if self.batch is None:
            return self._run_checked(images)
        return np.concatenate([self._run_checked(images[i:i + self.batch])
                               for i in range(0, images.shape[0], self.batch)])

    def predict(self, files: Sequence[str], *, topk: int = 5, batch_size: int = 32,
                loader: Callable[[str], Image.Image] = open_rgb) -> list[dict[str, Any]]:
        """``[{"image", "top": [[class, probability], ...]}]`` for image files (as ``vlprompt predict``);
        logits that are not finite (a damaged file) are refused."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(files), batch_size):
            chunk = list(files[start:start + batch_size])
            batch = np.stack([self.preprocess(loader(f)) for f in chunk])
            logits = self.logits(batch)
            finite = np.isfinite(logits).all(axis=1)
            if not finite.all():
                bad = chunk[int(np.argmin(finite))]
                raise CheckpointError(f"exported classifier '{self.path}' gave non-finite logits (NaN / Inf) for "
                                      f"'{bad}'; its weights are damaged or were exported from a broken model: "
                                      "export the classifier again")
            for f, top in zip(chunk, top_k(logits, self.classnames, topk)):
                out.append({"image": f, "top": top})
        return out
