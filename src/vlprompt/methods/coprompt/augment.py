"""CoPrompt's training views: two independent RandAugment views of each image (Dassl's ``randaugment``).

The authors' config (ShuvenduRoy/CoPrompt@a2a6c12 ``configs/trainers/coprompt.yaml`` l.7-14) sets
``DATALOADER.K_TRANSFORMS 2`` and ``INPUT.TRANSFORMS ["randaugment", "normalize"]``: Dassl's data wrapper
(KaiyangZhou/Dassl.pytorch@c61a1b5 ``dassl/data/data_manager.py`` l.251-258) applies the training transform twice,
independently, and the trainer gives the first view to the prompted model and the second to the frozen one
(``trainers/coprompt.py`` l.508-515, l.317-340). The transform (``dassl/data/transforms/transforms.py``
l.206-297) is: resize to ``INPUT.SIZE`` (224 x 224, bicubic: no crop is chosen, l.214-219), Dassl's
``RandAugment(n=2, m=10)`` (l.253-257; ``dassl/config/defaults.py`` l.48-49), to tensor, normalise.

Dassl's ``RandAugment`` (``dassl/data/transforms/randaugment.py`` l.311-326) draws ``n`` operations with
replacement from its 16-operation list (l.221-264) and applies each at the fixed magnitude
``v = m / 30 * (max - min) + min``; the geometric ones flip the sign of ``v`` with probability 1/2. The operations
below follow those lines; the draws come from torch's generator instead of Python's ``random`` / NumPy's, so the
run's seeding (and the data-loader workers' reseeding) makes them reproducible like every other training
augmentation of vlprompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch import Tensor

#: Dassl's defaults INPUT.RANDAUGMENT_N / _M (dassl/config/defaults.py l.48-49).
RANDAUGMENT_N = 2
RANDAUGMENT_M = 10


def _coin() -> bool:
    """``random.random() > 0.5`` (the operations' sign flips)."""
    return bool(torch.rand(()) > 0.5)


def _signed(v: float) -> float:
    return -v if _coin() else v


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs)  # PIL's default resampling (nearest), as Dassl


def _solarize_add(img: Image.Image, v: float) -> Image.Image:
    """randaugment.py l.92-98: add ``v``, clip to 0-255, cast to uint8, solarise at 128."""
    arr = np.clip(np.asarray(img).astype(np.int64) + v, 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(arr), 128)


def _cutout_abs(img: Image.Image, v: float) -> Image.Image:
    """randaugment.py l.137-156: a ``v`` x ``v`` grey square; ``np.random.uniform(w)`` is uniform between 1 and w."""
    w, h = img.size
    x0 = 1.0 + (w - 1.0) * float(torch.rand(()))
    y0 = 1.0 + (h - 1.0) * float(torch.rand(()))
    x0, y0 = int(max(0.0, x0 - v / 2.0)), int(max(0.0, y0 - v / 2.0))
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), (125, 123, 114))
    return out


#: randaugment.py l.245-262: (operation(img, v), min, max), in Dassl's order.
OPERATIONS: list[tuple[Callable[[Image.Image, float], Image.Image], float, float]] = [
    (lambda img, v: ImageOps.autocontrast(img), 0, 1),
    (lambda img, v: ImageOps.equalize(img), 0, 1),
    (lambda img, v: ImageOps.invert(img), 0, 1),
    (lambda img, v: img.rotate(_signed(v)), 0, 30),
    (lambda img, v: ImageOps.posterize(img, int(v)), 4, 8),
    (lambda img, v: ImageOps.solarize(img, v), 0, 256),  # type: ignore[arg-type]  # Pillow compares a float fine
    (_solarize_add, 0, 110),
    (lambda img, v: ImageEnhance.Color(img).enhance(v), 0.1, 1.9),
    (lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.1, 1.9),
    (lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.1, 1.9),
    (lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.1, 1.9),
    (lambda img, v: _affine(img, (1, _signed(v), 0, 0, 1, 0)), 0.0, 0.3),
    (lambda img, v: _affine(img, (1, 0, 0, _signed(v), 1, 0)), 0.0, 0.3),
    (_cutout_abs, 0, 40),
    (lambda img, v: _affine(img, (1, 0, _signed(v), 0, 1, 0)), 0.0, 100),
    (lambda img, v: _affine(img, (1, 0, 0, 0, 1, _signed(v))), 0.0, 100),
]


class RandAugment:
    """Dassl's ``RandAugment(n, m)`` on a PIL image (randaugment.py l.311-326)."""

    def __init__(self, n: int = RANDAUGMENT_N, m: int = RANDAUGMENT_M) -> None:
        if not 0 <= m <= 30:
            raise ValueError(f"RandAugment magnitude must be in 0..30, got {m}")
        self.n, self.m = n, m

    def __call__(self, img: Image.Image) -> Image.Image:
        for k in torch.randint(len(OPERATIONS), (self.n,)).tolist():  # random.choices(list, k=n)
            op, lo, hi = OPERATIONS[k]
            img = op(img, self.m / 30 * (hi - lo) + lo)
        return img


class Views:
    """``transform`` applied ``k`` times, independently: ``[k, 3, H, W]`` per image (Dassl's K_TRANSFORMS)."""

    def __init__(self, transform: Callable[[Any], Tensor], k: int = 2) -> None:
        self.transform, self.k = transform, k

    def __call__(self, img: Any) -> Tensor:
        return torch.stack([self.transform(img) for _ in range(self.k)])


def randaugment_views(image_size: int, mean: Sequence[float], std: Sequence[float], views: int = 2) -> Views:
    """CoPrompt's training transform: ``views`` x (resize to ``image_size`` square, bicubic; RandAugment(2, 10);
    to tensor; normalise with ``mean`` / ``std``), stacked ``[views, 3, H, W]``."""
    from torchvision import transforms as T

    one = T.Compose([T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
                     RandAugment(), T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])
    return Views(one, views)
