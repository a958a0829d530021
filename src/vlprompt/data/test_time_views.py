"""Augmented views of one test image for test-time adaptation, as TPT makes them, seeded per image.

azshue/TPT (Shu et al., NeurIPS 2022), ``data/datautils.py``:

* the original view (line 100): resize the short side (bicubic) and centre crop, then normalise. Here it is
  the backbone's test transform (``Backbone.eval_transform``), which is that transform for CLIP models;
* each augmented view (``augmix``, lines 68-84): a random resized crop to the image size (torchvision's
  defaults: scale 0.08-1, ratio 3/4-4/3, bilinear) and a random horizontal flip (``get_preaugment``,
  lines 62-66); with AugMix (the fine-grained sets) three chains of 1-3 random operations each
  (``data/augmix_ops.py`` lines 141-144: autocontrast, equalize, posterize, rotate, solarize, shear x / y,
  translate x / y, severity 1) are mixed with Dirichlet(1, 1, 1) weights, and the mix is blended with the
  crop by m ~ Beta(1, 1): ``m * crop + (1 - m) * sum_i w_i chain_i(crop)`` (after normalisation);
* 63 augmented views + the original: TPT's batch size 64 (``tpt_classification.py`` line 171,
  ``n_views=args.batch_size - 1``; ``scripts/test_tpt.sh`` ``bs=64``); AugMix is on for every set except
  the ImageNet ones (line 172, ``augmix=len(set_id) > 1``): a dataset's registered ``test_time_views``.

The authors draw from the global NumPy / torch generators, so their views depend on the stream's order.
Here the views of test image ``index`` come from a generator seeded by ``(seed, index)``: the same image
always gets the same views, whatever the order (episodic methods then give order-free predictions), and a
rerun is identical. The distributions are those of the authors' code (each draw cited below).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from vlprompt.data.types import Datum

#: TPT's views per test image: 63 augmented + the original (``scripts/test_tpt.sh`` ``bs=64``).
DEFAULT_VIEWS = 64


def _level(rng: np.random.Generator, severity: float) -> float:
    """``sample_level``: uniform(0.1, severity) (augmix_ops.py lines 52-53)."""
    return float(rng.uniform(0.1, severity))


def _int_parameter(level: float, maxval: float) -> int:
    """augmix_ops.py lines 24-35: ``int(level * maxval / 10)``."""
    return int(level * maxval / 10)


def _float_parameter(level: float, maxval: float) -> float:
    """augmix_ops.py lines 38-49: ``level * maxval / 10``."""
    return float(level) * maxval / 10.0


def _signed(rng: np.random.Generator, value: float) -> float:
    """The operations' random sign: negated with probability 1/2 (e.g. augmix_ops.py lines 71-72)."""
    return -value if rng.uniform() > 0.5 else value


def _affine(img: Image.Image, size: int, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def _operation(name: str, img: Image.Image, severity: float, rng: np.random.Generator, size: int) -> Image.Image:
    """One AugMix operation (augmix_ops.py lines 56-114; ``IMAGE_SIZE`` is the backbone's image size)."""
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    if name == "equalize":
        return ImageOps.equalize(img)
    if name == "posterize":
        return ImageOps.posterize(img, 4 - _int_parameter(_level(rng, severity), 4))
    if name == "rotate":
        degrees = _signed(rng, _int_parameter(_level(rng, severity), 30))
        return img.rotate(degrees, resample=Image.Resampling.BILINEAR)
    if name == "solarize":
        return ImageOps.solarize(img, 256 - _int_parameter(_level(rng, severity), 256))
    if name in ("shear_x", "shear_y"):
        level = _signed(rng, _float_parameter(_level(rng, severity), 0.3))
        return _affine(img, size, (1, level, 0, 0, 1, 0) if name == "shear_x" else (1, 0, 0, level, 1, 0))
    if name in ("translate_x", "translate_y"):
        level = _signed(rng, _int_parameter(_level(rng, severity), size / 3))
        return _affine(img, size, (1, 0, level, 0, 1, 0) if name == "translate_x" else (1, 0, 0, 0, 1, level))
    raise ValueError(f"unknown AugMix operation {name!r}")


#: ``augmentations`` of augmix_ops.py lines 141-144 (the list TPT's ``AugMixAugmenter`` uses).
AUGMIX_OPERATIONS = ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
                     "translate_x", "translate_y")


