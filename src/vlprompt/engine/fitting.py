"""The few-shot data a fitted method (linear probe, Tip-Adapter) reads in its ``fit`` step.

:class:`RunFitData` implements :class:`~vlprompt.methods.base.FitData` for a training run: features of
the run's few-shot training and validation images through the method's frozen encoder, by way of the
engine's feature cache (:func:`~vlprompt.engine.features.encode_items`; never for a method that
modifies its encoders), and randomly augmented passes over the training images drawn from a generator
seeded by the run's seed (the same in a resumed run and on every torchrun rank; the caller's RNG state
is left untouched).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vlprompt.data.loading import ImageDataset
from vlprompt.data.pipeline import PreparedData
from vlprompt.engine.features import encode_items, image_encoding
from vlprompt.methods.base import PromptMethod

#: offset of the augmentation seed from the run's seed (the cached-views path uses 7919)
_VIEW_SEED = 7907


class RunFitData:
    """Few-shot features of one run (see the module doc).

    Args:
        method: the method being fitted (its ``encode_images`` and capabilities).
        data: the run's prepared data (few-shot train, val).
        seed: the run's seed (augmented views).
        batch_size / num_workers / disk_dir: encoding options (``optim.test_batch_size``, ...).
        log: the run's logger function.
    """

    def __init__(self, method: PromptMethod, data: PreparedData, *, seed: int, batch_size: int = 100,
                 num_workers: int = 0, disk_dir: str | None = None, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.method, self.data, self.seed = method, data, seed
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.cache = image_encoding(method.capabilities) == "cached"  # never for encoders that change
        self.disk_dir = disk_dir if self.cache else None
        self._log = log

    def features(self, split: str) -> tuple[Tensor, Tensor]:
        """Frozen features ``[N, ...]`` (test transform) and labels ``[N]`` of ``"train"`` or ``"val"``."""
        items = {"train": self.data.train, "val": self.data.val}[split]
        backbone = self.method.backbone
        if not items:
            dim = backbone.embed_dim
            return torch.zeros(0, dim, device=backbone.device), torch.zeros(0, dtype=torch.long, device=backbone.device)
        return encode_items(self.method.encode_images, items, self.data.splits.loader, backbone.eval_transform(),
                            batch_size=self.batch_size, num_workers=self.num_workers, progress=self.progress,
                            desc=f"encoding {split}", cache_owner=backbone if self.cache else None,
                            cache_kind=self.method.capabilities.feature_kind, disk_dir=self.disk_dir)

    @torch.no_grad()
    def augmented_features(self, views: int, crop_scale: tuple[float, float] = (0.08, 1.0)) -> tuple[Tensor, Tensor]:
        """``views`` augmented passes over the training images: ``[views, N, ...]`` and labels ``[N]``."""
        backbone = self.method.backbone
        ds = ImageDataset(self.data.train, self.data.splits.loader, backbone.train_transform(scale=crop_scale))
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + _VIEW_SEED)
            for _ in range(views):
                feats = []
                for start in range(0, len(ds), self.batch_size):
                    batch = torch.stack([ds[i][0] for i in range(start, min(start + self.batch_size, len(ds)))])
                    feats.append(self.method.encode_images(batch).float())
                out.append(torch.cat(feats))
        labels = torch.tensor([d.label for d in self.data.train], device=out[0].device)
        return torch.stack(out), labels

    def log(self, message: str) -> None:
        if self._log is not None:
            self._log(message)


def fit_summary(info: dict[str, Any]) -> str:
    """One log line of a fit step's results."""
    return " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
