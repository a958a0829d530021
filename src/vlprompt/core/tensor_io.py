"""Checksummed safetensors files, the low level of every tensor file vlprompt writes (prompt files, checkpoints,
feature and label caches, test-time states, the disk cache of :mod:`vlprompt.core.tensor_cache`).

The header holds the caller's JSON metadata under ``vlprompt`` and ``vlprompt_sha256``, the SHA-256 of the tensors
(:func:`tensor_checksum`: name, dtype, shape and raw bytes of each tensor, in name order); reading recomputes it, so a
flipped byte inside the tensor data (which safetensors itself cannot notice) is a :class:`CheckpointError`. Files
written before checksums existed (no ``vlprompt_sha256``) are still read. Writes are atomic
(:func:`vlprompt.core.io.atomic_write_bytes`); nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from vlprompt.core.errors import CheckpointError
from vlprompt.core.io import atomic_write_bytes

CHECKSUM_KEY = "vlprompt_sha256"


def tensor_checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 (hex) of ``tensors``: each tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Atomically write ``tensors`` with ``meta`` (JSON) in the header under key ``vlprompt`` and the
    tensors' checksum under ``vlprompt_sha256``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = st_save(tensors, metadata={"vlprompt": json.dumps(meta), CHECKSUM_KEY: tensor_checksum(tensors)})
    atomic_write_bytes(path, data)


def read_safetensors(path: str | Path, *, what: str = "file") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read tensors and the ``vlprompt`` JSON metadata, verifying the checksum; any corruption ->
    :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # safetensors raises SafetensorError / OSError on truncation
        raise CheckpointError(
            f"{what} '{path}' is not a readable safetensors file ({exc}); it may be truncated or corrupted."
        ) from exc
    try:
        meta = json.loads(header.get("vlprompt", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{what} '{path}' has corrupted metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{what} '{path}' has corrupted metadata: not a JSON object")
    expected = header.get(CHECKSUM_KEY)
    if expected is not None and tensor_checksum(tensors) != expected:
        raise CheckpointError(f"{what} '{path}' is corrupted: its tensors do not match their checksum "
                              f"(SHA-256 in the file's metadata); the file was damaged after it was written.")
    return tensors, meta
