"""Frozen-encoder feature caching.

The image encoder is frozen, so when training without random augmentation every epoch sees the
same image features: encode each training image once and run the loop on features. The result
equals encoding every batch (up to float rounding of batched matmuls); it is the default whenever
``data.augment`` is false.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from vlprompt.data.loading import make_loader
from vlprompt.data.types import Datum


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
) -> tuple[Tensor, Tensor]:
    """Features ``encode(images)`` (``[N, E]``, or ``[N, 1 + P, E]`` with local features; fp32) and labels ``[N]``.

    The caller's RNG state is left untouched (a DataLoader draws a seed from it), so training with
    cached features shuffles exactly as training on images does.
    """
    with torch.random.fork_rng(devices=[]):
        return _encode(encode, items, loader, transform, batch_size, num_workers, progress, desc)


@torch.no_grad()
def _encode(encode: Callable[[Tensor], Tensor], items: Sequence[Datum], loader: Callable[[str], Image.Image],
            transform: Any, batch_size: int, num_workers: int, progress: bool, desc: str) -> tuple[Tensor, Tensor]:
    dl = make_loader(items, loader, transform, batch_size=batch_size, train=False, num_workers=num_workers)
    feats, labels = [], []
    for images, y in tqdm(dl, desc=desc, disable=not progress, leave=False):
        out = encode(images).float()
        feats.append(out)
        labels.append(y.to(out.device))
    if not feats:
        raise ValueError("no images to encode")
    return torch.cat(feats), torch.cat(labels)


def feature_loader(features: Tensor, labels: Tensor, *, batch_size: int) -> DataLoader:
    """Shuffled batches of cached features, drawn exactly like the image loader's (same sampler, same RNG)."""
    dataset = TensorDataset(features, labels)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size)
