"""The training loop (CoOp-style prompt learning on a frozen backbone), with resume.

``train(cfg)`` runs one experiment into ``cfg.train.output_dir``::

    config.yaml        resolved config            fewshot.json   the K-shot split used
    log.txt            human log                  tb/            TensorBoard scalars
    checkpoints/       resumable, atomic, per epoch (the last ``keep_checkpoints`` kept)
    prompt.safetensors the learned prompt (+ prompt.json)
    metrics.json       final test accuracy (overall, per class), history; results.md table

A run killed at any point and restarted with ``resume=True`` continues from its last
checkpoint (learned tensors, optimiser momentum, RNG states) and ends with the same prompt as an
uninterrupted run on the same device and seed.

Resumed with a larger budget (``optim.max_epoch``, or ``optim.iterations``), a run (finished or not) is
trained on from its last checkpoint to the new number of epochs: optimiser momentum and RNG states continue,
and the learning-rate schedule (:func:`~vlprompt.engine.optim.lr_at_epoch`, a function of the epoch and the
total) is the one of the new total from the next epoch on (epochs already trained keep the rates they had;
with a 1-epoch warm-up, a 1-epoch run trained on to 3 epochs equals a 3-epoch run). The log says
``optim.max_epoch changed from 1 to 3: training epochs 2-3``; prompt and metrics are rewritten with the new
total. A budget smaller than the epochs already trained is refused and changes nothing.

Launched by ``torchrun`` (``WORLD_SIZE > 1``) the same function trains data-parallel: every rank
takes its slice of each global batch, gradients are averaged over the global batch
(:mod:`vlprompt.engine.distributed`), and rank 0 alone evaluates and writes the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.build import build_backbone
from vlprompt.config import ExperimentConfig, apply_overrides, config_from_dict, read_yaml
from vlprompt.core.errors import ConfigError, DataError, VlpromptError, user_message
from vlprompt.core.io import atomic_write_json, atomic_write_text, ensure_dir
from vlprompt.core.results import BackboneRecord, RunResult, config_digest, read_result, write_result
from vlprompt.core.tables import accuracy_table
from vlprompt.data.loading import ImageDataset
from vlprompt.data.pipeline import PreparedData, prepare_data
from vlprompt.data.templates import get_templates
from vlprompt.engine.checkpoint import (
    list_checkpoints,
    resume_training_state,
    save_prompt,
    save_training_state,
)
from vlprompt.engine.distributed import (
    SINGLE,
    DistContext,
    broadcast_parameters,
    check_batch_size,
    init_distributed,
    main_first,
    main_only,
    reseed_worker_rng,
)
from vlprompt.engine.evaluate import evaluate_items
from vlprompt.engine.features import encode_items, feature_loader, train_batches, view_loader
from vlprompt.engine.fitting import RunFitData, fit_summary
from vlprompt.engine.loss_step import backward_terms
from vlprompt.engine.optim import build_optimizer, epochs_for, lr_at_epoch, set_lr
from vlprompt.engine.run import (
    RunLock,
    RunPaths,
    close_logger,
    make_logger,
    quiet_logger,
    resolve_device,
    seed_everything,
)
from vlprompt.methods.base import LossTerms, MethodContext, PromptMethod
from vlprompt.methods.registry import build_method, get_method

#: Config parts that must not change between a run and its resumption ...
_RESUME_KEYS = ("method", "backbone", "data", "optim")
#: ... except these, which a user changes to recover a run (a NaN stop: lower the learning rate) or to
#: train it longer (a smaller budget than the epochs trained is refused: :func:`_check_budget`); the log says
#: what changed.
_RESUME_MAY_CHANGE = ("optim.lr", "optim.max_epoch", "optim.iterations")
#: The options that set a run's training budget: a larger one trains a finished run on (see :func:`_check_budget`).
_BUDGET_KEYS = ("optim.max_epoch", "optim.iterations")
#: Options that say where files go, not what is computed: they may differ on resumption (a sweep's
#: launcher points every run at a shared feature cache); not even logged.
_RESUME_LOCATIONS = ("data.feature_cache_dir",)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "amp"`` (learned parameters stay fp32), else a no-op."""
    if precision != "amp":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _check_run_folder(paths: RunPaths, cfg: ExperimentConfig, resume: bool) -> list[str]:
    """Never overwrite a finished or half-finished run unless asked to resume it; returns the notes
    ("optim.lr changed from ... to ...") of the options a resumption may change."""
    finished = paths.metrics.exists()
    started = bool(list_checkpoints(paths.checkpoints))
    if not resume and (finished or started):
        state = "a finished run" if finished else "checkpoints of an unfinished run"
        raise VlpromptError(
            f"run folder '{paths.root}' already holds {state}; pass --resume to continue it, or choose "
            "another folder (option train.output_dir / --output-dir). Nothing was changed."
        )
    if not (resume and paths.config.exists()):
        return []
    saved = read_yaml(paths.config)
    if not isinstance(saved, dict):
        raise ConfigError(f"cannot resume '{paths.root}': its config file '{paths.config}' is damaged (not a "
                          "mapping of sections); restore it or start a new run in another folder.")
    saved = _with_defaults(saved)
    now = cfg.as_dict()
    before = _flatten({k: saved.get(k) for k in _RESUME_KEYS})
    after = _flatten({k: now.get(k) for k in _RESUME_KEYS})
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k, "<unset>") != after.get(k, "<unset>") and k not in _RESUME_LOCATIONS)
    saved_train = saved.get("train") if isinstance(saved.get("train"), dict) else {}
    if saved_train.get("seed") != cfg.train.seed:
        changed.append("train.seed")
    fixed = [k for k in changed if k not in _RESUME_MAY_CHANGE]
    if fixed:
        shown = ", ".join(fixed[:6]) + (f" and {len(fixed) - 6} more" if len(fixed) > 6 else "")
        raise VlpromptError(
            f"cannot resume '{paths.root}': its config differs in {shown}. Resume with the same config "
            f"({paths.config}; only {' and '.join(_RESUME_MAY_CHANGE)} may change) or start a new run in another "
            "folder."
        )
    return [f"{k} changed from {before.get(k)} to {after.get(k)}" for k in changed]


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config as this release resolves it (options added since filled with their defaults,
    renamed options under their new names), so that older runs compare equal to the same config; the raw
    mapping when it no longer validates (the comparison then names what differs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # renamed options: not the user's doing here
            return config_from_dict(copy.deepcopy(saved)).as_dict()
    except VlpromptError:
        return saved


def _read_finished_metrics(paths: RunPaths) -> RunResult | None:
    """The result of a finished run, or None when ``metrics.json`` is unreadable / not a run's metrics
    (the run is then finished again from its checkpoints, which rewrites it)."""
    try:
        return read_result(paths.metrics, RunResult)
    except DataError:
        return None


def method_context(cfg: ExperimentConfig, splits: Any) -> MethodContext:
    """The build context of a run: the dataset's hand-crafted template(s) (option data.templates)."""
    templates = get_templates(cfg.data.templates, cfg.data.dataset, template=getattr(splits, "template", None))
    return MethodContext(templates=tuple(templates), dataset=cfg.data.dataset)


def build_training_method(cfg: ExperimentConfig, backbone: Backbone, classnames: list[str],
                          context: MethodContext | None = None) -> PromptMethod:
    entry = get_method(cfg.method.name)
    if not entry.trainable:
        raise ConfigError(
            f"method '{cfg.method.name}' learns nothing; use `vlprompt zeroshot` (or `vlprompt eval`) instead."
        )
    return build_method(cfg.method.name, backbone, classnames, config=cfg.method.config, context=context)


def train(cfg: ExperimentConfig, *, resume: bool = False, backbone: Backbone | None = None) -> RunResult:
    """Train ``cfg.method`` on ``cfg.data`` and evaluate on the test split; return the run's result (what
    ``metrics.json`` holds: ``result.test["accuracy"]``, ``result.history``, ``result.to_dict()``, ...).

    Args:
        cfg: the experiment (see :mod:`vlprompt.config`).
        resume: continue the run in ``cfg.train.output_dir`` from its last good checkpoint.
        backbone: an already loaded backbone to reuse (must match ``cfg.backbone``).
    """
    if not cfg.train.output_dir:
        raise ConfigError("option train.output_dir is required (the run folder), e.g. --output-dir runs/my_run")
    cfg.train.output_dir = cfg.resolve_output_dir()
    paths = RunPaths(Path(cfg.train.output_dir))
    ctx, device = init_distributed(resolve_device(cfg.train.device), timeout_min=cfg.train.dist_timeout_min)
    main_only(ctx, lambda: check_batch_size(ctx, cfg.optim.batch_size))  # before anything is written
    with contextlib.ExitStack() as stack:
        finished, notes, extending = main_only(ctx, lambda: _open_run(paths, cfg, resume, stack))
        if finished is not None:
            return finished
        console = cfg.train.progress and cfg.train.console_log
        log = make_logger(paths.log, console=console) if ctx.is_main else quiet_logger(ctx.rank)
        budget_notes = [n for n in notes if _is_budget_note(n)]
        for note in notes:
            if note not in budget_notes:  # budget changes: logged with the epochs they train (_check_budget)
                log.warning(note)
        try:
            return _train(cfg, paths, resume, backbone, log, ctx, device, budget_notes=budget_notes,
                          extending=extending)
        except VlpromptError as exc:
            if ctx.is_main and not list_checkpoints(paths.checkpoints) and not paths.metrics.exists():
                exc.args = (f"{user_message(exc)} (Run folder '{paths.root}' holds no checkpoint yet, only its config "
                            "and log; the same command starts it afresh.)",)
            raise
        finally:
            close_logger(log)


def _is_budget_note(note: str) -> bool:
    """``note`` ("optim.max_epoch changed from 1 to 3") is about an option of the training budget."""
    return note.split(" ", 1)[0] in _BUDGET_KEYS


def _open_run(paths: RunPaths, cfg: ExperimentConfig, resume: bool,
              stack: contextlib.ExitStack) -> tuple[RunResult | None, list[str], RunResult | None]:
    """Check and lock the run folder (held until ``stack`` closes), save the config of a new run. Rank 0 only.

    Returns the result of a finished run resumed with the same training budget (the result as it is; else
    None), notes on changed options, and the result of a finished run resumed with another budget (trained
    on to it, or refused, by :func:`_check_budget`; else None). A resumed run's config is saved by
    :func:`_train` once its budget is checked, so that a refused resumption changes nothing.
    """
    notes = _check_run_folder(paths, cfg, resume)
    ensure_dir(paths.root, "run folder (option train.output_dir)")
    stack.enter_context(RunLock(paths.lock))
    extending = None
    if resume and paths.metrics.exists():
        metrics = _read_finished_metrics(paths)
        if metrics is None:
            notes.append(f"warning: '{paths.metrics}' is unreadable or not a run's metrics; finishing the run "
                         "again from its checkpoints")
        elif not any(_is_budget_note(n) for n in notes):
            return metrics, [], None
        else:
            extending = metrics
    if not (resume and paths.config.exists()):
        atomic_write_text(paths.config, cfg.to_yaml())
    return None, notes, extending


def _check_budget(paths: RunPaths, cfg: ExperimentConfig, max_epoch: int, start_epoch: int,
                  extending: RunResult | None, restored: bool) -> None:
    """Refuse a resumption whose budget (``max_epoch`` epochs) is smaller than what the run has trained, or
    that would train a finished run on without a checkpoint to continue from (its result is kept)."""
    budget = (f"optim.iterations={cfg.optim.iterations} ({max_epoch} epochs)" if cfg.optim.iterations is not None
              else f"optim.max_epoch={max_epoch}")
    if extending is not None and not restored:
        raise VlpromptError(
            f"cannot train '{paths.root}' on to {budget}: none of its checkpoints ({paths.checkpoints}) is usable, "
            "so there is nothing to continue from; its finished result is kept. Train a new run in another folder. "
            "Nothing was changed."
        )
    finished = extending.epochs if extending is not None else None
    done = max(start_epoch, finished if isinstance(finished, int) and not isinstance(finished, bool) else 0)
    if max_epoch < done:
        raise VlpromptError(
            f"cannot resume '{paths.root}' with {budget}: it has already trained {done} epochs and a run cannot be "
            f"shortened. Resume with a budget of at least {done} epochs (e.g. --set optim.max_epoch={done}), or "
            "start a new run in another folder. Nothing was changed."
        )


def _train(cfg: ExperimentConfig, paths: RunPaths, resume: bool, backbone: Backbone | None,
           log: Any, ctx: DistContext = SINGLE, device: torch.device | None = None, *,
           budget_notes: Sequence[str] = (), extending: RunResult | None = None) -> RunResult:
    """The run itself (after :func:`_open_run`); ``budget_notes``: changes of the training budget on resumption,
    ``extending``: the result of a finished run resumed with another budget."""
    device = resolve_device(cfg.train.device) if device is None else device
    progress = cfg.train.progress and ctx.is_main
    seed_everything(cfg.train.seed)
    if backbone is None:
        backbone = build_backbone(cfg.backbone, device=device)
    data = main_first(ctx, lambda: prepare_data(cfg.data, seed=cfg.train.seed, fewshot_path=paths.fewshot))
    if data.skipped and ctx.is_main:
        atomic_write_json(paths.root / "skipped_images.json", data.skipped)
        log.warning(f"skipped {len(data.skipped)} unreadable images (data.on_bad_image=skip); "
                    f"listed in {paths.root / 'skipped_images.json'}")
    log.info(f"dataset {data.splits.name}: {data.splits.num_classes} classes, {len(data.train)} train / "
             f"{len(data.val)} val / {len(data.splits.test)} test images "
             f"(shots {cfg.data.shots}, seed {cfg.train.seed})")
    main_only(ctx, lambda: check_batch_size(ctx, cfg.optim.batch_size, len(data.train)))  # one error line
    caps = get_method(cfg.method.name).capabilities
    method = build_training_method(cfg, backbone, data.splits.classnames, method_context(cfg, data.splits)).to(device)
    fit_data = RunFitData(method, data, seed=cfg.train.seed, batch_size=cfg.optim.test_batch_size,
                          num_workers=cfg.data.num_workers, disk_dir=cfg.data.feature_cache_dir,
                          cache=not caps.modifies_encoders, progress=progress, log=log.info)
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
        if resume:
            main_only(ctx, lambda: atomic_write_text(paths.config, cfg.to_yaml()))
        return main_only(ctx, lambda: _finish(method, data, backbone, cfg, device, paths, log, [], 0, 0.0, fit_info))
    optimizer = build_optimizer(params, cfg.optim)
    steps_per_epoch = len(train_batches(len(data.train), cfg.optim.batch_size))  # every loader's sampler
    max_epoch = epochs_for(cfg.optim, cfg.data.dataset, cfg.data.shots, steps_per_epoch)

    start_epoch, history, earlier_time = 0, [], 0.0
    if resume:  # every rank reads the same newest good checkpoint (rank 0's RNG states)
        state = resume_training_state(paths.checkpoints, method, optimizer, log=log.warning)
        if state is not None:
            start_epoch, meta = state
            history = list(meta.get("history", []))[:start_epoch]
            log.info(f"resumed from epoch {start_epoch} ({len(history)} epochs done)")
        _check_budget(paths, cfg, max_epoch, start_epoch, extending, restored=state is not None)
        if budget_notes:  # the schedule (lr_at_epoch) follows the new budget from the next epoch on
            what = (f"training epoch {max_epoch}" if start_epoch + 1 == max_epoch
                    else f"training epochs {start_epoch + 1}-{max_epoch}" if start_epoch < max_epoch
                    else f"nothing more to train ({start_epoch} epochs done)")
            log.info(f"{'; '.join(budget_notes)}: {what}")
        main_only(ctx, lambda: atomic_write_text(paths.config, cfg.to_yaml()))
        if extending is not None:
            if start_epoch >= max_epoch:  # the same number of epochs (e.g. another iterations count)
                return extending
            earlier_time = float(extending.train_time_s or 0.0)

    train_loader = _train_loader(method, data, backbone, cfg, device, ctx, progress)
    loss_fn = _loss_step(method, cfg.train.compile)
    writer = _tensorboard(paths, cfg, start_epoch) if ctx.is_main else None
    t0 = time.time()
    epochs = tqdm(range(start_epoch, max_epoch), desc="epochs", disable=not progress,
                  initial=start_epoch, total=max_epoch)
    for epoch in epochs:
        lr = lr_at_epoch(epoch, cfg.optim, max_epoch)
        set_lr(optimizer, lr)
        reseed_worker_rng(ctx, cfg.train.seed, epoch)
        stats = _train_one_epoch(method, train_loader, optimizer, device, cfg, epoch, ctx=ctx, loss_fn=loss_fn,
                                 progress=progress)
        epoch_end = getattr(method, "on_epoch_end", None)  # issue 17: e.g. PromptSRC's prompt aggregation
        if epoch_end is not None:
            epoch_end(epoch, max_epoch)
        record = {"epoch": epoch + 1, "lr": lr, **stats}
        if cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0 and data.val:
            val = main_only(ctx, lambda: _evaluate_split(method, data, data.val, backbone, cfg, device, "val"))
            record["val_accuracy"] = val["accuracy"]
        history.append(record)
        epochs.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['accuracy']:.1f}", lr=f"{lr:.2e}")
        log.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(f"train/{key}" if "val" not in key else f"val/{key}", value, epoch + 1)
        if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == max_epoch:
            main_only(ctx, functools.partial(save_training_state, paths.checkpoints, epoch, method, optimizer,
                                             extra={"history": history}, keep=cfg.train.keep_checkpoints))
    if writer is not None:
        writer.close()
    if caps.fitted:  # e.g. Tip-Adapter-F's search of alpha / beta with the trained keys
        with torch.random.fork_rng(devices=[]), autocast(device, cfg.train.compute_precision):
            after = dict(method.after_training(fit_data))
        if after:
            log.info(f"after training: {fit_summary(after)}")
        fit_info.update(after)
    train_time = round(time.time() - t0 + earlier_time, 2)
    return main_only(ctx, lambda: _finish(method, data, backbone, cfg, device, paths, log, history, max_epoch,
                                          train_time, fit_info))


