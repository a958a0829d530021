"""Run folders: layout, single-writer lock, logging, device, precision and seeding."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.core.io import ensure_dir, write_error


@dataclass(frozen=True)
class RunPaths:
    """Where a run puts its files (all under ``root``)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def results_table(self) -> Path:
        return self.root / "results.md"

    @property
    def prompt(self) -> Path:
        return self.root / "prompt.safetensors"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def fewshot(self) -> Path:
        return self.root / "fewshot.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def tracking(self) -> Path:
        """The experiment trackers' files but TensorBoard's (CSV, W&B, MLflow; :mod:`vlprompt.engine.tracking`)."""
        return self.root / "tracking"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


#: File descriptors of the run locks this process holds: closed in every forked child.
_HELD_LOCKS: set[int] = set()


def _close_held_locks_in_child() -> None:
    """After ``fork`` (DataLoader workers, multiprocessing): drop the child's copies of the lock descriptors.

    ``flock`` locks belong to the open file description, which a forked child shares; a worker that
    outlives a SIGKILLed parent by a few seconds would otherwise keep the run locked.
    """
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


class RunLock:
    """Exclusive lock on a run folder so two processes never write the same run.

    Uses ``fcntl.flock`` on ``.lock``, released automatically when the process dies: the descriptor is
    not inherited by programs it starts (close-on-exec) and is closed in forked children (DataLoader
    workers), so only this process holds it.
    """

    def __init__(self, path: Path, *, shared: bool = False, busy: str | None = None, what: str = "run") -> None:
        """``shared``: a shared lock (many holders, none exclusive); ``busy``: the error message when another
        process holds it; ``what``: the lock's owner in other messages."""
        self.path = path
        self.shared = shared
        self.what = what
        self.busy = busy or (f"run folder '{path.parent}' is in use by another vlprompt process; wait for it to "
                             "finish or choose another train.output_dir.")
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        ensure_dir(self.path.parent, f"{self.what} folder")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise write_error(self.path, exc, f"create the {self.what} lock") from exc
        try:
            import fcntl

            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX: no locking
            pass
        except OSError as exc:
            os.close(fd)
            raise VlpromptError(self.busy) from exc
        _HELD_LOCKS.add(fd)
        self._fd = fd
        if not self.shared:
            with contextlib.suppress(OSError):  # the pid is only informative
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            _HELD_LOCKS.discard(self._fd)
            os.close(self._fd)
            self._fd = None


def lock_is_held(path: Path) -> bool:
    """True while a process holds an exclusive :class:`RunLock` on ``path`` (a run training, a sweep running);
    False when nobody does (or the file does not exist): its holder ended, however it ended."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - non-POSIX: no locking, nothing known
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's own shared lock
    return False


def make_logger(path: Path | None, *, console: bool = True, name: str = "vlprompt.run") -> logging.Logger:
    """A logger writing to ``path`` (appending) and to the console (standard output); within
    :func:`console_logging` its console lines do not break progress bars."""
    logger = logging.getLogger(f"{name}.{id(path)}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if path is not None:
        ensure_dir(path.parent)
        try:
            fh = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise write_error(path, exc) from exc
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(fh)
    if console:
        ch = logging.StreamHandler(sys.stdout)
        ch.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(ch)
    return logger


def console_logging(logger: logging.Logger) -> contextlib.AbstractContextManager:
    """For the length of a ``with`` block, ``logger``'s console lines are written through ``tqdm.write`` (above
    the progress bars, not through them; ``tqdm.contrib.logging``); its log file is unaffected. A logger without
    console output (``console=False``, :func:`quiet_logger`) stays as it is."""
    if not any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in logger.handlers):
        return contextlib.nullcontext()
    return logging_redirect_tqdm(loggers=[logger], tqdm_class=tqdm)


def quiet_logger(rank: int) -> logging.Logger:
    """A logger that drops everything: ranks > 0 of a multi-process run leave logging to rank 0."""
    logger = logging.getLogger(f"vlprompt.run.rank{rank}")
    logger.handlers.clear()
    logger.propagate = False
    logger.addHandler(logging.NullHandler())  # no handler at all would print warnings via logging.lastResort
    return logger


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def resolve_device(spec: str, option: str = "option train.device") -> torch.device:
    """``auto`` -> cuda if available else cpu; otherwise ``torch.device(spec)`` (checked); errors name ``option``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{option}: invalid device '{spec}' (use auto, cpu, cuda, cuda:0)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} is '{spec}' but no CUDA GPU is available; use cpu or auto")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "amp"`` (learned parameters stay fp32), else a no-op."""
    if precision != "amp":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
