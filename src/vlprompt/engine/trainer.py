"""Training a method: one run from its folder to its result (CoOp-style prompt learning on a frozen backbone).

``train(cfg)`` runs one experiment into ``cfg.train.output_dir``::

    config.yaml        resolved config            fewshot.json   the K-shot split used
    log.txt            human log                  tb/            TensorBoard scalars (train.loggers)
    tracking/          CSV / W&B / MLflow files of the other experiment trackers (train.loggers)
    checkpoints/       resumable, atomic, per epoch (the last ``keep_checkpoints`` kept)
    prompt.safetensors the learned prompt (+ prompt.json)
    metrics.json       final test accuracy (overall, per class), history; results.md table

A run killed at any point and restarted with ``resume=True`` continues from its last
checkpoint (learned tensors, optimiser momentum, RNG states) and ends with the same prompt as an
uninterrupted run on the same device and seed.

Resumed with a larger budget (``optim.max_epoch``, or ``optim.iterations``), a run (finished or not) is
trained on from its last checkpoint to the new number of epochs: optimiser momentum and RNG states continue,
and the learning-rate schedule (:func:`~vlprompt.engine.optim.lr_at_step`, a function of the epoch, the step
and the total) is the one of the new total from the next epoch on (epochs already trained keep the rates they had;
with a 1-epoch warm-up, a 1-epoch run trained on to 3 epochs equals a 3-epoch run). The log says
``optim.max_epoch changed from 1 to 3: training epochs 2-3``; prompt and metrics are rewritten with the new
total. A budget smaller than the epochs already trained is refused and changes nothing.

Launched by ``torchrun`` (``WORLD_SIZE > 1``) the same function trains data-parallel: every rank
takes its slice of each global batch, gradients are averaged over the global batch
(:mod:`vlprompt.engine.distributed`), and rank 0 alone evaluates and writes the run folder.

``train`` orchestrates three parts: the run's life in its folder (:mod:`vlprompt.engine.run_life`: checks,
lock, resume comparison and budget, log, experiment trackers, config / prompt / metrics files; the trackers
themselves are :mod:`vlprompt.engine.tracking`'s), the optimisation loop
(:mod:`vlprompt.engine.loop`: optimiser, schedule, epochs, steps, checkpoints) and evaluation
(:mod:`vlprompt.engine.evaluate`). Whether images are encoded at every step is decided once, by
:func:`vlprompt.engine.features.image_encoding`.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.build import build_backbone
from vlprompt.backbones.hf import quiet_progress_bars
from vlprompt.config import ExperimentConfig
from vlprompt.core.errors import ConfigError
from vlprompt.core.results import RunResult
from vlprompt.data.descriptions import load_descriptions
from vlprompt.data.pipeline import PreparedData, prepare_data
from vlprompt.data.templates import get_templates
from vlprompt.engine import loop
from vlprompt.engine.distributed import (
    broadcast_parameters,
    check_batch_size,
    init_distributed,
    main_first,
    main_only,
)
from vlprompt.engine.evaluate import evaluate_items
from vlprompt.engine.fitting import RunFitData, fit_summary
from vlprompt.engine.run import autocast, resolve_device, seed_everything
from vlprompt.engine.run_life import Run, open_run
from vlprompt.engine.tracking import StepReporter, Tracker, check_available, final_metrics, tracking
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.registry import build_method, get_method


def method_context(cfg: ExperimentConfig, splits: Any) -> MethodContext:
    """The build context of a run: the dataset's hand-crafted template(s) (option data.templates) and the class
    descriptions of ``splits``' classes (option data.descriptions_file, :mod:`vlprompt.data.descriptions`)."""
    templates = get_templates(cfg.data.templates, cfg.data.dataset, template=getattr(splits, "template", None))
    return MethodContext(templates=tuple(templates), dataset=cfg.data.dataset,
                         descriptions=load_descriptions(cfg.data, list(splits.classnames)))


