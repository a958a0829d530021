"""``vlprompt export``: a learned classifier as one ONNX or TorchScript graph, for use without vlprompt.

For methods whose class text features are fixed once training is over (zero-shot CLIP, CoOp, UPL's
ensemble, LoCoOp at inference, ...) the classifier is the frozen image encoder plus one matrix, so the
exported graph is (shapes for a batch of B images of S x S pixels, E-dim features, C classes)::

    image  uint8 [B, S, S, 3]  (RGB, resized + centre-cropped by the caller: core/deploy.preprocess)
      -> x = (image / 255 - mean) / std                [B, 3, S, S]   (CLIP's Normalize, inside the graph)
      -> f = image encoder(x)                            [B, E]
      -> logits = method.logits(f, T)                    [B, C]
         = logit_scale * normalize(f) @ normalize(T).T (+ logit_bias)   (CLIP, Radford et al. 2021, Fig. 3)

with ``T`` the method's text features computed once at export time (``[C, E]``; ``[N, C, E]`` for UPL's
ensemble, whose logits are the mean over its N prompts). The class names, the preprocessing parameters
(size, mean, std, interpolation, resize mode) and the method / backbone are stored as JSON metadata
(ONNX ``metadata_props["vlprompt"]``; TorchScript extra file ``vlprompt.json``).

Image-conditional methods (CoCoOp) export their whole path (image encoder, Meta-Net, text encoder for
every class) with a fixed batch of one image; a method whose ops do not export is refused with the
exporter's reason. ONNX export uses torch's ``torch.export``-based exporter (``dynamo=True``, needs
``onnx`` and ``onnxscript``): the older TorchScript-based ONNX exporter cannot translate the fused
attention of open_clip's ViT in eval mode. Every export is checked after writing: the exported file
(onnxruntime on CPU, or ``torch.jit.load``) and vlprompt must give the same logits on random images.
Files are written atomically (temporary file, fsync, rename) and carry the SHA-256 of their graph and
weights next to the metadata (``vlprompt_sha256``; :func:`~vlprompt.core.deploy.onnx_checksum`,
:func:`torchscript_checksum`), checked whenever they are loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vlprompt.core.deploy import (
    CHECKSUM_KEY,
    CLASSIFIER_FORMAT,
    CLASSIFIER_VERSION,
    OnnxClassifier,
    corrupted,
    exported_format,
    onnx_checksum,
    onnx_metadata_entry,
    parse_metadata,
)
from vlprompt.core.errors import ConfigError, ModelError, VlpromptError
from vlprompt.core.io import atomic_write_bytes, write_error
from vlprompt.methods.base import PromptMethod

FORMATS = ("onnx", "torchscript")
#: Largest |logit difference| accepted between the exported file and vlprompt, relative to the logit scale
#: (measured: ~1e-7 x scale on the tiny towers and the world model, fp32 on CPU).
TOLERANCE = 1e-5
#: ONNX models with more weight bytes than this keep them in a second file, ``NAME.onnx.data`` (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_500_000_000
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ExportedClassifier(nn.Module):
    """``image uint8 [B, S, S, 3] -> logits [B, C]``: normalisation, frozen image encoder, class text features.

    Args:
        method: a method in eval mode on CPU; its text features are computed here once unless it is
            image-conditional (then its whole ``forward_features`` path is part of the graph).
    """

    mean: Tensor  # buffers (register_buffer)
    std: Tensor
    text: Tensor

    def __init__(self, method: PromptMethod) -> None:
        super().__init__()
        self.method = method.eval()
        cfg = method.backbone.preprocess_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", _OPENAI_MEAN), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", _OPENAI_STD), dtype=torch.float32).view(1, 3, 1, 1))
        self.image_conditional = method.capabilities.image_conditional
        if not self.image_conditional:
            with torch.no_grad():
                self.register_buffer("text", method.text_features().detach().float())

    def encode(self, image: Tensor) -> Tensor:
        """Image features ``[B, E]`` (global) of uint8 images ``[B, S, S, 3]``."""
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # torchvision ToTensor
        x = (x - self.mean) / self.std  # Normalize
        if not self.method.capabilities.local_features:
            return self.method.encode_images(x)
        return self.method.backbone.encode_image(x)  # local features only serve training (LoCoOp)

    def forward(self, image: Tensor) -> Tensor:
        feats = self.encode(image)
        if self.image_conditional:
            return self.method.forward_features(feats)
        return self.method.logits(feats, self.text)


# ------------------------------------------------------------------------------------ sources
def load_source(source: str | Path) -> tuple[PromptMethod, dict[str, Any]]:
    """The method of a run folder (its ``prompt.safetensors``) or of a prompt file, on CPU, and what the
    prompt's metadata says about it (dataset, shots, seed)."""
    from vlprompt.engine.checkpoint import load_prompt, read_prompt
    from vlprompt.engine.run import RunPaths

    path = Path(source)
    prompt = RunPaths(path).prompt if path.is_dir() else path
    if path.is_dir() and not prompt.is_file():
        raise VlpromptError(f"run folder '{path}' has no prompt.safetensors (a zero-shot run learns nothing: "
                            "export zero-shot CLIP with `vlprompt export --config CONFIG` instead)")
    _, meta = read_prompt(prompt)
    method = load_prompt(prompt, device="cpu")
    info: dict[str, Any] = {k: meta[k] for k in ("dataset", "shots", "seed", "epochs") if k in meta}
    return method, {"source": str(prompt), **info}


