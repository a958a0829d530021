"""Tiny image files for the tiny on-disk trees datasets register (``register_dataset(..., tiny_tree=...)``).

Each image is a few pixels of one colour per class plus a little noise, so that a tiny model can tell
the classes apart; the tests build their own trees with the same helpers (``tests/data_trees.py``).
:data:`TINY_CLASSES` and :data:`TINY_COUNTS` are what the built-in datasets' tree builders write.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),
    (40, 180, 60),
    (40, 80, 220),
    (230, 200, 30),
    (160, 50, 200),
    (30, 200, 200),
    (240, 130, 30),
    (110, 110, 110),
)
TINY_CLASSES: tuple[str, ...] = ("class_a", "class_b")
"""The classes of a built-in dataset's tiny tree (folder names; class names with ``_`` -> space)."""
TINY_COUNTS: dict[str, int] = {"train": 3, "val": 2, "test": 1}
"""Images per class and split in a built-in dataset's tiny tree."""


def class_color(index: int) -> tuple[int, int, int]:
    """A distinct RGB colour for class ``index``."""
    if index < len(PALETTE):
        return PALETTE[index]
    rng = np.random.default_rng(index)
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def write_image(path: str | Path, color: Sequence[int], *, size: int = 8, seed: int = 0) -> Path:
    """Write a ``size`` x ``size`` image of ``color`` plus noise (+-12); format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    pixels = np.clip(np.asarray(color, dtype=np.int64)[None, None, :] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="RGB").save(path)
    return path


def write_class_images(
    folder: str | Path, class_index: int, count: int, *, prefix: str = "img", ext: str = ".jpg", size: int = 8
) -> list[Path]:
    """Write ``count`` images of class ``class_index``'s colour into ``folder``: ``<prefix>_<i:03d><ext>``."""
    return [
        write_image(
            Path(folder) / f"{prefix}_{i:03d}{ext}",
            class_color(class_index),
            size=size,
            seed=1000 * class_index + i,
        )
        for i in range(count)
    ]
