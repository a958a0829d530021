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
