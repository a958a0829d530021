"""A small on-disk cache of computed tensors (e.g. NegLabel's mined negative labels), usable from any layer.

An entry is one safetensors file named by a key (the SHA-256 of everything the tensors depend on, see
:func:`cache_key`) holding the tensors, a JSON ``meta`` and the tensors' SHA-256 (verified on every read): the
checksummed files of :mod:`vlprompt.core.tensor_io`, like every tensor file vlprompt writes. An entry that cannot be
read or verified is treated as missing (one warning) and written again. Writes are atomic, so a killed process never
leaves half an entry.

Where: :func:`cache_root` -- the folder an option names, else ``$VLPROMPT_CACHE_DIR``, else
``$XDG_CACHE_HOME/vlprompt`` (``~/.cache/vlprompt``), with one sub-folder per kind of entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from vlprompt.core.errors import CheckpointError
from vlprompt.core.io import ensure_dir
from vlprompt.core.tensor_io import read_safetensors, write_safetensors

#: Environment variable naming vlprompt's cache folder (overrides ``$XDG_CACHE_HOME/vlprompt``).
CACHE_ENV = "VLPROMPT_CACHE_DIR"
logger = logging.getLogger("vlprompt.cache")
_WARNED: set[str] = set()


def cache_root(kind: str, folder: str | Path | None = None) -> Path:
    """The folder of cache entries of ``kind`` (a plain name such as ``"negative_labels"``): ``folder`` when given,
    else ``$VLPROMPT_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/vlprompt/<kind>`` (``~/.cache/vlprompt/<kind>``)."""
    if folder is not None:
        return Path(folder).expanduser()
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base).expanduser() / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vlprompt" / kind


def cache_key(parts: Any) -> str:
    """A stable key (32 hex digits) of ``parts``: any JSON-serialisable value (keys sorted)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_entry(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The tensors and meta of cache entry ``path``, or None when it is absent or unusable (unusable: one warning;
    the caller computes the tensors again and :func:`save_entry` replaces the file)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_safetensors(path, what="cache entry")
    except CheckpointError as exc:  # any damage means: compute again
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            logger.warning(f"warning: cache entry '{path}' is unusable ({str(exc).split('; ')[0]}); computing it again")
        return None


def save_entry(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` (JSON) to cache entry ``path`` atomically (the folder is created)."""
    path = Path(path)
    ensure_dir(path.parent, "cache folder")
    write_safetensors(path, tensors, meta)
    return path