def _finish(method: PromptMethod, data: PreparedData, backbone: Backbone, cfg: ExperimentConfig,
            device: torch.device, paths: RunPaths, log: Any, history: list[dict[str, Any]], max_epoch: int,
            train_time: float, fit_info: dict[str, Any] | None = None) -> RunResult:
    """Save the prompt, evaluate on test (and val), write metrics.json and results.md (rank 0); the result."""
    save_prompt(paths.prompt, method, extra={"dataset": cfg.data.dataset, "shots": cfg.data.shots,
                                              "seed": cfg.train.seed, "epochs": max_epoch})
    log.info("evaluating on the test split")
    test = _evaluate_split(method, data, data.splits.test, backbone, cfg, device, "test")
    val_report = _evaluate_split(method, data, data.val, backbone, cfg, device, "val") if data.val else None
    result = RunResult(
        method=cfg.method.name, dataset=cfg.data.dataset, shots=cfg.data.shots, seed=cfg.train.seed,
        backbone=BackboneRecord.from_any(backbone.info.as_dict()), epochs=max_epoch, train_time_s=train_time,
        skipped_images=len(data.skipped), test=test, val=val_report, history=history, fit=fit_info or None,
        config_digest=config_digest(cfg.as_dict()))
    write_result(paths.metrics, result)
    table = accuracy_table(test, title=f"{cfg.method.name} on {cfg.data.dataset} ({cfg.data.shots} shots, "
                                         f"seed {cfg.train.seed}) - test")
    atomic_write_text(paths.results_table, table)
    log.info("\n" + table)
    return result