def zeroshot_source(cfg: Any) -> tuple[PromptMethod, dict[str, Any]]:
    """Zero-shot CLIP for ``cfg.data``'s classes with ``cfg.data.templates`` (as ``vlprompt zeroshot``)."""
    from vlprompt.backbones.build import build_backbone
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.data.templates import get_templates
    from vlprompt.methods.zeroshot import zeroshot_classifier

    backbone = build_backbone(cfg.backbone, device="cpu", shared=False)
    splits = load_dataset(cfg.data)
    templates = get_templates(cfg.data.templates, cfg.data.dataset, template=splits.template)
    method = zeroshot_classifier(backbone, splits.classnames, templates)
    return method.eval(), {"source": method.method_name, "dataset": cfg.data.dataset, "templates": templates}


# ------------------------------------------------------------------------------------ export
def classifier_metadata(method: PromptMethod, fmt: str, batch: int | None,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a deployed classifier needs besides the graph (JSON-serialisable)."""
    from vlprompt.core.version import __version__

    bb = method.backbone
    cfg = bb.preprocess_cfg
    size = bb.image_size
    return {
        "format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "vlprompt_version": __version__,
        "export_format": fmt, "method": method.method_name, "image_conditional": method.capabilities.image_conditional,
        "classnames": list(method.classnames), "backbone": bb.info.as_dict(),
        "logit_scale": float(bb.logit_scale), "logit_bias": None if bb.logit_bias is None else float(bb.logit_bias),
        "preprocess": {"size": size, "mean": list(cfg.get("mean", _OPENAI_MEAN)),
                       "std": list(cfg.get("std", _OPENAI_STD)),
                       "interpolation": str(cfg.get("interpolation", "bicubic")),
                       "resize_mode": str(cfg.get("resize_mode", "shortest"))},
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC (RGB)", "shape": [batch or "batch", size, size, 3],
                  "batch": batch},
        "output": {"name": "logits", "shape": [batch or "batch", method.n_cls]},
        **(extra or {}),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation warnings, progress lines and optimiser log messages."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _refuse(method: PromptMethod, fmt: str, exc: Exception) -> ModelError:
    reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    kind = "image-conditional " if method.capabilities.image_conditional else ""
    return ModelError(f"the {kind}method '{method.method_name}' could not be exported to {fmt}: {reason[:300]}. "
                      "Use the prompt file with vlprompt (vlprompt predict / eval) instead.")


def _export_onnx(module: ExportedClassifier, example: Tensor, output: Path, meta: dict[str, Any],
                 dynamic: bool) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise VlpromptError("ONNX export needs the packages onnx and onnxscript (and onnxruntime to check it): "
                            'pip install -e ".[export]" (in the vlprompt clone)') from exc
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    try:
        with _quiet():
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes=shapes, verbose=False)
    except Exception as exc:  # torch.export / translation errors come in many classes
        raise _refuse(module.method, "ONNX", exc) from exc
    assert program is not None  # dynamo=True gives an ONNXProgram
    n_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if n_bytes > EXTERNAL_DATA_BYTES:
        meta["external_data"] = f"{output.name}.data"
    program.model.metadata_props["vlprompt"] = json.dumps(meta)
    program.model.metadata_props["classnames"] = json.dumps(meta["classnames"])
    if n_bytes > EXTERNAL_DATA_BYTES:
        _save_onnx_external(program, output, meta["external_data"])
        return
    data = program.model_proto.SerializeToString()
    # the checksum of everything but the metadata, appended as one more metadata entry (not part of the sum)
    atomic_write_bytes(output, data + onnx_metadata_entry(CHECKSUM_KEY, onnx_checksum(data)))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_onnx_external(program: Any, output: Path, data_name: str) -> None:
    """Write a large model as ``output`` + ``output.parent / data_name`` (its weights), each fsynced and
    renamed into place from a temporary folder next to them; on failure no temporary file is left."""
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
        staged = tmp / output.name
        program.save(str(staged), external_data=True)  # writes staged and tmp / f"{output.name}.data"
        weights = tmp / data_name
        data = staged.read_bytes()
        checksum = onnx_checksum(data, weights)
        _fsync(weights)
        os.replace(weights, output.parent / data_name)
        atomic_write_bytes(output, data + onnx_metadata_entry(CHECKSUM_KEY, checksum))
    except OSError as exc:
        raise write_error(output, exc) from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _export_torchscript(module: ExportedClassifier, example: Tensor, output: Path, meta: dict[str, Any]) -> None:
    try:
        with _quiet():
            traced = torch.jit.trace(module, (example,), check_trace=False)
            extra = {"vlprompt.json": json.dumps(meta)}
            buf = io.BytesIO()
            torch.jit.save(traced, buf, _extra_files=extra)
            # saved again with the checksum of the first archive (equal but for its extra files and id)
            extra[CHECKSUM_KEY] = torchscript_checksum(buf.getvalue())
            buf = io.BytesIO()
            torch.jit.save(traced, buf, _extra_files=extra)
    except Exception as exc:
        raise _refuse(module.method, "TorchScript", exc) from exc
    atomic_write_bytes(output, buf.getvalue())


def _unsummed(name: str) -> bool:
    """Archive entries outside the checksum: extra files (metadata, the checksum) and the per-save id."""
    return "/extra/" in name or name.endswith(".data/serialization_id")


def torchscript_checksum(archive: bytes | str | Path) -> str:
    """SHA-256 (hex) of a TorchScript archive's code, constants and tensors: each entry's name and bytes in
    name order, without the extra files and the per-save id. Reading an entry also checks its CRC-32
    (:class:`zipfile.BadZipFile` when it does not match)."""
    h = hashlib.sha256()
    source = io.BytesIO(archive) if isinstance(archive, bytes) else archive
    with zipfile.ZipFile(source) as z:
        for name in sorted(n for n in z.namelist() if not _unsummed(n)):
            with z.open(name) as f:
                h.update(f"{name}|{z.getinfo(name).file_size}|".encode())
                while chunk := f.read(1 << 24):
                    h.update(chunk)
    return h.hexdigest()


def reference_logits(method: PromptMethod, images: np.ndarray) -> Tensor:
    """vlprompt's own logits ``[B, C]`` for uint8 images ``[B, S, S, 3]`` (ToTensor + Normalize, then the
    evaluation path: encode_images, text features once, logits / forward_features)."""
    from torchvision.transforms import functional as TF

    bb = method.backbone
    cfg = bb.preprocess_cfg
    x = torch.stack([TF.normalize(TF.to_tensor(img), cfg.get("mean", _OPENAI_MEAN), cfg.get("std", _OPENAI_STD))
                     for img in images])
    with torch.no_grad():
        feats = method.encode_images(x)
        if method.capabilities.image_conditional:
            return method.forward_features(feats).float()
        return method.logits(feats, method.text_features()).float()


class TorchScriptClassifier(OnnxClassifier):
    """An exported TorchScript classifier (same interface as :class:`~vlprompt.core.deploy.OnnxClassifier`).

    The archive's checksum (when it has one) and metadata are checked before ``torch.jit.load``, the width
    of the logits on every run. ``torch.jit.load`` reads TorchScript code and tensors, not Python pickles,
    but that code runs: load files you exported or trust.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VlpromptError(f"exported classifier '{path}' does not exist")
        try:
            with zipfile.ZipFile(self.path) as z:
                extra = {n.rsplit("/extra/", 1)[1]: n for n in z.namelist() if "/extra/" in n}
                raw = z.read(extra["vlprompt.json"]) if "vlprompt.json" in extra else None
                expected = z.read(extra[CHECKSUM_KEY]).decode("ascii", "replace") if CHECKSUM_KEY in extra else None
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise VlpromptError(f"'{path}' is not a readable TorchScript file ({exc})") from exc
        self._init_meta(parse_metadata(raw, self.path))
        try:  # also checks each entry's CRC-32, in archives written before checksums existed too
            actual = torchscript_checksum(self.path)
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise corrupted(self.path, f"an entry of the archive does not match its checksum ({exc})") from exc
        if expected is not None and actual != expected:
            raise corrupted(self.path, "its code and weights do not match their checksum (SHA-256 in its metadata)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.module = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:
                raise VlpromptError(f"'{path}' is not a readable TorchScript file ({exc})") from exc

    def _run(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    @staticmethod
    def _reason(exc: Exception) -> str:
        """The last line of a TorchScript error (the first one only says that the interpreter failed)."""
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return lines[-1][:300] if lines else type(exc).__name__


def open_exported(path: str | Path) -> OnnxClassifier:
    """The exported classifier in ``path`` (by suffix: ``.onnx``, or ``.pt`` / ``.ts`` for TorchScript)."""
    fmt = exported_format(path)
    if fmt == "onnx":
        return OnnxClassifier(path)
    if fmt == "torchscript":
        return TorchScriptClassifier(path)
    raise VlpromptError(f"'{path}' is not an exported classifier (.onnx, or .pt / .ts for TorchScript)")


def export_classifier(method: PromptMethod, output: str | Path, *, fmt: str = "onnx",
                      extra: dict[str, Any] | None = None, check_images: int = 3) -> dict[str, Any]:
    """Write ``method`` as one graph to ``output`` and check it against vlprompt's logits.

    Args:
        method: the classifier (see :func:`load_source`, :func:`zeroshot_source`).
        output: the file to write (``.onnx`` for ONNX; ``.pt`` or ``.ts`` for TorchScript).
        fmt: ``"onnx"`` or ``"torchscript"``.
        extra: more metadata (source, dataset, ...).
        check_images: random images compared after export (``max_abs_diff`` in the result).

    Returns:
        The metadata written, plus ``path`` and ``max_abs_diff`` (largest |logit difference|).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    output = Path(output)
    expected = "onnx" if fmt == "onnx" else "torchscript"
    if exported_format(output) != expected:
        suffix = ".onnx" if fmt == "onnx" else ".pt"
        raise ConfigError(f"output file '{output}' must end with {suffix} for --format {fmt} "
                          "(vlprompt predict recognises exported classifiers by their suffix)")
    output.parent.mkdir(parents=True, exist_ok=True)
    method = method.to("cpu").float().eval()
    module = ExportedClassifier(method).eval()
    size = method.backbone.image_size
    batch = 1 if method.capabilities.image_conditional else None  # CoCoOp's graph specialises the batch size
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (batch or 2, size, size, 3), dtype=torch.uint8, generator=gen)
    meta = classifier_metadata(method, fmt, batch, extra)
    if fmt == "onnx":
        _export_onnx(module, example, output, meta, dynamic=batch is None)
    else:
        _export_torchscript(module, example, output, meta)
    images = torch.randint(0, 256, (check_images, size, size, 3), dtype=torch.uint8, generator=gen).numpy()
    got = open_exported(output).logits(images)
    want = reference_logits(method, images).numpy()
    diff = float(np.abs(got - want).max())
    limit = TOLERANCE * max(1.0, float(method.backbone.logit_scale))
    if not np.isfinite(diff) or diff > limit:
        raise ModelError(f"the exported file '{output}' does not reproduce vlprompt's logits (max |difference| "
                         f"{diff:.3g} > {limit:.3g}); it was written but should not be used")
    return {**meta, "path": str(output), "max_abs_diff": diff, "tolerance": limit}


def predict_exported(path: str | Path, images: list[str], *, topk: int = 5,
                     batch_size: int = 32) -> list[dict[str, Any]]:
    """``vlprompt predict`` with an exported classifier: ``[{"image", "top": [[class, probability], ...]}]``."""
    from vlprompt.data.images import load_image
    from vlprompt.tasks.api import collect_images

    return open_exported(path).predict(collect_images(images), topk=topk, batch_size=batch_size, loader=load_image)
