"""Torch datasets and loaders over :class:`~vlprompt.data.types.Datum` lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vlprompt.data.types import Datum


class ImageDataset(Dataset):
    """``(image tensor [3, H, W], label)`` for each datum; images loaded lazily through ``loader``."""

    def __init__(self, items: Sequence[Datum], loader: Callable[[str], Image.Image], transform: Any) -> None:
        self.items = list(items)
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        return self.transform(self.loader(item.path)), item.label


def make_loader(
    items: Sequence[Datum],
    loader: Callable[[str], Image.Image],
    transform: Any,
    *,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader like Dassl's: shuffled and ``drop_last`` (when there is more than a batch) for training."""
    dataset = ImageDataset(items, loader, transform)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
