"""High-level operations shared by the Python API and the CLI: zero-shot, evaluate, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.build import build_backbone
from vlprompt.config import ExperimentConfig
from vlprompt.core.errors import DataError, VlpromptError
from vlprompt.core.io import atomic_write_text
from vlprompt.core.results import EvalResult, config_digest, write_result
from vlprompt.core.tables import accuracy_table
from vlprompt.data.images import list_images, load_image
from vlprompt.data.pipeline import load_dataset
from vlprompt.data.templates import get_templates
from vlprompt.data.types import DatasetSplits
from vlprompt.engine.checkpoint import load_prompt
from vlprompt.engine.evaluate import evaluate_items
from vlprompt.engine.run import resolve_device
from vlprompt.engine.trainer import method_context
from vlprompt.methods.base import PromptMethod
from vlprompt.methods.zeroshot import zeroshot_classifier


def _backbone(cfg: ExperimentConfig, device: torch.device) -> Backbone:
    return build_backbone(cfg.backbone, device=device)


def _split(splits: DatasetSplits, split: str) -> list:
    if split not in ("train", "val", "test"):
        raise VlpromptError(f"--split must be train, val or test, got '{split}'")
    items = getattr(splits, split)
    if not items:
        raise DataError(f"dataset '{splits.name}' has no {split} images")
    return items


def _run_eval(method: PromptMethod, splits: DatasetSplits, split: str, cfg: ExperimentConfig,
              device: torch.device, progress: bool) -> dict[str, Any]:
    return evaluate_items(method, _split(splits, split), splits.loader, batch_size=cfg.optim.test_batch_size,
                          num_workers=cfg.data.num_workers, progress=progress, desc=split,
                          disk_dir=cfg.data.feature_cache_dir)


def _save(record: EvalResult, output: Path | None, title: str) -> dict[str, Any]:
    """The record as a dict with its table; written (JSON + ``.md``) when ``output``."""
    record.table = accuracy_table(record.to_dict(), title=title)
    if output is not None:
        atomic_write_text(output.with_suffix(".md"), record.table)
        return write_result(output, record)
    return record.to_dict()


def zeroshot(cfg: ExperimentConfig, *, split: str = "test", output: str | Path | None = None,
             progress: bool = True, backbone: Backbone | None = None) -> dict[str, Any]:
    """Zero-shot CLIP on ``cfg.data`` with the templates ``cfg.data.templates``; returns the report.

    With ``method.name: zeroshot`` and ``method.descriptions`` ``only`` / ``with_templates`` the classifier is
    CuPL's, from the class descriptions (data.descriptions_file). The report holds ``accuracy``,
    ``macro_accuracy``, ``per_class`` and the ``templates`` used;
    with ``output`` it is written as JSON (and a ``.md`` table next to it).
    """
    device = resolve_device(cfg.train.device)
    backbone = backbone or _backbone(cfg, device)
    splits = load_dataset(cfg.data)
    templates = get_templates(cfg.data.templates, cfg.data.dataset, template=splits.template)
    mode = cfg.method.config.descriptions if cfg.method.name == "zeroshot" else "off"
    context = method_context(cfg, splits) if mode != "off" else None
    method = zeroshot_classifier(backbone, splits.classnames, templates, descriptions=mode,
                                 context=context).to(device)
    report = _run_eval(method, splits, split, cfg, device, progress)
    record = EvalResult(method=method.method_name, dataset=cfg.data.dataset, split=split, templates=templates,
                        backbone=backbone.info.record,
                        config_digest=config_digest(cfg.as_dict()), **report)
    return _save(record, Path(output) if output else None,
                 f"zero-shot CLIP on {cfg.data.dataset} ({split}, "
                 + (f"{len(templates)} template(s))" if mode == "off" else f"class descriptions: {mode})"))


def evaluate(cfg: ExperimentConfig, prompt: str | Path, *, split: str = "test", output: str | Path | None = None,
             allow_new_classes: bool = False, progress: bool = True) -> dict[str, Any]:
    """Evaluate a learned prompt file on ``cfg.data``'s ``split``; returns the accuracy report."""
    device = resolve_device(cfg.train.device)
    backbone = _backbone(cfg, device)
    splits = load_dataset(cfg.data)
    method = load_prompt(prompt, backbone, splits.classnames, allow_new_classes=allow_new_classes,
                         context=method_context(cfg, splits)).to(device)
    report = _run_eval(method, splits, split, cfg, device, progress)
    record = EvalResult(method=method.method_name, prompt=str(prompt), dataset=cfg.data.dataset, split=split,
                        backbone=backbone.info.record,
                        config_digest=config_digest(cfg.as_dict()), **report)
    return _save(record, Path(output) if output else None, f"{method.method_name} on {cfg.data.dataset} ({split})")


def collect_images(inputs: list[str]) -> list[str]:
    """Image files from a list of files and/or folders (folders searched recursively).

    In folders, only regular files with an image extension count (a FIFO named ``x.png`` is skipped);
    a named input that is neither a folder nor a regular file is an error.
    """
    files: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(list_images(str(p), recursive=True))
        elif p.is_file():
            files.append(str(p))
        elif p.exists():
            raise DataError(f"image '{item}' is not a regular file (a FIFO, socket or device); give image files "
                            "or folders")
        else:
            raise DataError(f"image or folder '{item}' does not exist")
    if not files:
        raise DataError(f"no images found in {', '.join(inputs)}")
    return files


