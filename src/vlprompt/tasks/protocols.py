"""Evaluation protocols of CoOp / CoCoOp, over several seeds, for any method.

* **base-to-new** (CoCoOp, Sec. 4.1): classes sorted by label, the first ceil(n/2) are *base*.
  Train on base classes only; accuracy on base test images with base names, on new test images
  with new names; harmonic mean ``H = 2 * base * new / (base + new)``. A ``transductive`` method
  (capability; PromptKD) is trained once on the unlabeled images of all classes and that prompt is
  tested on base and on new.
* **domain generalisation** (CoOp Sec. 4.3 / CoCoOp Sec. 4.3): train on a source dataset (ImageNet),
  evaluate on targets with the same label space in other domains (ImageNet-V2 / -Sketch / -A / -R).
  For the 200-class A and R subsets the classifier is built from those 200 class names, which equals
  restricting the 1000-way logits to them (each class's text feature depends on its name only).
* **cross-dataset transfer** (CoCoOp Sec. 4.2): train on one dataset, evaluate on others with their own
  class names.

Zero-shot CLIP runs through the same protocols (nothing to train; one seed suffices). Each seed's
training run is an ordinary run folder under ``out_dir``; finished runs are reused, so a protocol
that was stopped continues where it stopped.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.config import ExperimentConfig, apply_overrides, config_from_dict
from vlprompt.core.errors import ConfigError
from vlprompt.core.io import atomic_write_text
from vlprompt.core.metrics import harmonic_mean, mean_std
from vlprompt.core.results import BackboneRecord, ProtocolResult, config_digest, write_result
from vlprompt.core.tables import markdown_table


def _with(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    return config_from_dict(apply_overrides(cfg.as_dict(), overrides))


def _q(value: Any) -> str:
    return f"{value}" if not isinstance(value, str) else f'"{value}"'


def _accuracy(cfg: ExperimentConfig, prompt: Path | None, progress: bool) -> tuple[float, BackboneRecord]:
    """Test accuracy of a learned prompt (or of zero-shot CLIP when ``prompt`` is None) on ``cfg.data``, and
    the backbone it was computed with (the protocol's result records it)."""
    from vlprompt.tasks.api import evaluate, zeroshot

    if prompt is None:
        report = zeroshot(cfg, progress=progress)
    else:
        report = evaluate(cfg, prompt, allow_new_classes=True, progress=progress)
    return float(report["accuracy"]), BackboneRecord.from_any(report["backbone"])


def _train_seed(cfg: ExperimentConfig, seed: int, out_dir: Path, extra: list[str]) -> tuple[Path | None, float | None]:
    """Train (or reuse) the run of ``seed``; ``(prompt path, source test accuracy)``; (None, None) for zero-shot."""
    from vlprompt.engine.trainer import train

    if not cfg.method.capabilities.trainable:
        return None, None
    run_dir = out_dir / f"seed{seed}"
    run_cfg = _with(cfg, [f"train.seed={seed}", f"train.output_dir={_q(str(run_dir))}", *extra])
    return run_dir / "prompt.safetensors", train(run_cfg, resume=True).accuracy


def _check_transfers(cfg: ExperimentConfig, protocol: str) -> None:
    """Refuse a class-specific method (linear probe, Tip-Adapter, CoOp with ``csc``) for a protocol that predicts
    other classes: before anything is trained."""
    if cfg.method.capabilities.class_specific:
        raise ConfigError(f"method '{cfg.method.name}' learns state for its training classes only (it is "
                          f"class-specific) and cannot predict the other classes protocol '{protocol}' evaluates "
                          "on; use it with the few-shot protocol, or a method that transfers (coop, cocoop, ...)")


def refuse_test_time_method(cfg: ExperimentConfig, protocol: str) -> None:
    """Refuse a method that adapts at test time (TPT, Zero, ...) in a protocol that evaluates in batches: it
    would be scored without adapting. Its protocol is ``vlprompt protocol tta``."""
    if cfg.method.capabilities.adapts_at_test_time:
        raise ConfigError(f"method '{cfg.method.name}' adapts at test time, one test image at a time; protocol "
                          f"'{protocol}' evaluates in batches and would score it without adapting: run it with "
                          "`vlprompt protocol tta` (or a sweep with protocol: tta)")


def base_to_new(cfg: ExperimentConfig, seeds: Sequence[int], out_dir: str | Path, *,
                progress: bool = False) -> dict[str, Any]:
    """Base-to-new generalisation of ``cfg`` over ``seeds``: per-seed and mean/std of base, new, H."""
    refuse_test_time_method(cfg, "base2new")
    _check_transfers(cfg, "base2new")
    out = Path(out_dir)
    rows = []
    trainable = cfg.method.capabilities.trainable
    transductive = cfg.method.capabilities.transductive  # PromptKD: trained on all classes' unlabeled images
    for seed in (seeds if trainable else seeds[:1]):
        prompt, base = _train_seed(cfg, seed, out, [f"data.subsample_classes={'all' if transductive else 'base'}"])
        if base is None or transductive:
            base, _ = _accuracy(_with(cfg, ["data.subsample_classes=base", f"train.seed={seed}"]), prompt, progress)
        new, backbone = _accuracy(_with(cfg, ["data.subsample_classes=new", f"train.seed={seed}"]), prompt, progress)
        rows.append({"seed": seed, "base": base, "new": new, "H": harmonic_mean(base, new)})
    return _finish("base2new", cfg, backbone, rows, ["base", "new", "H"], out)


def transfer(cfg: ExperimentConfig, targets: Sequence[str], seeds: Sequence[int], out_dir: str | Path, *,
             kind: str = "dg", progress: bool = False) -> dict[str, Any]:
    """Domain generalisation (``kind="dg"``) or cross-dataset transfer (``"xd"``) from ``cfg.data``."""
    if not targets:
        raise ConfigError("this protocol needs target datasets (--targets a,b,c)")
    refuse_test_time_method(cfg, kind)
    if kind == "xd":
        _check_transfers(cfg, kind)
    out = Path(out_dir)
    rows = []
    trainable = cfg.method.capabilities.trainable
    source = cfg.data.dataset
    for seed in (seeds if trainable else seeds[:1]):
        prompt, source_acc = _train_seed(cfg, seed, out, [])
        if source_acc is None:
            source_acc, _ = _accuracy(cfg, None, progress)
        row: dict[str, Any] = {"seed": seed, source: source_acc}
        for target in targets:
            tcfg = _with(cfg, [f"data.dataset={_q(target)}", "data.options={}", f"train.seed={seed}"])
            row[target], backbone = _accuracy(tcfg, prompt, progress)
        row["target average"] = statistics.fmean(row[t] for t in targets)
        rows.append(row)
    return _finish(kind, cfg, backbone, rows, [source, *targets, "target average"], out)


def _finish(kind: str, cfg: ExperimentConfig, backbone: BackboneRecord, rows: list[dict[str, Any]],
            columns: list[str], out: Path) -> dict[str, Any]:
    """Write ``<kind>_results.json`` / ``.md`` (mean and population std of every column over the seeds)."""
    summary = {}
    for col in columns:
        mean, std = mean_std([r[col] for r in rows])
        summary[col] = {"mean": mean, "std": std}
    record = ProtocolResult(protocol=kind, method=cfg.method.name, dataset=cfg.data.dataset, backbone=backbone,
                            seeds=[r["seed"] for r in rows], columns=columns, per_seed=rows, summary=summary,
                            config_digest=config_digest(cfg.as_dict()))
    record.table = protocol_table(record.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    result = write_result(out / f"{kind}_results.json", record)
    atomic_write_text(out / f"{kind}_results.md", record.table)
    return result


def protocol_table(result: dict[str, Any]) -> str:
    """One row: mean +- std over seeds of every column (accuracy %, H for base-to-new)."""
    cols = result["columns"]
    cells = [f"{result['summary'][c]['mean']:.2f} ± {result['summary'][c]['std']:.2f}" for c in cols]
    head = ["method", *cols]
    title = (f"{result['protocol']} - {result['method']} on {result['dataset']}, seeds "
             f"{', '.join(map(str, result['seeds']))} (test accuracy %, mean ± std)\n\n")
    return title + markdown_table(head, [[result["method"], *cells]])
