"""Helpers shared by the benchmark scripts: machine load, one timed call, peak CUDA memory, ImageNet class names."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def load() -> str:
    """The 1 / 5 / 15-minute load averages, e.g. ``"1.84/1.90/1.93"``."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def timed(step: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``step`` takes (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def peak_gib(step: Callable[[], Any], device: torch.device) -> float | None:
    """Peak CUDA memory (GiB) of one call of ``step``; None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def machine_line() -> str:
    """Torch version, threads, CPUs and load, for the first line a benchmark prints."""
    import platform

    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), load {load()}")


def append_rows(path: Any, rows: list[dict[str, Any]], **fields: Any) -> None:
    """Append result rows (each with ``fields`` and the thread count) to the JSON list in ``path``."""
    import json
    from pathlib import Path

    path = Path(path)
    old = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(old + [dict(r, **fields, threads=torch.get_num_threads()) for r in rows], indent=1))


#: ImageNet's 1000 class names (and ImageNet-A's 200 indices), from azshue/TPT ``data/imagnet_prompts.py``.
CLASSES_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.json"


def imagenet_class_names(n: int) -> list[str]:
    """The first ``n`` of ImageNet's 1000 class names (real names of varying lengths; ``SystemExit`` past 1000)."""
    names = json.loads(CLASSES_FILE.read_text())["imagenet_classes"]
    if n > len(names):
        raise SystemExit(f"--classes: at most {len(names)}")
    return names[:n]


#: DTD's 47 class names, as CoOp's ``datasets/dtd.py`` reads them (the sorted folders of ``dtd/images``).
DTD_FILE = Path(__file__).resolve().parent / "data" / "dtd_classes.json"

#: The class-name sets of ``--names``: real names of varying token lengths (the default), or the uniform
#: "class number {i}" of the earlier tables (every name 3 word tokens), kept only as a labelled extra row.
NAME_SETS = ("imagenet", "dtd", "numbered")


def dtd_class_names() -> list[str]:
    """DTD's 47 class names (``banded`` ... ``zigzagged``)."""
    return list(json.loads(DTD_FILE.read_text())["dtd_classes"])


def class_names(kind: str, n: int) -> list[str]:
    """``n`` class names of the set ``kind`` (:data:`NAME_SETS`): the first ``n`` ImageNet names (open_clip's
    ``IMAGENET_CLASSNAMES``, the same list as ``data/imagenet_classes.json``), DTD's 47 names (all of them, whatever
    ``n``), or ``"class number {i}"``."""
    if kind == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        if n > len(IMAGENET_CLASSNAMES):
            raise SystemExit(f"error: --classes: at most {len(IMAGENET_CLASSNAMES)} ImageNet names")
        return list(IMAGENET_CLASSNAMES[:n])
    if kind == "dtd":
        return dtd_class_names()
    if kind == "numbered":
        return [f"class number {i}" for i in range(n)]
    raise SystemExit(f"error: --names must be among {', '.join(NAME_SETS)}, got {kind!r}")
