"""Atomic file writes: a result or checkpoint file is either the old version or the new one, never half.

Write to a temporary file in the same folder, flush + fsync, then ``os.replace`` (atomic on
POSIX and Windows), then fsync the folder so the rename itself survives a power cut. Every
failure to write (full disk, read-only file system, a file where a folder should be, no
permission) is a :class:`~vlprompt.core.errors.VlpromptError` naming the path; earlier files are
left as they were and no temporary file stays behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vlprompt.core.errors import VlpromptError

_HINTS = {
    errno.EROFS: "the file system is read-only; choose an output folder on a writable disk",
    errno.ENOSPC: "the disk is full; free disk space or choose another output folder",
    errno.EDQUOT: "the disk quota is exceeded; free disk space or choose another output folder",
    errno.EFBIG: "the file is larger than allowed here; free disk space or choose another output folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.ENOTDIR: "a file is in the way where a folder is needed; move it or choose another path",
    errno.EEXIST: "a file is in the way where a folder is needed; move it or choose another path",
    errno.EISDIR: "a folder is in the way where a file is needed; move it or choose another path",
    errno.ELOOP: "a symbolic link loop is in the path (links that lead to each other); remove or fix the link, or "
                 "choose another path",
}


def write_error(path: str | Path, exc: OSError, what: str = "write") -> VlpromptError:
    """A user-facing error for a failed write of ``path``: what went wrong and what to do."""
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0, "free disk space or choose another output folder")
    where = f" ('{exc.filename}')" if exc.filename and str(exc.filename) != str(path) else ""
    return VlpromptError(f"could not {what} '{path}': {reason}{where}; earlier files are intact. {hint[0].upper()}"
                         f"{hint[1:]}.")


def ensure_dir(path: str | Path, what: str = "folder") -> Path:
    """Create folder ``path`` (and its parents) or raise :class:`VlpromptError` saying why not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VlpromptError(f"{what} '{path}' is a file, not a folder; move the file or choose another path.")
    if path.is_symlink() and not path.exists():  # a symbolic link loop, or a link to nothing
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise write_error(path, exc, f"create {what}") from exc
        raise VlpromptError(f"{what} '{path}' is a symbolic link to '{os.readlink(path)}', which does not exist; "
                            "fix or remove the link, or choose another path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc, f"create {what}") from exc
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; on failure the previous file is left untouched."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException as exc:  # also on KeyboardInterrupt: never leave the temporary file behind
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not isinstance(exc, OSError):
            raise
        raise write_error(path, exc) from exc
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems cannot fsync folders; the rename is still atomic
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