def _resized_crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """``RandomResizedCrop.get_params`` with torchvision's defaults (scale 0.08-1, ratio 3/4-4/3): top, left,
    height, width; 10 tries, then the centre crop clamped to the ratio range."""
    area = width * height
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif in_ratio > 4 / 3:
        h, w = height, int(round(height * (4 / 3)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TestTimeViews:
    """``image (PIL) , index -> views [n_views, 3, S, S]``: the original (``views[0]``) + augmented views.

    Args:
        original: the test transform of the original image (PIL -> ``[3, S, S]``).
        image_size: S, the size of the augmented crops.
        mean, std: normalisation of the backbone.
        n_views: views in all, the original included (TPT: 64).
        augmix: AugMix chains on the crops (fine-grained sets) or crops and flips only (ImageNet sets).
        seed: with the image's index, seeds every draw.
        severity: AugMix severity (TPT: 1, datautils.py line 89).
    """

    def __init__(self, original: Callable[[Image.Image], Tensor], image_size: int, mean: Sequence[float],
                 std: Sequence[float], *, n_views: int = DEFAULT_VIEWS, augmix: bool = True, seed: int = 0,
                 severity: float = 1.0) -> None:
        if n_views < 1:
            raise ValueError(f"test-time views must be at least 1 (the original image), got {n_views}")
        self.original = original
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.n_views = int(n_views)
        self.augmix = bool(augmix)
        self.seed = int(seed)
        self.severity = float(severity)

    def _preprocess(self, img: Image.Image) -> Tensor:
        """ToTensor + Normalize (the authors' ``preprocess``, tpt_classification.py lines 168-170)."""
        arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (arr - self.mean) / self.std

    def _crop(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """``get_preaugment``: random resized crop (bilinear) + horizontal flip with probability 1/2."""
        top, left, h, w = _resized_crop_box(rng, *img.size)
        out = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR,
                         box=(left, top, left + w, top + h))
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.uniform() < 0.5 else out

    def _view(self, img: Image.Image, rng: np.random.Generator) -> Tensor:
        """One augmented view (datautils.py ``augmix``, lines 68-84)."""
        crop = self._crop(img, rng)
        processed = self._preprocess(crop)
        if not self.augmix:
            return processed
        w = rng.dirichlet([1.0, 1.0, 1.0]).astype(np.float32)
        m = np.float32(rng.beta(1.0, 1.0))
        mix = torch.zeros_like(processed)
        for i in range(3):
            aug = crop.copy()
            for _ in range(int(rng.integers(1, 4))):
                aug = _operation(AUGMIX_OPERATIONS[int(rng.integers(len(AUGMIX_OPERATIONS)))], aug,
                                 self.severity, rng, self.image_size)
            mix += float(w[i]) * self._preprocess(aug)
        return float(m) * processed + (1 - float(m)) * mix

    def __call__(self, image: Image.Image, index: int) -> Tensor:
        rng = np.random.default_rng([self.seed, int(index)])
        first = self.original(image)
        views = [first] + [self._view(image, rng) for _ in range(self.n_views - 1)]
        return torch.stack([v.to(first.dtype) for v in views])


class ViewsDataset(Dataset):
    """``(views [V, 3, S, S], label, index)`` of each test item (images read lazily by ``loader``)."""

    def __init__(self, items: Sequence[Datum], loader: Callable[[str], Image.Image], views: TestTimeViews) -> None:
        self.items = list(items)
        self.loader = loader
        self.views = views

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        item = self.items[index]
        return self.views(self.loader(item.path), index), item.label, index


def views_for(backbone: Any, *, n_views: int, augmix: bool, seed: int) -> TestTimeViews:
    """The views of a backbone (its test transform, image size, mean / std)."""
    cfg = getattr(backbone, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    return TestTimeViews(backbone.eval_transform(), backbone.image_size, mean, std, n_views=n_views,
                         augmix=augmix, seed=seed)
