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

import dataclasses
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
from vlprompt.core.ood import SCORES, ood_metrics
from vlprompt.core.plots import plot_score_histograms
from vlprompt.core.results import OodResult, config_digest, write_result
from vlprompt.core.tables import markdown_table
from vlprompt.data.images import list_images
from vlprompt.data.pipeline import load_dataset
from vlprompt.data.types import Datum

#: Where a set given as ``NAME:near`` / ``NAME:far`` says its group itself (``--ood-sets``).
_GROUP_SUFFIXES = {":near": "near", ":far": "far"}


def split_ood_spec(spec: str) -> tuple[str, str | None]:
    """``("NAME", group)`` of an ``--ood-sets`` entry ``NAME`` or ``NAME:near`` / ``NAME:far`` (group None: the
    dataset's declared ``ood_group``, or none for a folder)."""
    for suffix, group in _GROUP_SUFFIXES.items():
        if spec.lower().endswith(suffix):
            return spec[: -len(suffix)], group
    return spec, None


def resolve_ood_set(spec: str, cfg: ExperimentConfig) -> tuple[str, list[Datum], Any]:
    """``(name, items, loader)`` of an OOD set given as a registered dataset name or a folder.

    A relative folder is looked up in the working directory, then under ``data.root`` (so
    ``iNaturalist`` or ``dtd/images`` work with ``--root /data``); it is named as given (an absolute
    folder by its last component). A ``:near`` / ``:far`` suffix (:func:`split_ood_spec`) is ignored here.
    """
    from vlprompt.data.registry import build_dataset

    spec = split_ood_spec(spec)[0]
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
    known = registered_ood_set(spec)
    if known is not None:
        splits = build_dataset(known, cfg.data.root)
        items = splits.test or splits.val or splits.train
        return spec, [Datum(d.path, -1, "ood") for d in items], splits.loader
    raise DataError(f"OOD set '{spec}' is neither a folder nor a known dataset (option --ood-sets)")


def ood_group(spec: str) -> str | None:
    """The group (``"near"`` / ``"far"``) of an ``--ood-sets`` entry: its ``:near`` / ``:far`` suffix, else the
    registered dataset's ``ood_group`` (:class:`~vlprompt.data.registry.DatasetInfo`) of the entry as given or as
    the papers spell it (a folder ``iNaturalist``, ``dtd/images``, ``NINCO``: :func:`~vlprompt.data.ood_sets.
    canonical_ood_set`), else None."""
    from vlprompt.data.registry import get_dataset_info

    name, group = split_ood_spec(spec)
    if group is None:
        key = registered_ood_set(name, trailing=True)
        return None if key is None else get_dataset_info(key).ood_group
    return group


def registered_ood_set(name: str, *, trailing: bool = False) -> str | None:
    """The registry name of the OOD set ``name``: as registered, else as the papers spell it
    (:func:`~vlprompt.data.ood_sets.canonical_ood_set`: ``iNaturalist``, ``dtd/images``, ``SSB-hard``), with
    ``trailing`` also the last (up to 3) components of a folder's path (``.../iNaturalist/images``); None when none
    is registered."""
    from vlprompt.data.ood_sets import canonical_ood_set
    from vlprompt.data.registry import list_datasets

    keys = [name, canonical_ood_set(name)]
    if trailing:
        parts = Path(name).parts
        keys += [canonical_ood_set("/".join(parts[-k:])) for k in range(1, min(len(parts), 3) + 1)]
    registered = list_datasets()
    return next((key for key in keys if key.lower() in registered), None)


def _encode(method: Any, items: Sequence[Datum], loader: Any, cfg: ExperimentConfig, need_local: bool,
            progress: bool, desc: str) -> Tensor:
    """What ``method.ood_features`` gives for every item (``[N, E]``, or ``[N, 1 + P, E]`` with local features),
    cached per backbone when the method uses the frozen tower's default features."""
    from vlprompt.backbones.local import GLOBAL_LOCAL
    from vlprompt.engine.features import encode_items
    from vlprompt.methods.base import PromptMethod

    frozen = (type(method).ood_features is PromptMethod.ood_features
              and not method.capabilities.modifies_encoders)
    feats, _ = encode_items(functools.partial(method.ood_features, local=need_local), items, loader,
                            method.backbone.eval_transform(), batch_size=cfg.optim.test_batch_size,
                            num_workers=cfg.data.num_workers, progress=progress, desc=desc,
                            cache_owner=method.backbone if frozen else None,
                            cache_kind=GLOBAL_LOCAL if need_local else "global")
    return feats