def build_training_method(cfg: ExperimentConfig, backbone: Backbone, classnames: list[str],
                          context: MethodContext | None = None) -> PromptMethod:
    caps = cfg.method.capabilities
    if caps.adapts_at_test_time and not caps.trainable:
        raise ConfigError(
            f"method '{cfg.method.name}' learns nothing before test time: it adapts at test time, one test image "
            "at a time; run it with `vlprompt protocol tta` (docs/methods.md)"
        )
    if not caps.trainable:
        raise ConfigError(
            f"method '{cfg.method.name}' learns nothing; use `vlprompt zeroshot` (or `vlprompt eval`) instead."
        )
    return build_method(cfg.method.name, backbone, classnames, config=cfg.method.config, context=context)


def train(cfg: ExperimentConfig, *, resume: bool = False, backbone: Backbone | None = None,
          command: str | None = None) -> RunResult:
    """Train ``cfg.method`` on ``cfg.data`` and evaluate on the test split; return the run's result (what
    ``metrics.json`` holds: ``result.test["accuracy"]``, ``result.history``, ``result.to_dict()``, ...).

    Args:
        cfg: the experiment (see :mod:`vlprompt.config`).
        resume: continue the run in ``cfg.train.output_dir`` from its last good checkpoint.
        backbone: an already loaded backbone to reuse (must match ``cfg.backbone``).
        command: the command line that started the run (``vlprompt train ...``), kept in the prompt file's
            metadata (``vlprompt export --format hub`` writes it into the model card).
    """
    if not cfg.train.output_dir:
        raise ConfigError("option train.output_dir is required (the run folder), e.g. --output-dir runs/my_run")
    cfg.train.output_dir = cfg.resolve_output_dir()
    cfg = get_method(cfg.method.name).prepare_run(cfg, resume)  # e.g. PromptKD's teacher, trained first
    ctx, device = init_distributed(resolve_device(cfg.train.device), timeout_min=cfg.train.dist_timeout_min)
    main_only(ctx, lambda: check_batch_size(ctx, cfg.optim.batch_size))  # before anything is written
    main_only(ctx, lambda: check_available(cfg.train.loggers))  # a tracker named but not installed
    with open_run(cfg, ctx, resume, command) as run:
        if run.finished is not None:
            return run.finished
        return _train(run, backbone, device)