#: With more class names than this, ``predict`` computes their text features this many classes at a time
#: (bounded memory; the text features of a class do not depend on the other classes) with a progress bar.
CLASS_CHUNK = 1024


def duplicate_names(names: list[str]) -> dict[str, list[int]]:
    """Names listed more than once -> their positions (0-based), in order of first appearance."""
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        seen.setdefault(name, []).append(i)
    return {name: where for name, where in seen.items() if len(where) > 1}


def _text_in_chunks(prompt: str | Path, backbone: Backbone | None, classnames: list[str], dev: torch.device,
                    progress: bool) -> tuple[PromptMethod, Tensor | None]:
    """The method for ``classnames`` and its text features, computed ``CLASS_CHUNK`` classes at a time.

    Returns the method built for the last chunk (its ``logits`` take the concatenated text features) and
    the text features ``[..., n_cls, E]``; an image-conditional method is built for all classes at once
    (text ``None``: its text features depend on the image).
    """
    from tqdm.auto import tqdm

    from vlprompt.engine.checkpoint import check_classnames_match, read_prompt

    check_classnames_match(read_prompt(prompt)[1], classnames, prompt, allow_new_classes=True)
    parts: list[Tensor] = []
    method = None
    with tqdm(total=len(classnames), desc="class texts", unit="class", disable=not progress,
              dynamic_ncols=True, mininterval=1.0) as bar:
        for start in range(0, len(classnames), CLASS_CHUNK):
            names = classnames[start : start + CLASS_CHUNK]
            method = load_prompt(prompt, backbone, names, allow_new_classes=True, device=dev).to(dev).eval()
            backbone = method.backbone
            if method.capabilities.image_conditional:
                bar.close()
                method = load_prompt(prompt, backbone, classnames, allow_new_classes=True, device=dev)
                return method.to(dev).eval(), None
            parts.append(method.text_features())
            bar.update(len(names))
    assert method is not None
    return method, torch.cat(parts, dim=-2)  # the class dimension: [n_cls, E], or [N, n_cls, E] for UPL


@torch.no_grad()
def predict(prompt: str | Path, images: list[str], *, topk: int = 5, classnames: list[str] | None = None,
            device: str = "auto", backbone: Backbone | None = None,
            batch_size: int = 32, device_option: str = "device", progress: bool = True) -> list[dict[str, Any]]:
    """Classify image files with a learned prompt: ``[{"image", "top": [[class, probability], ...]}]``.

    ``classnames`` replaces the prompt's classes (a unified prompt transfers to new classes); more than
    ``CLASS_CHUNK`` of them are encoded in batches with a progress bar (``progress``). ``device_option``
    names the device argument in errors (the CLI's ``--device``). ``prompt`` may also be a classifier
    written by ``vlprompt export`` (``.onnx``, ``.pt`` / ``.ts``).
    """
    from vlprompt.core.deploy import exported_format

    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise VlpromptError(f"topk must be a whole number >= 1, got {topk!r}")
    if classnames is not None and not classnames:
        raise VlpromptError("classnames is empty; give at least one class name (or None for the prompt's own)")
    if classnames is not None:
        dups = duplicate_names(list(classnames))
        if dups:
            name, where = next(iter(dups.items()))
            raise VlpromptError(f"classnames lists {name!r} {len(where)} times (positions "
                                f"{', '.join(map(str, where))}); class names must be distinct")
    if exported_format(prompt):
        if classnames is not None:
            raise VlpromptError(f"'{prompt}' is an exported classifier: its classes are fixed; export the prompt "
                                "again for other classes (--classnames works with prompt files)")
        from vlprompt.tasks.export import predict_exported

        return predict_exported(prompt, images, topk=topk, batch_size=batch_size)
    dev = resolve_device(device, device_option)
    if classnames is not None and len(classnames) > CLASS_CHUNK:
        method, text = _text_in_chunks(prompt, backbone, list(classnames), dev, progress)
    else:
        method = load_prompt(prompt, backbone, classnames, allow_new_classes=classnames is not None, device=dev)
        method = method.to(dev).eval()
        text = None if method.capabilities.image_conditional else method.text_features()
    names = list(classnames) if classnames is not None else list(method.classnames)
    transform = method.backbone.eval_transform()
    files = collect_images(images)
    k = min(topk, len(names))
    results = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch = torch.stack([transform(load_image(f)) for f in chunk]).to(dev)
        feats = method.encode_images(batch)
        logits = method.forward_features(feats) if text is None else method.logits(feats, text)
        probs = logits.float().softmax(dim=-1)
        top_p, top_i = probs.topk(k, dim=-1)
        for f, ps, ids in zip(chunk, top_p.tolist(), top_i.tolist()):
            results.append({"image": f, "top": [[names[i], round(p, 6)] for p, i in zip(ps, ids)]})
    return results
