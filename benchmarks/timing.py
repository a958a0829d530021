"""Timing helpers shared by the benchmark scripts: machine load, one timed call, peak CUDA memory."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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
