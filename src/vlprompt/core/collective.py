"""The one collective that code below the engine may need: a float64 sum over torchrun ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """``values`` summed over every rank of the active process group (unchanged without one).

    For losses whose normaliser spans the global batch (LoCoOp's mean over the selected patches of all
    ranks' images). Every rank must call it at the same point of the step.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]
