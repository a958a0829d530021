"""Evaluate a method on a list of images: logits for every image, accuracy overall and per class."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vlprompt.core.metrics import accuracy_report
from vlprompt.data.types import Datum
from vlprompt.engine.features import encode_items, image_encoding
from vlprompt.methods.base import PromptMethod


@torch.no_grad()
def logits_from_features(method: PromptMethod, features: Tensor, *, batch_size: int = 256) -> Tensor:
    """``[N, n_cls]`` logits from image features; fixed prompts' text features are computed once."""
    method.eval()
    text = None if method.capabilities.image_conditional else method.text_features()
    out = []
    for start in range(0, features.shape[0], batch_size):
        f = features[start : start + batch_size]
        out.append((method.forward_features(f) if text is None else method.logits(f, text)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, method.n_cls)


def evaluate_items(
    method: PromptMethod,
    items: Sequence[Datum],
    loader: Callable[[str], Image.Image],
    *,
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "eval",
    disk_dir: str | None = None,
) -> dict[str, Any]:
    """Accuracy report (see :func:`accuracy_report`) of ``method`` on ``items``.

    Images go through the frozen encoder once per process (features cached on the backbone), then
    the logits are computed on features. A method whose encoders change (:func:`image_encoding`
    "every_step": deep vision prompts, LoRA) encodes every image anew, with no cache. Evaluation never changes
    the caller's RNG state.
    """
    cached = image_encoding(method.capabilities) == "cached"
    feats, labels = encode_items(method.encode_images, items, loader, method.backbone.eval_transform(),
                                 batch_size=batch_size, num_workers=num_workers, progress=progress, desc=desc,
                                 cache_owner=method.backbone if cached else None,
                                 cache_kind=method.capabilities.feature_kind, disk_dir=disk_dir if cached else None)
    logits = logits_from_features(method, feats, batch_size=batch_size)
    return accuracy_report(logits.argmax(dim=-1), labels.cpu(), method.classnames)