def default_scores(method: Any) -> tuple[str, ...]:
    """The scores ``vlprompt ood`` computes when ``--scores`` is not given: the method's own
    (capability ``ood_scores``), then MCM, then GL-MCM where the method's features have patches."""
    local_ok = not method.capabilities.modifies_encoders and method.backbone.local_features_unsupported() is None
    return (*method.capabilities.ood_scores, "mcm", *(("glmcm",) if local_ok else ()))


def build_ood_method(cfg: ExperimentConfig, backbone: Any, splits: Any, prompt: str | Path | None, *,
                     progress: bool = True) -> Any:
    """The method scored by :func:`ood_evaluate`: the prompt file's (``prompt``), else the config's method when it is
    training-free (NegLabel, CSP, zero-shot), else zero-shot CLIP with the config's templates (what ``vlprompt ood``
    without a prompt always did)."""
    from vlprompt.engine.checkpoint import load_prompt
    from vlprompt.engine.trainer import method_context
    from vlprompt.methods.registry import build_method
    from vlprompt.methods.zeroshot import zeroshot_classifier

    caps = cfg.method.capabilities
    if caps.adapts_at_test_time:
        raise VlpromptError(f"method '{cfg.method.name}' adapts at test time: OOD detection scores fixed classifiers "
                            "(none of the test-time methods' authors report OOD detection; their 'OOD' benchmark is "
                            "the ImageNet variants, run by `vlprompt protocol tta`)")
    context = method_context(cfg, splits)
    if prompt is not None:
        return load_prompt(prompt, backbone, splits.classnames, context=context)
    if not caps.trainable and cfg.method.name != "zeroshot":
        config = cfg.method.config
        if not progress and "progress" in {f.name for f in dataclasses.fields(config)}:
            config = dataclasses.replace(config, progress=False)  # --no-progress silences its own bars too
        return build_method(cfg.method.name, backbone, splits.classnames, config=config, context=context)
    return zeroshot_classifier(backbone, splits.classnames, list(context.templates))