def _train(run: Run, backbone: Backbone | None, device: torch.device) -> RunResult:
    """The run itself, in its open folder: data, method, closed-form fit, the loop, evaluation."""
    cfg, ctx, log = run.cfg, run.ctx, run.log
    progress = cfg.train.progress and ctx.is_main
    if not cfg.train.progress:
        quiet_progress_bars()  # transformers' bars too, where it is imported
    seed_everything(cfg.train.seed)
    if backbone is None:
        backbone = build_backbone(cfg.backbone, device=device)
    data = main_first(ctx, lambda: prepare_data(cfg.data, seed=cfg.train.seed, fewshot_path=run.paths.fewshot))
    run.note_skipped(data.skipped)
    log.info(f"dataset {data.splits.name}: {data.splits.num_classes} classes, {len(data.train)} train / "
             f"{len(data.val)} val / {len(data.splits.test)} test images "
             f"(shots {cfg.data.shots}, seed {cfg.train.seed})")
    main_only(ctx, lambda: check_batch_size(ctx, cfg.optim.batch_size, len(data.train)))  # one error line
    method = build_training_method(cfg, backbone, data.splits.classnames, method_context(cfg, data.splits)).to(device)
    caps = method.capabilities
    fit_data = RunFitData(method, data, seed=cfg.train.seed, batch_size=cfg.optim.test_batch_size,
                          num_workers=cfg.data.num_workers, disk_dir=cfg.data.feature_cache_dir,
                          progress=progress, log=log.info)
    fit_info: dict[str, Any] = {}
    if caps.fitted:  # closed-form state first (the same on every rank: seeded, no collective)
        with torch.random.fork_rng(devices=[]), autocast(device, cfg.train.compute_precision):
            fit_info = dict(method.fit(fit_data))
        log.info(f"fitted {cfg.method.name}: {fit_summary(fit_info)}")
    params = [p for _, p in method.learned_parameters()]
    broadcast_parameters(ctx, params)
    log.info(f"method {cfg.method.name}: {sum(p.numel() for p in params):,} learned parameters; "
             f"backbone {backbone.name} ({backbone.pretrained}) frozen")
    if ctx.enabled:
        log.info(f"data parallel: {ctx.world_size} processes ({device.type}), global batch {cfg.optim.batch_size} "
                 f"= {ctx.world_size} x {cfg.optim.batch_size // ctx.world_size}")
    if not caps.uses_sgd:  # fitted only: no epochs, no optimiser, no checkpoints
        if run.resume:
            run.write_config()
        with tracking(run.tracker(0)) as tracker:
            return _finished(tracker, main_only(ctx, lambda: _finish(method, data, backbone, run, device, [], 0, 0.0,
                                                                      fit_info)))

    state = loop.start(method, params, cfg, len(data.train), run.paths.checkpoints if run.resume else None, log)
    if run.resume:
        unchanged = run.check_budget(state.max_epoch, state.start_epoch, restored=state.restored)
        if unchanged is not None:  # a finished run resumed with the same number of epochs
            return unchanged
    train_loader = loop.train_loader(method, data, backbone, cfg, device, ctx, progress)
    loss_fn = loop.loss_step(method, cfg.train.compile)
    with tracking(run.tracker(state.start_epoch * state.steps_per_epoch)) as tracker:
        t0 = time.time()

        def validate() -> float:
            return main_only(ctx, lambda: _evaluate_split(method, data, data.val, cfg, device, "val"))["accuracy"]

        history = loop.run_epochs(method, train_loader, loss_fn, state, cfg, device, ctx,
                                  checkpoints=run.paths.checkpoints, progress=progress,
                                  validate=validate if data.val else None,
                                  record=lambda r: run.record_epoch(r, tracker, r["epoch"] * state.steps_per_epoch),
                                  on_step=StepReporter(tracker, cfg.train.log_every) if tracker.loggers else None)
        if caps.fitted:  # e.g. Tip-Adapter-F's search of alpha / beta with the trained keys
            with torch.random.fork_rng(devices=[]), autocast(device, cfg.train.compute_precision):
                after = dict(method.after_training(fit_data))
            if after:
                log.info(f"after training: {fit_summary(after)}")
            fit_info.update(after)
        train_time = round(time.time() - t0 + run.earlier_time, 2)
        return _finished(tracker, main_only(ctx, lambda: _finish(method, data, backbone, run, device, history,
                                                                  state.max_epoch, train_time, fit_info)))


def _finished(tracker: Tracker, result: RunResult) -> RunResult:
    """``result``, its numbers given to ``tracker`` as the run's final metrics."""
    tracker.finish(final_metrics(result.test, result.val, float(result.train_time_s or 0.0)))
    return result


def _finish(method: PromptMethod, data: PreparedData, backbone: Backbone, run: Run, device: torch.device,
            history: list[dict[str, Any]], max_epoch: int, train_time: float,
            fit_info: dict[str, Any] | None = None) -> RunResult:
    """Save the prompt, evaluate on test (and val), write metrics.json and results.md (rank 0); the result."""
    cfg = run.cfg
    run.save_prompt(method, max_epoch)
    run.log.info("evaluating on the test split")
    test = _evaluate_split(method, data, data.splits.test, cfg, device, "test")
    val_report = _evaluate_split(method, data, data.val, cfg, device, "val") if data.val else None
    return run.write_results(backbone=backbone.info.record, test=test, val=val_report, history=history,
                             epochs=max_epoch, train_time=train_time, skipped=len(data.skipped), fit_info=fit_info)


def _evaluate_split(method: PromptMethod, data: PreparedData, items: list, cfg: ExperimentConfig,
                    device: torch.device, name: str) -> dict[str, Any]:
    with autocast(device, cfg.train.compute_precision):
        return evaluate_items(method, items, data.splits.loader, batch_size=cfg.optim.test_batch_size,
                              num_workers=cfg.data.num_workers, progress=cfg.train.progress, desc=name,
                              disk_dir=cfg.data.feature_cache_dir)