def _train_loader(method: PromptMethod, data: PreparedData, backbone: Backbone, cfg: ExperimentConfig,
                  device: torch.device, ctx: DistContext, progress: bool) -> DataLoader:
    """Training batches (this rank's share of each global batch): cached features ``[B, ...]``, cached
    augmented views, or images ``[B, 3, H, W]`` encoded every step."""
    bs = cfg.optim.batch_size
    # a method that modifies the encoders (deep prompts, CLIP-LoRA) must encode its images every step
    modifies = get_method(cfg.method.name).capabilities.modifies_encoders or method.modifies_encoders
    if modifies:  # features change with every step
        tf = backbone.train_transform() if cfg.data.augment else backbone.eval_transform()
        dataset = ImageDataset(data.train, data.splits.loader, tf)
        return DataLoader(dataset, batch_sampler=train_batches(len(dataset), bs, ctx),
                          num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    if cfg.data.augment and cfg.data.augment_views > 0:  # opt-in: K cached augmented views per image
        with torch.random.fork_rng(devices=[]):  # the views depend on the seed only (same after --resume)
            torch.manual_seed(cfg.train.seed + 7919)
            views = [_augmented_view(method, data, backbone, cfg, v) for v in range(cfg.data.augment_views)]
        return view_loader(torch.stack([f for f, _ in views]), views[0][1], batch_size=bs, ctx=ctx)
    if cfg.data.augment or not cfg.data.cache_features or modifies:  # images are encoded anew every step
        tf = backbone.train_transform() if cfg.data.augment else backbone.eval_transform()
        dataset = ImageDataset(data.train, data.splits.loader, tf)
        return DataLoader(dataset, batch_sampler=train_batches(len(dataset), bs, ctx),
                          num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    # frozen encoder, fixed views: encode every training image once (exact)
    feats, labels = encode_items(method.encode_images, data.train, data.splits.loader, backbone.eval_transform(),
                                 batch_size=cfg.optim.test_batch_size, num_workers=cfg.data.num_workers,
                                 progress=progress, cache_owner=backbone,
                                 cache_kind=method.feature_kind, disk_dir=cfg.data.feature_cache_dir)
    return feature_loader(feats, labels, batch_size=bs, ctx=ctx)


def _loss_step(method: PromptMethod, compile_step: bool | str) -> Callable[[Tensor, Tensor], LossTerms]:
    """``method.training_loss`` (features ``[B, ...]``, labels ``[B]`` -> named loss terms and logits ``[B, C]``),
    optionally wrapped in ``torch.compile`` (option train.compile: true = inductor, or a backend name)."""
    if compile_step is False:
        return method.training_loss
    backend = "inductor" if compile_step is True else str(compile_step)
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError(f"option train.compile: unknown torch.compile backend '{backend}'; use true, false or "
                          f"one of {', '.join(sorted(known))}")
    return torch.compile(method.training_loss, backend=backend)


def _augmented_view(method: PromptMethod, data: PreparedData, backbone: Backbone, cfg: ExperimentConfig,
                    v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One randomly augmented view of every training image, encoded (crops drawn from the current RNG)."""
    from vlprompt.data.loading import ImageDataset

    tf = backbone.train_transform()
    ds = ImageDataset(data.train, data.splits.loader, tf)
    feats = []
    with torch.no_grad():
        for start in range(0, len(ds), cfg.optim.test_batch_size):
            batch = torch.stack([ds[i][0] for i in range(start, min(start + cfg.optim.test_batch_size, len(ds)))])
            feats.append(method.encode_images(batch).float())
    return torch.cat(feats), torch.tensor([d.label for d in data.train], device=feats[0].device)


def _train_one_epoch(method: PromptMethod, loader: Any, optimizer: torch.optim.Optimizer, device: torch.device,
                     cfg: ExperimentConfig, epoch: int, *, ctx: DistContext = SINGLE,
                     loss_fn: Callable[[Tensor, Tensor], LossTerms] | None = None,
                     progress: bool | None = None) -> dict[str, float]:
    """One pass over ``loader``; loss, each loss term (``loss_<term>``: mean per counted item) and accuracy
    are over the global batches (all ranks)."""
    method.train()
    loss_fn = method.training_loss if loss_fn is None else loss_fn
    progress = cfg.train.progress if progress is None else progress
    params = [p for _, p in method.learned_parameters()]
    owns_step = get_method(method.method_name).capabilities.owns_gradient_step
    total_loss, correct, seen = 0.0, 0, 0
    term_sums: dict[str, float] = {}
    term_counts: dict[str, int] = {}
    for step, (images, labels) in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False,
                                                 disable=not progress)):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, cfg.train.compute_precision):
            feats = method.encode_images(images) if images.dim() == 4 else images  # else: cached features
            out = loss_fn(feats, labels)
        optimizer.zero_grad(set_to_none=True)
        # every cross-rank reduction happens here (non-finite values skip the backward pass on every rank)
        stats = backward_terms(method, out, params, labels, ctx=ctx, owns_gradient_step=owns_step)
        if not math.isfinite(stats.loss):
            raise VlpromptError(
                f"the loss became {stats.loss} at epoch {epoch + 1}, step {step + 1}; training stopped and "
                "the last good checkpoint is kept. Likely causes: learning rate too high (optim.lr) or "
                "reduced precision (train.compute_precision=fp32 avoids it)."
            )
        optimizer.step()
        total_loss += stats.loss * stats.n
        correct += stats.correct
        seen += stats.n
        for name, value in stats.term_sums.items():
            term_sums[name] = term_sums.get(name, 0.0) + value
            term_counts[name] = term_counts.get(name, 0) + stats.term_counts[name]
    if seen == 0:
        raise VlpromptError("the training split is empty; check data.dataset / data.root / data.shots")
    record = {"loss": total_loss / seen, "accuracy": 100.0 * correct / seen}
    if len(term_sums) > 1:
        for k in sorted(term_sums):
            record[f"loss_{k}"] = term_sums[k] / term_counts[k] if term_counts[k] else 0.0
    return record


def _evaluate_split(method: PromptMethod, data: PreparedData, items: list, backbone: Backbone,
                    cfg: ExperimentConfig, device: torch.device, name: str) -> dict[str, Any]:
    with autocast(device, cfg.train.compute_precision):
        return evaluate_items(method, items, data.splits.loader, batch_size=cfg.optim.test_batch_size,
                              num_workers=cfg.data.num_workers, progress=cfg.train.progress, desc=name,
                              disk_dir=cfg.data.feature_cache_dir)


def _tensorboard(paths: RunPaths, cfg: ExperimentConfig, start_epoch: int) -> Any:
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: scalars are still in metrics.json / log.txt
        return None
    return SummaryWriter(str(paths.tensorboard), purge_step=start_epoch + 1 if start_epoch else None)


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The resolved config saved in a run folder (its ``output_dir`` = the folder), with ``--set`` overrides."""
    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise VlpromptError(f"'{run_dir}' is not a vlprompt run folder (no config.yaml); "
                            "pass a run folder made by `vlprompt train`, or --config and --prompt")
    raw = read_yaml(paths.config)
    if not isinstance(raw, dict) or not isinstance(raw.get("train", {}), dict):
        raise ConfigError(f"config file '{paths.config}' of run '{run_dir}' is damaged (not a mapping of "
                          "sections); restore it, or pass --config and --prompt")
    raw.setdefault("train", {})["output_dir"] = str(paths.root)
    return config_from_dict(apply_overrides(raw, list(overrides)))
