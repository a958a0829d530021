"""Evaluate a method on a split: logits for every image, accuracy overall and per class."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlprompt.eval.metrics import accuracy_report
from vlprompt.methods.base import PromptMethod


@torch.no_grad()
def predict_logits(
    method: PromptMethod, loader: DataLoader, device: torch.device, *, progress: bool = False, desc: str = "eval"
) -> tuple[Tensor, Tensor]:
    """``(logits [N, n_cls], labels [N])`` over ``loader``.

    Text features of fixed prompts are computed once (not per batch) unless the method is
    image-conditional (CoCoOp).
    """
    method.eval()
    text = None if method.image_conditional else method.text_features()
    all_logits, all_labels = [], []
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
        feats = method.encode_images(images.to(device, non_blocking=True))
        logits = method.forward_features(feats) if text is None else method.logits(feats, text)
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    if not all_logits:
        return torch.zeros(0, method.n_cls), torch.zeros(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(
    method: PromptMethod, loader: DataLoader, device: torch.device, *, progress: bool = False, desc: str = "eval"
) -> dict[str, Any]:
    """Accuracy report (see :func:`accuracy_report`) of ``method`` on ``loader``."""
    with torch.random.fork_rng(devices=[]):  # evaluating never changes the training run's randomness
        logits, labels = predict_logits(method, loader, device, progress=progress, desc=desc)
    return accuracy_report(logits.argmax(dim=-1), labels, method.classnames)
