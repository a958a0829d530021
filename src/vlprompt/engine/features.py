"""Frozen-encoder feature caching.

The image encoder is frozen, so when training without random augmentation every epoch sees the
same image features: encode each training image once and run the loop on features. The result
equals encoding every batch (up to float rounding of batched matmuls); it is the default whenever
``data.augment`` is false.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from vlprompt.data.loading import make_loader
from vlprompt.data.types import Datum
from vlprompt.engine.distributed import SINGLE, DistContext, GlobalBatchSampler

#: Upper bound on cached images per backbone (ImageNet's 1.3M train images would not all be kept).
MAX_CACHED = 400_000


def _cache_of(owner: Any) -> dict[tuple[str, str], Tensor] | None:
    """The feature cache living on ``owner`` (a backbone): it dies with the backbone, never goes stale."""
    if owner is None:
        return None
    cache = getattr(owner, "_vlprompt_feature_cache", None)
    if cache is None:
        cache = {}
        owner._vlprompt_feature_cache = cache
    return cache


def encode_items(
    encode: Callable[[Tensor], Tensor],
    items: Sequence[Datum],
    loader: Callable[[str], Image.Image],
    transform: Any,
    *,
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "encoding images",
    cache_owner: Any = None,
    cache_kind: str = "global",
    disk_dir: str | Path | None = None,
) -> tuple[Tensor, Tensor]:
    """Features ``encode(images)`` (``[N, E]``, or ``[N, 1 + P, E]`` with local features; fp32) and labels ``[N]``.

    With ``cache_owner`` (the frozen backbone) each image is encoded once per process: features are
    kept on the backbone, keyed by ``cache_kind`` (what ``encode`` returns), the transform and the
    image path, and later calls (other seeds, shot counts, methods, evaluations) reuse them. Only
    deterministic (evaluation) transforms may be cached. With ``disk_dir`` as well, the features of
    the whole list are also stored on disk (safetensors, keyed by backbone name / tag, feature kind,
    transform and the image paths) and reused by later processes.

    The caller's RNG state is left untouched (a DataLoader draws a seed from it), so training with
    cached features shuffles exactly as training on images does.
    """
    if not items:
        raise ValueError("no images to encode")
    labels = torch.tensor([d.label for d in items], dtype=torch.long)
    cache = _cache_of(cache_owner)
    amp = any(torch.is_autocast_enabled(t) for t in ("cpu", "cuda"))  # bf16 features never serve fp32 runs
    kind = f"{cache_kind}|amp={amp}|{transform!r}"
    disk_file = None
    if disk_dir is not None and cache_owner is not None:
        info = getattr(cache_owner, "info", None)
        ident = f"{info.model}|{info.pretrained}" if info is not None else type(cache_owner).__name__
        digest = hashlib.sha256("\n".join([ident, kind, *(d.path for d in items)]).encode()).hexdigest()[:32]
        disk_file = Path(disk_dir) / f"features-{digest}.safetensors"
        if disk_file.is_file():
            from safetensors.torch import load_file

            feats = load_file(str(disk_file))["features"]
            device = getattr(cache_owner, "device", feats.device)
            return feats.to(device), labels.to(device)
    missing = [d for d in items if cache is None or (kind, d.path) not in cache]
    fresh = None
    if missing:
        with torch.random.fork_rng(devices=[]):
            fresh = _encode(encode, missing, loader, transform, batch_size, num_workers, progress, desc)
    if cache is None:
        assert fresh is not None
        return fresh, labels.to(fresh.device)
    if fresh is not None:
        if len(cache) + len(missing) > MAX_CACHED:  # too big to keep: answer without caching
            by_path = dict(zip((d.path for d in missing), fresh))
            feats = torch.stack([by_path[d.path] if d.path in by_path else cache[(kind, d.path)] for d in items])
            return feats, labels.to(feats.device)
        for d, f in zip(missing, fresh):
            cache[(kind, d.path)] = f
    feats = torch.stack([cache[(kind, d.path)] for d in items])
    if disk_file is not None:
        from vlprompt.engine.checkpoint import write_safetensors

        write_safetensors(disk_file, {"features": feats}, {"kind": kind, "n": len(items)})
    return feats, labels.to(feats.device)


@torch.no_grad()
def _encode(encode: Callable[[Tensor], Tensor], items: Sequence[Datum], loader: Callable[[str], Image.Image],
            transform: Any, batch_size: int, num_workers: int, progress: bool, desc: str) -> Tensor:
    dl = make_loader(items, loader, transform, batch_size=batch_size, train=False, num_workers=num_workers)
    feats = [encode(images).float() for images, _ in tqdm(dl, desc=desc, disable=not progress, leave=False)]
    return torch.cat(feats)


def train_batches(n: int, batch_size: int, ctx: DistContext = SINGLE) -> GlobalBatchSampler:
    """The training batch sampler of every loader: ``DataLoader(shuffle=True)``'s order and RNG use, drop_last
    when there is more than one batch; under torchrun each rank gets its slice of every global batch."""
    return GlobalBatchSampler(n, batch_size, drop_last=n >= batch_size, ctx=ctx)


def feature_loader(features: Tensor, labels: Tensor, *, batch_size: int, ctx: DistContext = SINGLE) -> DataLoader:
    """Shuffled batches of cached features ``[N, ...]``, drawn exactly like the image loader's (same sampler,
    same RNG); with ``ctx`` each rank's share of every global batch of ``batch_size``."""
    dataset = TensorDataset(features, labels)
    return DataLoader(dataset, batch_sampler=train_batches(len(dataset), batch_size, ctx))


class _ViewDataset(torch.utils.data.Dataset):
    """Item i -> (one of its K cached augmented views, chosen at random, label)."""

    def __init__(self, views: Tensor, labels: Tensor) -> None:
        self.views, self.labels = views, labels  # [K, N, ...], [N]

    def __len__(self) -> int:
        return self.views.shape[1]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        v = int(torch.randint(self.views.shape[0], ()))  # global RNG: reproducible and resumable
        return self.views[v, i], self.labels[i]


def view_loader(views: Tensor, labels: Tensor, *, batch_size: int, ctx: DistContext = SINGLE) -> DataLoader:
    """Shuffled batches drawing one of K pre-encoded augmented views ``[K, N, ...]`` per image (an approximation
    of on-the-fly augmentation: the same K crops recur instead of fresh ones every epoch)."""
    dataset = _ViewDataset(views, labels)
    return DataLoader(dataset, batch_sampler=train_batches(len(dataset), batch_size, ctx))