def ood_evaluate(cfg: ExperimentConfig, prompt: str | Path | None, ood_sets: Sequence[str], *,
                 scores: Sequence[str] | None = None, temperature: float = 1.0,
                 output_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """OOD metrics per set, per group (near / far) and on average, for each score.

    The method is :func:`build_ood_method`'s (a prompt file, a training-free method of the config, or zero-shot
    CLIP); its features come from its :meth:`~vlprompt.methods.base.PromptMethod.ood_features` and its scores from
    :meth:`~vlprompt.methods.base.PromptMethod.ood_score` (``scores`` None: :func:`default_scores`). ``ood_sets``
    entries are dataset names or folders, optionally ``NAME:near`` / ``NAME:far`` (:func:`ood_group`).
    """
    from vlprompt.backbones.build import build_backbone
    from vlprompt.engine.run import resolve_device

    if not ood_sets:
        raise VlpromptError("give at least one OOD set (--ood-sets NAME_OR_FOLDER,...)")
    bare = [split_ood_spec(spec)[0].rstrip("/\\").lower() for spec in ood_sets]
    twice = sorted({b for b in bare if bare.count(b) > 1})
    if twice:
        raise VlpromptError(f"OOD set(s) {', '.join(twice)} given twice (option --ood-sets)")
    device = resolve_device(cfg.train.device)
    backbone = build_backbone(cfg.backbone, device=device)
    splits = load_dataset(cfg.data)
    method = build_ood_method(cfg, backbone, splits, prompt, progress=progress).to(device).eval()
    if method.capabilities.image_conditional:
        raise VlpromptError(f"OOD scores need fixed class prompts; method '{method.method_name}' is image-conditional")
    own = method.capabilities.ood_scores
    scores = tuple(scores) if scores else default_scores(method)
    for s in scores:
        if s not in SCORES and s not in own:
            raise VlpromptError(f"unknown OOD score '{s}' for method '{method.method_name}' (option --scores); "
                                f"choose from {', '.join((*own, *SCORES))}")
    need_local = any(s == "glmcm" or s in method.capabilities.ood_local_scores for s in scores)
    if need_local and method.capabilities.modifies_encoders:
        raise VlpromptError(f"method '{method.method_name}' prompts the image tower, which gives no patch features for "
                            f"the local scores ({', '.join(s for s in scores if s == 'glmcm')}); option --scores: "
                            "choose global scores (mcm, maxlogit, energy)")

    def score_all(feats: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return {s: method.ood_score(feats.to(device), s, temperature=temperature).float().cpu() for s in scores}

    with torch.no_grad():
        id_feats = _encode(method, splits.test, splits.loader, cfg, need_local, progress, "ID")
        logits = method.ood_logits(id_feats.to(device))
    acc = accuracy_report(logits.argmax(-1).cpu(), torch.tensor([d.label for d in splits.test]), splits.classnames)
    id_scores = score_all(id_feats)
    per_set: dict[str, Any] = {}
    groups: dict[str, str | None] = {}
    ood_raw: dict[str, dict[str, Tensor]] = {}
    for spec in ood_sets:
        name, items, loader = resolve_ood_set(spec, cfg)
        name = _unique_name(name, split_ood_spec(spec)[0], per_set)
        ood_raw[name] = score_all(_encode(method, items, loader, cfg, need_local, progress, name))
        per_set[name] = {s: ood_metrics(id_scores[s].numpy(), ood_raw[name][s].numpy()) for s in scores}
        groups[name] = ood_group(spec)
    average = _mean_over(per_set, list(per_set), scores)
    group_average = {g: _mean_over(per_set, [n for n in per_set if groups[n] == g], scores)
                     for g in ("near", "far") if any(v == g for v in groups.values())}
    record = OodResult(method=method.method_name, prompt=str(prompt) if prompt else None, id_dataset=cfg.data.dataset,
                       backbone=backbone.info.record, seed=cfg.train.seed,
                       shots=cfg.data.shots if prompt else None,  # a learned prompt's training shots (zero-shot: none)
                       id_accuracy=acc["accuracy"], scores=list(scores), temperature=temperature,
                       per_set=per_set, average=average, config_digest=config_digest(cfg.as_dict()),
                       groups=groups, group_average=group_average, method_record=method.ood_record())
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


def _unique_name(name: str, spec: str, taken: dict[str, Any]) -> str:
    """``name``, or, when another set already has it (two absolute folders ``.../iNaturalist/images`` and
    ``.../SUN/images``), as many trailing components of ``spec`` as make it unique (``VlpromptError`` if none
    does)."""
    parts = Path(spec).parts
    for k in range(2, len(parts) + 1):
        if name not in taken:
            return name
        name = "/".join(parts[-k:])
    if name in taken:
        raise VlpromptError(f"OOD set '{spec}' is given twice (option --ood-sets)")
    return name


def _mean_over(per_set: dict[str, Any], names: list[str], scores: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{score: {metric: mean over names}}``."""
    return {s: {m: sum(per_set[n][s][m] for n in names) / len(names) for m in ("fpr95", "auroc", "aupr")}
            for s in scores}


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
    groups = result.get("groups") or {}
    named = [(f"{n} ({groups[n]})" if groups.get(n) else n, m) for n, m in result["per_set"].items()]
    grouped = [(f"{g}-OOD average", m) for g, m in (result.get("group_average") or {}).items()]
    for name, m in [*named, *grouped, ("average", result["average"])]:
        row = [name]
        for s in result["scores"]:
            row += [m[s]["fpr95"], m[s]["auroc"], m[s]["aupr"]]
        rows.append(row)
    head = (f"OOD detection: {result['method']} on {result['id_dataset']} (ID accuracy "
            f"{result['id_accuracy']:.2f}%), ID = positive\n\n")
    return head + markdown_table(headers, rows)
