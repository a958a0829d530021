"""Multi-process data-parallel training under ``torchrun`` (one process per GPU, or gloo on CPU).

The learned tensors of a prompt method are tiny and the backbone is frozen, so no DDP wrapper is
needed: every rank holds the whole method and takes a contiguous slice of every *global* batch (the
batch a single process would draw). A method's loss is a set of named terms, each a sum over items
and a count (:class:`~vlprompt.methods.base.LossTerms`); the counts are summed over the ranks first
(:func:`all_reduce_values`), each rank back-propagates ``sum_t S_t,r / C_t`` and the gradients are
summed with one all-reduce (:func:`sum_gradients`; :mod:`vlprompt.engine.loss_step`)::

    grad = sum_r grad(sum_t S_t,r / C_t)            # = gradient of sum_t (sum_r S_t,r) / C_t

which is exactly the single-process gradient of the global batch for means over samples (CoOp,
CoCoOp, UPL), means over a data-dependent subset of all ranks' items (LoCoOp's selected patches)
and per-batch penalties (KgCoOp). Rank 0 alone writes files (log, checkpoints, prompt,
metrics, TensorBoard) and evaluates; :func:`main_only` runs such a step on rank 0 and hands its
result, or its error, to every rank so no process is left waiting.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper is a no-op and training is unchanged.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from vlprompt.core import errors
from vlprompt.core.errors import ConfigError, VlpromptError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size``; ``comm_device`` carries collectives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, logs and evaluates."""
        return self.rank == 0


SINGLE = DistContext()


class RelayedError(VlpromptError):
    """An error raised on rank 0 and re-raised on the other ranks (the CLI prints it once, on rank 0)."""

    relayed = True


# ------------------------------------------------------------------------------------ setup
def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} must be an integer (set by torchrun), got {text!r}") from exc


def env_world() -> tuple[int, int, int]:
    """``(world_size, rank, local_rank)`` from the torchrun environment; ``(1, 0, 0)`` without torchrun."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}")
    return world, rank, local


def init_distributed(device: torch.device, *, timeout_min: float = 120.0) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group when launched by torchrun (else: single process, nothing done).

    Backend ``nccl`` on CUDA (each rank on GPU ``LOCAL_RANK``), ``gloo`` on CPU. The group is
    created once per process and kept for later runs (sweeps); :func:`shutdown` ends it.

    Args:
        device: the resolved ``train.device``; on CUDA its index is replaced by ``LOCAL_RANK``.
        timeout_min: how long a rank waits for the others (rank 0 evaluates while they wait).

    Returns:
        The context and the device this rank trains on.
    """
    world, rank, local = env_world()
    if world == 1:
        return SINGLE, device
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started process LOCAL_RANK={local} but only {torch.cuda.device_count()} "
                              "GPU(s) are visible; use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"multi-process training supports train.device cpu or cuda, got '{device}'")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
        atexit.register(shutdown)
    elif dist.get_backend() != backend or dist.get_world_size() != world:
        raise ConfigError(f"a process group ({dist.get_backend()}, {dist.get_world_size()} ranks) already exists; "
                          f"this run needs {backend} with {world} ranks (train.device '{device.type}')")
    return DistContext(rank, world, local, comm_device=str(device)), device


def shutdown(sync_timeout_s: float = 60.0) -> None:
    """Destroy the process group if one exists (idempotent).

    The ranks first meet at a barrier (gloo: a monitored barrier that gives up after
    ``sync_timeout_s``), so that no rank tears its connections down while another still has a message
    in flight to it: an unsynchronised teardown made gloo abort a process now and then ("terminate
    called without an active exception").
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_world_size() > 1:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=sync_timeout_s))
            else:
                dist.barrier()
    except Exception:  # a peer is gone already: nothing left to synchronise with
        pass
    dist.destroy_process_group()


def check_batch_size(ctx: DistContext, batch_size: int, n_train: int | None = None) -> None:
    """Every rank must get an equal, non-empty slice of every global batch (``n_train``: training images)."""
    if not ctx.enabled:
        return
    if batch_size % ctx.world_size:
        raise ConfigError(f"option optim.batch_size ({batch_size}) must be divisible by the number of processes "
                          f"({ctx.world_size}); it is the global batch, split evenly across processes")
    if n_train is not None and n_train < ctx.world_size:
        raise ConfigError(f"the training split has {n_train} images, fewer than the {ctx.world_size} processes; "
                          "use fewer processes (--nproc_per_node) or more shots")


# ------------------------------------------------------------------------------------ collectives
def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: T) -> T:
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return cast(T, box[0])  # rank 0's obj


def broadcast_int(ctx: DistContext, value: int) -> int:
    """Rank 0's ``value`` on every rank (a 64-bit integer)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=ctx.comm_device)
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_parameters(ctx: DistContext, params: Sequence[Tensor]) -> None:
    """Copy rank 0's values of ``params`` (in place) to every rank, as DDP does at start."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def _relay_error(exc: Exception) -> tuple[str, str]:
    """(error class name, message) of an exception, to re-raise on the other ranks."""
    return type(exc).__name__, errors.user_message(exc)


def _raise_relayed(kind: str, message: str) -> None:
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, VlpromptError):
        relayed = type(kind, (cls, RelayedError), {})  # same user-facing class, marked as a copy
        raise relayed(message)
    raise RelayedError(f"rank 0 failed: {kind}: {message}")


def main_only(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result (pickled) or raises its error.

    The result broadcast doubles as a barrier: the other ranks wait here while rank 0 works.
    """
    if not ctx.enabled:
        return fn()
    outcome: tuple[str, Any]
    if ctx.is_main:
        try:
            result = fn()
        except Exception as exc:
            broadcast_object(ctx, ("error", _relay_error(exc)))
            raise
        outcome = broadcast_object(ctx, ("ok", result))
    else:
        outcome = broadcast_object(ctx, None)  # type: ignore[assignment]  # a placeholder: rank 0 sends the outcome
    status, value = outcome
    if status == "error":
        _raise_relayed(*value)
    return value


