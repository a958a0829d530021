"""UPL's pseudo-labelling (Huang et al., 2022, Sec. 3.2).

1. Zero-shot CLIP, with the dataset's hand-crafted template, gives softmax probabilities
   ``p [N, C]`` for the N unlabeled training images; one file per backbone is cached so several
   runs (and ensembles) reuse them.
2. Several backbones (UPL*) are combined by the mean of their probabilities.
3. For each class c, the images whose predicted class is c are ranked by confidence and the top K
   (16) are kept with pseudo-label c. Each image has one predicted class, so it is used at most once;
   a class with fewer than K candidates keeps all it has (and the report says so). Ties keep the
   dataset order (stable sort).

The output is a few-shot split file (``data.fewshot_file``) that every training command accepts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlprompt.backbones.build import build_backbone
from vlprompt.config import ExperimentConfig
from vlprompt.core.errors import DataError
from vlprompt.core.io import atomic_write_json
from vlprompt.core.metrics import accuracy_report
from vlprompt.data.fewshot import save_fewshot_json
from vlprompt.data.pipeline import load_dataset
from vlprompt.data.templates import get_templates
from vlprompt.data.types import DatasetSplits, Datum
from vlprompt.engine.checkpoint import read_safetensors, write_safetensors
from vlprompt.engine.features import encode_items
from vlprompt.engine.run import resolve_device
from vlprompt.methods.zeroshot import zeroshot_classifier


def select_top_k(probs: Tensor, k: int) -> tuple[list[int], list[int]]:
    """UPL's selection: per predicted class, the ``k`` most confident images.

    Args:
        probs: ``[N, C]`` class probabilities.
        k: images kept per class (a class with fewer candidates keeps them all).

    Returns:
        ``(indices, pseudo_labels)`` sorted by (label, rank); no index appears twice.
    """
    conf, pred = probs.float().max(dim=1)
    indices, labels = [], []
    for c in range(probs.shape[1]):
        cand = torch.nonzero(pred == c).flatten()  # ascending dataset order
        order = torch.sort(conf[cand], descending=True, stable=True).indices[:k]
        chosen = cand[order].tolist()
        indices.extend(chosen)
        labels.extend([c] * len(chosen))
    return indices, labels


def _items_digest(items: Sequence[Datum]) -> str:
    return hashlib.sha256("\n".join(d.path for d in items).encode()).hexdigest()


def zero_shot_probs(cfg: ExperimentConfig, splits: DatasetSplits, model: str, pretrained: str | None,
                    cache_dir: Path | None, progress: bool = True) -> Tensor:
    """Softmax zero-shot probabilities ``[N, C]`` of the train images for one backbone (cached on disk)."""
    items = splits.train
    digest = _items_digest(items)
    templates = get_templates("dataset", cfg.data.dataset, template=splits.template)
    cache = None
    if cache_dir is not None:
        safe = f"{model}_{pretrained}".replace("/", "_").replace(":", "_")
        cache = cache_dir / f"probs_{splits.name}_{safe}.safetensors"
        if cache.exists():
            tensors, meta = read_safetensors(cache, what="pseudo-label cache")
            if meta.get("items") == digest and meta.get("templates") == templates:
                return tensors["probs"]
    device = resolve_device(cfg.train.device)
    spec = dataclasses.replace(cfg.backbone, model=model, pretrained=pretrained)
    backbone = build_backbone(spec, device=device, shared=False)
    zs = zeroshot_classifier(backbone, splits.classnames, templates).to(device)
    feats, _ = encode_items(backbone.encode_image, items, splits.loader, backbone.eval_transform(),
                            batch_size=cfg.optim.test_batch_size,
                            num_workers=cfg.data.num_workers, progress=progress, desc=f"pseudo-labelling ({model})")
    with torch.no_grad():
        probs = zs.logits(feats, zs.text_features()).softmax(dim=-1).cpu()
    if cache is not None:
        write_safetensors(cache, {"probs": probs}, {"items": digest, "templates": templates, "model": model,
                                                    "pretrained": pretrained, "dataset": splits.name})
    return probs


def pseudo_label(cfg: ExperimentConfig, output: str | Path, *, backbones: Sequence[tuple[str, str | None]] = (),
                 top_k: int = 16, cache_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Write UPL pseudo-labels of ``cfg.data``'s train split to ``output`` (a few-shot split file).

    Returns a report: per-class counts, classes short of ``top_k``, and (the dataset's labels are
    used for this only) pseudo-label accuracy overall and per class.
    """
    if top_k < 1:
        raise DataError(f"--topk must be >= 1, got {top_k}")
    splits = load_dataset(cfg.data)
    if not splits.train:
        raise DataError(f"dataset '{cfg.data.dataset}' has no training images to pseudo-label")
    models = list(backbones) or [(cfg.backbone.model, cfg.backbone.pretrained)]
    cache = Path(cache_dir) if cache_dir else Path(output).parent / "pseudo_cache"
    probs = torch.stack([zero_shot_probs(cfg, splits, m, p, cache, progress) for m, p in models]).mean(dim=0)
    indices, labels = select_top_k(probs, top_k)
    chosen = [Datum(splits.train[i].path, c, splits.classnames[c]) for i, c in zip(indices, labels)]
    save_fewshot_json(output, (chosen, []), dataset=cfg.data.dataset, shots=top_k, seed=0,
                      classnames=splits.classnames)
    counts = {name: 0 for name in splits.classnames}
    for c in labels:
        counts[splits.classnames[c]] += 1
    truth = torch.tensor([splits.train[i].label for i in indices], dtype=torch.long)
    acc = accuracy_report(torch.tensor(labels, dtype=torch.long), truth, splits.classnames)
    report = {
        "dataset": cfg.data.dataset, "backbones": [{"model": m, "pretrained": p} for m, p in models],
        "top_k": top_k, "selected": len(chosen), "per_class_count": counts,
        "short_classes": {k: v for k, v in counts.items() if v < top_k},
        "pseudo_label_accuracy": acc["accuracy"], "pseudo_label_accuracy_per_class": acc["per_class"],
        "output": str(output),
    }
    atomic_write_json(Path(output).with_name(Path(output).stem + "_report.json"), report)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"selected {report['selected']} images ({report['top_k']} per class at most) "
             f"with {', '.join(b['model'] for b in report['backbones'])}",
             f"pseudo-label accuracy (true labels used only for this report): {report['pseudo_label_accuracy']:.2f}%"]
    if report["short_classes"]:
        lines.append(f"{len(report['short_classes'])} classes have fewer than {report['top_k']} candidates: "
                     + json.dumps(report["short_classes"]))
    return "\n".join(lines)
