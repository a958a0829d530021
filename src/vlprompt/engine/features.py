"""Frozen-encoder feature caching, and the one decision whether images are encoded every step.

The image encoder is frozen, so when training without random augmentation every epoch sees the
same image features: encode each training image once and run the loop on features. The result
equals encoding every batch (up to float rounding of batched matmuls); it is the default whenever
``data.augment`` is false. :func:`image_encoding` says, from a method's capabilities and the data options,
which of the three ways a training run (and an evaluation) gets its image features.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from vlprompt.config import DataConfig
from vlprompt.data.loading import make_loader
from vlprompt.data.types import Datum
from vlprompt.engine.distributed import SINGLE, DistContext, GlobalBatchSampler
from vlprompt.methods.capabilities import Capabilities

#: Upper bound on cached images per backbone (ImageNet's 1.3M train images would not all be kept).
MAX_CACHED = 400_000

logger = logging.getLogger("vlprompt.features")
_CONTENT_HASHES: dict[tuple[str, int, int, int, int], str] = {}
_WARNED: set[str] = set()


#: How image features reach a training step or an evaluation (see :func:`image_encoding`).
ImageEncoding = Literal["every_step", "cached_views", "cached"]


def image_encoding(caps: Capabilities, data: DataConfig | None = None) -> ImageEncoding:
    """Encode images every step or not: the one decision, from a method's capabilities and the data options
    (``data`` None: an evaluation, which never augments).

    * ``"every_step"``: images ``[B, 3, H, W]`` go through the method's encoder at every step (and every
      evaluation batch), never cached: the encoders change with learned tensors (capability
      ``modifies_encoders``), or training augments on the fly (``data.augment``), or caching is off
      (``data.cache_features: false``). Features cached for a method whose encoders change would be stale,
      so such a method is never given a cache, in memory or on disk.
    * ``"cached_views"``: ``data.augment_views`` randomly augmented views of every training image, encoded
      once (opt-in approximation of on-the-fly augmentation).
    * ``"cached"``: every image encoded once through the frozen encoder; the features are kept per backbone
      in memory (and on disk with ``data.feature_cache_dir``) and reused by later epochs, evaluations and runs.
    """
    if caps.modifies_encoders:
        return "every_step"
    if data is None:
        return "cached"
    if data.augment and data.augment_views > 0:
        return "cached_views"
    if data.augment or not data.cache_features:
        return "every_step"
    return "cached"


def channels_last_helps(backbone: Any, images: Tensor) -> bool:
    """Whether a batch ``[B, 3, H, W]`` should reach ``backbone``'s image tower in the channels-last layout: on CPU,
    for convolutional ResNet towers (open_clip's ``ModifiedResNet``, CLIP's RN50 / RN101 / RN50x*), whose oneDNN
    convolutions run faster on it (RN50: about 1.1x the tower on one thread). The features are the same up
    to float rounding; ViT towers (one patch convolution) and CUDA keep the contiguous layout."""
    visual = getattr(getattr(backbone, "model", None), "visual", None)
    return images.dim() == 4 and images.device.type == "cpu" and hasattr(visual, "attnpool")


def encode_batch(method: Any, images: Tensor) -> Tensor:
    """``method.encode_images(images)`` for a training batch encoded every step (``"every_step"``: on-the-fly
    augmentation), in the layout the image tower runs fastest on (:func:`channels_last_helps`). A frozen tower
    records no autograd graph here already (no parameter requires a gradient; ``nn.MultiheadAttention`` then takes
    its fused inference kernel), so grad mode is left as it is: methods that train their encoders still get theirs."""
    if channels_last_helps(method.backbone, images):
        images = images.contiguous(memory_format=torch.channels_last)
    return method.encode_images(images)


def content_key(path: str) -> str:
    """What a cached feature of image ``path`` depends on: the SHA-256 of the file's content.

    The hash is memoised per process by (path, size, mtime, ctime, inode), so a file is read once
    per process unless it changes (replacing or rewriting a file changes its ctime, which no tool can
    set back). A path that is not a file (a generated ``world://`` image, whose key determines it)
    gives ``"-"``.
    """
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return "-"
    key = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    digest = _CONTENT_HASHES.get(key)
    if digest is None:
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()  # (hashlib.file_digest: Python 3.11+)
        except OSError:
            return "-"  # unreadable: the image loader reports it
        _CONTENT_HASHES[key] = digest
    return digest


def _warn_once(path: Path, problem: str) -> None:
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        logger.warning(f"warning: feature cache entry '{path}' is unusable ({problem}); encoding the images again "
                       "and replacing it")


#: Each backbone's in-memory feature cache, kept beside the backbone (never on it: a method's private copy of a
#: backbone, such as CLIP-LoRA's, starts without one) for as long as the backbone lives.
_MEMORY: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, str], Tensor]] = weakref.WeakKeyDictionary()


def _cache_of(owner: Any) -> dict[tuple[str, str, str], Tensor] | None:
    """The in-memory feature cache of ``owner`` (a backbone): it dies with the backbone, never goes stale."""
    if owner is None:
        return None
    return _MEMORY.setdefault(owner, {})


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
    kept on the backbone, keyed by ``cache_kind`` (what ``encode`` returns), the transform, the
    image path and the SHA-256 of the image file's content (:func:`content_key`), and later calls
    (other seeds, shot counts, methods, evaluations) reuse them. Only deterministic (evaluation)
    transforms may be cached. With ``disk_dir`` as well, the features of the whole list are also
    stored on disk (safetensors with a checksum, keyed by backbone name / tag, feature kind,
    transform and each image's path and content hash) and reused by later processes; an entry that
    cannot be read or verified is treated as missing (encoded again, one warning).

    The caller's RNG state is left untouched (a DataLoader draws a seed from it), so training with
    cached features shuffles exactly as training on images does.
    """
    if not items:
        raise ValueError("no images to encode")
    labels = torch.tensor([d.label for d in items], dtype=torch.long)
    cache = _cache_of(cache_owner)
    amp = any(torch.is_autocast_enabled(t) for t in ("cpu", "cuda"))  # bf16 features never serve fp32 runs
    kind = f"{cache_kind}|amp={amp}|{transform!r}"
    keys = [content_key(d.path) for d in items]
    disk_file = None
    if disk_dir is not None and cache_owner is not None:
        from vlprompt.core.io import ensure_dir

        ensure_dir(disk_dir, "feature cache folder (option data.feature_cache_dir)")
        info = getattr(cache_owner, "info", None)
        ident = f"{info.model}|{info.pretrained}" if info is not None else type(cache_owner).__name__
        lines = [ident, kind, *(f"{d.path}\t{k}" for d, k in zip(items, keys))]
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]
        disk_file = Path(disk_dir) / f"features-{digest}.safetensors"
        if disk_file.is_file():
            feats = _read_disk_entry(disk_file, len(items))
            if feats is not None:
                device = getattr(cache_owner, "device", feats.device)
                return feats.to(device), labels.to(device)
    missing = [(d, k) for d, k in zip(items, keys) if cache is None or (kind, d.path, k) not in cache]
    fresh = None
    if missing:
        with torch.random.fork_rng(devices=[]):
            fresh = _encode(encode, [d for d, _ in missing], loader, transform, batch_size, num_workers, progress,
                            desc)
    if cache is None:
        assert fresh is not None
        return fresh, labels.to(fresh.device)
    if fresh is not None:
        if len(cache) + len(missing) > MAX_CACHED:  # too big to keep: answer without caching
            by_key = {(d.path, k): f for (d, k), f in zip(missing, fresh)}
            feats = torch.stack([by_key[(d.path, k)] if (d.path, k) in by_key else cache[(kind, d.path, k)]
                                 for d, k in zip(items, keys)])
            return feats, labels.to(feats.device)
        for (d, k), f in zip(missing, fresh):
            cache[(kind, d.path, k)] = f
    feats = torch.stack([cache[(kind, d.path, k)] for d, k in zip(items, keys)])
    if disk_file is not None:
        from vlprompt.engine.checkpoint import write_safetensors

        write_safetensors(disk_file, {"features": feats}, {"kind": kind, "n": len(items)})
    return feats, labels.to(feats.device)


def _read_disk_entry(path: Path, n: int) -> Tensor | None:
    """The features stored in ``path`` (checksum verified), or None (with one warning) if unusable."""
    from vlprompt.core.errors import CheckpointError
    from vlprompt.engine.checkpoint import read_safetensors

    try:
        tensors, _ = read_safetensors(path, what="feature cache entry")
    except CheckpointError as exc:
        _warn_once(path, str(exc).split("; ")[0])
        return None
    feats = tensors.get("features")
    if feats is None or feats.shape[0] != n or not bool(torch.isfinite(feats).all()):
        _warn_once(path, "wrong content")
        return None
    return feats


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