def main_first(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then (if it succeeded) on the other ranks: rank 0 writes, the others read."""
    if not ctx.enabled:
        return fn()
    result: T | None = None

    def first() -> None:
        nonlocal result
        result = fn()

    main_only(ctx, first)
    return result if ctx.is_main else fn()  # type: ignore[return-value]


def all_reduce_values(ctx: DistContext, values: Sequence[float]) -> list[float]:
    """Sum of ``values`` over all ranks (float64; unchanged in a single process)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.comm_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def sum_gradients(ctx: DistContext, grads: Sequence[Tensor | None], like: Sequence[Tensor],
                  stats: Sequence[float]) -> tuple[list[Tensor | None], list[float]]:
    """Sum gradients (``like[i]`` gives the shape, device and dtype of ``grads[i]``) and ``stats`` over all
    ranks in one float64 all-reduce. A gradient no rank has stays None. Unchanged in a single process."""
    if not ctx.enabled:
        return list(grads), [float(v) for v in stats]
    parts = [(g if g is not None else torch.zeros_like(p)).detach().reshape(-1).to(ctx.comm_device, torch.float64)
             for g, p in zip(grads, like)]
    flags = [float(g is not None) for g in grads]
    flat = torch.cat([*parts, torch.tensor([*flags, *stats], dtype=torch.float64, device=ctx.comm_device)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out: list[Tensor | None] = []
    offset, n_stats = 0, len(stats)
    tail = flat[sum(p.numel() for p in like):]
    for i, p in enumerate(like):
        size = p.numel()
        grad = flat[offset:offset + size].view_as(p).to(device=p.device, dtype=p.dtype)
        out.append(grad if float(tail[i]) > 0 else None)
        offset += size
    return out, tail[len(like):len(like) + n_stats].tolist()


def reseed_worker_rng(ctx: DistContext, seed: int, epoch: int) -> None:
    """On ranks > 0, seed torch's RNG from ``(seed, rank, epoch)`` (random augmentation differs per rank).

    Rank 0 keeps the single-process RNG stream (saved in checkpoints); the other ranks' streams are a
    function of the epoch, so a resumed multi-process run draws the same augmentations.
    """
    if not ctx.enabled or ctx.is_main:
        return
    digest = hashlib.sha256(f"vlprompt/{seed}/{ctx.rank}/{epoch}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") % (2**63))


# ------------------------------------------------------------------------------------ sampling
def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous slice of a global batch (``len // world_size`` items when it divides)."""
    n = len(indices)
    return list(indices[rank * n // world_size:(rank + 1) * n // world_size])


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffled batches of ``range(n)``, identical to ``DataLoader(shuffle=True, batch_size, drop_last)``.

    Each epoch draws one seed from torch's global RNG exactly like ``RandomSampler`` does (so a
    single process shuffles as before and resumes exactly), rank 0's seed is shared with every rank,
    and each rank yields its :func:`shard` of every global batch of ``batch_size`` indices.
    """

    def __init__(self, n: int, batch_size: int, *, drop_last: bool, ctx: DistContext = SINGLE) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size, self.drop_last, self.ctx = n, batch_size, drop_last, ctx

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def global_batches(self) -> Iterator[list[int]]:
        """The global batches of one epoch (same on every rank); consumes one draw of the global RNG."""
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        seed = broadcast_int(self.ctx, seed)
        generator = torch.Generator()
        generator.manual_seed(seed)
        order = torch.randperm(self.n, generator=generator).tolist()
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield shard(batch, self.ctx.rank, self.ctx.world_size)
