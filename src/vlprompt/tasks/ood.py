"""``vlprompt ood``: OOD detection with a learned prompt (or zero-shot CLIP) against several OOD sets.

The ID set is the config's dataset (test split); each OOD set is a registered dataset (its test split,
e.g. ``world_ood_novel``) or a folder of images searched recursively (MCM / LoCoOp's iNaturalist,
SUN, Places and Textures folders: ``iNaturalist/images``, ``SUN/images``, ``Places/images``,
``dtd/images``). Writes ``ood_results.json`` (with the backbone, ``train.seed`` and, for a learned prompt,
``data.shots``, so ``vlprompt report`` can average seeds and tell shot counts apart), ``ood_results.md``
(per set and average FPR95 / AUROC / AUPR for each score),
``ood_scores.json`` (every image's scores: ``{"id": {score: [...]}, "ood": {set: {score: [...]}}}``, 6
significant digits) and a score-histogram plot ``ood_scores.png`` (ID vs each OOD set).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlprompt.config import ExperimentConfig
from vlprompt.core.errors import DataError, VlpromptError
from vlprompt.core.io import atomic_write_json, atomic_write_text
from vlprompt.core.metrics import accuracy_report
from vlprompt.core.ood import SCORES, ood_metrics, ood_scores
from vlprompt.core.plots import plot_score_histograms
from vlprompt.core.results import OodResult, config_digest, write_result
from vlprompt.core.tables import markdown_table
from vlprompt.data.images import list_images
from vlprompt.data.pipeline import load_dataset
from vlprompt.data.types import Datum


def resolve_ood_set(spec: str, cfg: ExperimentConfig) -> tuple[str, list[Datum], Any]:
    """``(name, items, loader)`` of an OOD set given as a registered dataset name or a folder.

    A relative folder is looked up in the working directory, then under ``data.root`` (so
    ``iNaturalist`` or ``dtd/images`` work with ``--root /data``); it is named as given (an absolute
    folder by its last component).
    """
    from vlprompt.data.registry import build_dataset, list_datasets

    path = Path(spec)
    if not path.is_dir() and not path.is_absolute() and cfg.data.root and (Path(cfg.data.root) / path).is_dir():
        path = Path(cfg.data.root) / path
    if path.is_dir():
        files = list_images(str(path), recursive=True)
        if not files:
            raise DataError(f"OOD folder '{spec}' holds no images")
        from vlprompt.data.images import load_image

        name = path.name if Path(spec).is_absolute() else spec.rstrip("/\\")
        return name, [Datum(f, -1, "ood") for f in files], load_image
    if spec.lower() in list_datasets():
        splits = build_dataset(spec, cfg.data.root)
        items = splits.test or splits.val or splits.train
        return spec, [Datum(d.path, -1, "ood") for d in items], splits.loader
    raise DataError(f"OOD set '{spec}' is neither a folder nor a known dataset (option --ood-sets)")


def _encode(backbone: Any, items: Sequence[Datum], loader: Any, cfg: ExperimentConfig, need_local: bool,
            progress: bool, desc: str) -> tuple[Tensor, Tensor | None]:
    from vlprompt.backbones.local import GLOBAL_LOCAL, packed_global_local
    from vlprompt.engine.features import encode_items

    if need_local:
        feats, _ = encode_items(functools.partial(packed_global_local, backbone), items, loader,
                                backbone.eval_transform(), batch_size=cfg.optim.test_batch_size,
                                num_workers=cfg.data.num_workers, progress=progress, desc=desc,
                                cache_owner=backbone, cache_kind=GLOBAL_LOCAL)
        return feats[:, 0], feats[:, 1:]
    feats, _ = encode_items(backbone.encode_image, items, loader, backbone.eval_transform(),
                            batch_size=cfg.optim.test_batch_size, num_workers=cfg.data.num_workers,
                            progress=progress, desc=desc, cache_owner=backbone)
    return feats, None


def ood_evaluate(cfg: ExperimentConfig, prompt: str | Path | None, ood_sets: Sequence[str], *,
                 scores: Sequence[str] = ("mcm", "glmcm"), temperature: float = 1.0,
                 output_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """OOD metrics of a prompt (``None``: zero-shot CLIP with ``cfg.data.templates``) per set and score."""
    from vlprompt.backbones.build import build_backbone
    from vlprompt.data.templates import get_templates
    from vlprompt.engine.checkpoint import load_prompt
    from vlprompt.engine.run import resolve_device
    from vlprompt.methods.zeroshot import zeroshot_classifier

    for s in scores:
        if s not in SCORES:
            raise VlpromptError(f"unknown OOD score '{s}' (option --scores); choose from {', '.join(SCORES)}")
    if not ood_sets:
        raise VlpromptError("give at least one OOD set (--ood-sets NAME_OR_FOLDER,...)")
    device = resolve_device(cfg.train.device)
    backbone = build_backbone(cfg.backbone, device=device)
    splits = load_dataset(cfg.data)
    if prompt is None:
        templates = get_templates(cfg.data.templates, cfg.data.dataset, template=splits.template)
        method = zeroshot_classifier(backbone, splits.classnames, templates).to(device)
    else:
        method = load_prompt(prompt, backbone, splits.classnames).to(device)
    if method.capabilities.image_conditional:
        raise VlpromptError(f"OOD scores need fixed class prompts; method '{method.method_name}' is image-conditional")
    if method.capabilities.modifies_encoders:  # OOD features come from the frozen image tower below
        raise VlpromptError(f"OOD scores use the frozen image tower; method '{method.method_name}' learns prompts "
                            "inside the image tower, which OOD evaluation does not support yet")
    with torch.no_grad():
        text = method.text_features().float()
    if text.dim() != 2:  # a prompt ensemble: average its normalised class features
        text = torch.nn.functional.normalize(text.mean(dim=0), dim=-1)
    need_local = "glmcm" in scores
    scale = float(backbone.logit_scale)

    def score_all(g: Tensor, loc: Tensor | None) -> dict[str, Tensor]:
        return {s: ood_scores(g, text, kind=s, temperature=temperature, logit_scale=scale,
                              local_features=loc).cpu() for s in scores}

    id_g, id_loc = _encode(backbone, splits.test, splits.loader, cfg, need_local, progress, "ID")
    acc = accuracy_report((scale * torch.nn.functional.normalize(id_g, dim=-1) @ text.t()).argmax(-1).cpu(),
                          torch.tensor([d.label for d in splits.test]), splits.classnames)
    id_scores = score_all(id_g, id_loc)
    per_set: dict[str, Any] = {}
    ood_raw: dict[str, dict[str, Tensor]] = {}
    for spec in ood_sets:
        name, items, loader = resolve_ood_set(spec, cfg)
        g, loc = _encode(backbone, items, loader, cfg, need_local, progress, name)
        ood_raw[name] = score_all(g, loc)
        per_set[name] = {s: ood_metrics(id_scores[s].numpy(), ood_raw[name][s].numpy()) for s in scores}
    average = {s: {m: sum(per_set[n][s][m] for n in per_set) / len(per_set) for m in ("fpr95", "auroc", "aupr")}
               for s in scores}
    record = OodResult(method=method.method_name, prompt=str(prompt) if prompt else None, id_dataset=cfg.data.dataset,
                       backbone=backbone.info.record, seed=cfg.train.seed,
                       shots=cfg.data.shots if prompt else None,  # a learned prompt's training shots (zero-shot: none)
                       id_accuracy=acc["accuracy"], scores=list(scores), temperature=temperature,
                       per_set=per_set, average=average, config_digest=config_digest(cfg.as_dict()))
    record.table = ood_table(record.to_dict())
    result = record.to_dict()
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_result(out / "ood_results.json", record)
        atomic_write_text(out / "ood_results.md", result["table"])
        atomic_write_json(out / "ood_scores.json", per_image_scores(result, id_scores, ood_raw))
        plot_score_histograms({k: v.numpy() for k, v in id_scores.items()},
                              {n: {k: v.numpy() for k, v in per.items()} for n, per in ood_raw.items()},
                              [out / "ood_scores.png"], id_label=f"ID ({cfg.data.dataset})",
                              title=f"{result['method']} ({cfg.backbone.model}), seed {cfg.train.seed}")
    return result


def per_image_scores(result: dict[str, Any], id_scores: dict[str, Tensor],
                     ood: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
    """Every image's scores (6 significant digits), for histograms made later (``vlprompt report``)."""

    def compact(t: Tensor) -> list[float]:
        return [float(f"{v:.6g}") for v in t.tolist()]

    return {"method": result["method"], "id_dataset": result["id_dataset"], "convention": result["convention"],
            "id": {s: compact(v) for s, v in id_scores.items()},
            "ood": {name: {s: compact(v) for s, v in per.items()} for name, per in ood.items()}}


def ood_table(result: dict[str, Any]) -> str:
    """Rows: OOD sets + average; columns: FPR95 / AUROC / AUPR per score (percent)."""
    headers = ["OOD set"]
    for s in result["scores"]:
        headers += [f"{s} FPR95↓", f"{s} AUROC↑", f"{s} AUPR↑"]
    rows = []
    for name, m in [*result["per_set"].items(), ("average", result["average"])]:
        row = [name]
        for s in result["scores"]:
            row += [m[s]["fpr95"], m[s]["auroc"], m[s]["aupr"]]
        rows.append(row)
    head = (f"OOD detection: {result['method']} on {result['id_dataset']} (ID accuracy "
            f"{result['id_accuracy']:.2f}%), ID = positive\n\n")
    return head + markdown_table(headers, rows)
