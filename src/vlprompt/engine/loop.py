"""The optimisation loop of a training run: batches, steps, loss, optimiser, schedule, checkpoints.

:func:`start` builds the optimiser, sets the number of epochs and, on resumption, restores the newest usable
checkpoint (learned tensors, optimiser state, RNG states, history); :func:`train_loader` gives the training
batches the way :func:`~vlprompt.engine.features.image_encoding` decides (cached features, cached augmented
views, or images encoded every step); :func:`run_epochs` trains epoch after epoch with the schedule
(:func:`~vlprompt.engine.optim.lr_at_step`: per epoch, or per step with ``optim.scheduler_step: iteration``),
calls the method's ``on_epoch_end`` hook and writes a checkpoint every ``train.checkpoint_every`` epochs and
after the last one. Each step's backward pass and its cross-rank
reduction is :func:`~vlprompt.engine.loss_step.backward_terms`. Where files go, what is logged and what a
resumption may change is the run's life (:mod:`vlprompt.engine.run_life`), not this module's.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlprompt.backbones.base import Backbone
from vlprompt.config import ExperimentConfig
from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.data.loading import ImageDataset
from vlprompt.data.pipeline import PreparedData
from vlprompt.engine.checkpoint import resume_training_state, save_training_state
from vlprompt.engine.distributed import SINGLE, DistContext, main_only, reseed_worker_rng
from vlprompt.engine.features import (
    encode_batch,
    encode_items,
    feature_loader,
    image_encoding,
    train_batches,
    view_loader,
)
from vlprompt.engine.loss_step import backward_terms
from vlprompt.engine.optim import build_optimizer, epochs_for, lr_at_step, set_lr
from vlprompt.engine.run import autocast
from vlprompt.methods.base import LossTerms, PromptMethod

#: offset of the cached augmented views' seed from the run's seed (the fit step's views use 7907)
_VIEW_SEED = 7919


@dataclass
class LoopState:
    """Where the loop starts: the optimiser, the epochs to reach, and what a resumed run has done."""

    optimizer: torch.optim.Optimizer
    max_epoch: int
    steps_per_epoch: int = 1
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    restored: bool = False


def start(method: PromptMethod, params: list[torch.nn.Parameter], cfg: ExperimentConfig, n_train: int,
          checkpoints: Path | None, log: Any) -> LoopState:
    """The optimiser of ``params``, the number of epochs (``optim.max_epoch``, or ``optim.iterations`` over
    ``n_train`` images) and, with ``checkpoints`` (a resumption), the newest usable checkpoint restored into
    ``method``, the optimiser and the RNGs (every rank reads the same one, with rank 0's RNG states)."""
    scales = method.lr_scales()
    by_param = {id(p): scales.get(name, 1.0) for name, p in method.learned_parameters()}
    optimizer = build_optimizer(params, cfg.optim, [by_param.get(id(p), 1.0) for p in params])
    steps_per_epoch = len(train_batches(n_train, cfg.optim.batch_size))  # every loader's sampler
    state = LoopState(optimizer, epochs_for(cfg.optim, cfg.data.dataset, cfg.data.shots, steps_per_epoch),
                      steps_per_epoch)
    if checkpoints is not None:
        restored = resume_training_state(checkpoints, method, optimizer, log=log.warning)
        if restored is not None:
            state.start_epoch, meta = restored
            state.history = list(meta.get("history", []))[:state.start_epoch]
            state.restored = True
            log.info(f"resumed from epoch {state.start_epoch} ({len(state.history)} epochs done)")
    return state


def train_loader(method: PromptMethod, data: PreparedData, backbone: Backbone, cfg: ExperimentConfig,
                 device: torch.device, ctx: DistContext, progress: bool) -> DataLoader:
    """Training batches (this rank's share of each global batch), as :func:`image_encoding` decides: images
    ``[B, 3, H, W]`` encoded every step, cached augmented views, or cached features ``[B, ...]``."""
    bs = cfg.optim.batch_size
    mode = image_encoding(method.capabilities, cfg.data)
    if mode == "every_step":
        tf = method.training_transform(backbone.train_transform()) if cfg.data.augment else backbone.eval_transform()
        dataset = ImageDataset(data.train, data.splits.loader, tf)
        return DataLoader(dataset, batch_sampler=train_batches(len(dataset), bs, ctx),
                          num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    if mode == "cached_views":  # opt-in: K cached augmented views per image
        with torch.random.fork_rng(devices=[]):  # the views depend on the seed only (same after --resume)
            torch.manual_seed(cfg.train.seed + _VIEW_SEED)
            views = [_augmented_view(method, data, backbone, cfg) for _ in range(cfg.data.augment_views)]
        return view_loader(torch.stack([f for f, _ in views]), views[0][1], batch_size=bs, ctx=ctx)
    # frozen encoder, fixed views: encode every training image once (exact)
    feats, labels = encode_items(method.encode_images, data.train, data.splits.loader, backbone.eval_transform(),
                                 batch_size=cfg.optim.test_batch_size, num_workers=cfg.data.num_workers,
                                 progress=progress, cache_owner=backbone,
                                 cache_kind=method.capabilities.feature_kind, disk_dir=cfg.data.feature_cache_dir)
    return feature_loader(feats, labels, batch_size=bs, ctx=ctx)


def _augmented_view(method: PromptMethod, data: PreparedData, backbone: Backbone,
                    cfg: ExperimentConfig) -> tuple[Tensor, Tensor]:
    """One randomly augmented view of every training image, encoded (crops drawn from the current RNG):
    features ``[N, ...]`` and labels ``[N]``."""
    ds = ImageDataset(data.train, data.splits.loader, backbone.train_transform())
    feats = []
    with torch.no_grad():
        for start_at in range(0, len(ds), cfg.optim.test_batch_size):
            batch = torch.stack([ds[i][0] for i in range(start_at, min(start_at + cfg.optim.test_batch_size, len(ds)))])
            feats.append(method.encode_images(batch).float())
    return torch.cat(feats), torch.tensor([d.label for d in data.train], device=feats[0].device)


def loss_step(method: PromptMethod, compile_step: bool | str) -> Callable[[Tensor, Tensor], LossTerms]:
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


def train_one_epoch(method: PromptMethod, loader: Any, optimizer: torch.optim.Optimizer, device: torch.device,
                    cfg: ExperimentConfig, epoch: int, *, ctx: DistContext = SINGLE,
                    loss_fn: Callable[[Tensor, Tensor], LossTerms] | None = None,
                    progress: bool | None = None, lr_at: Callable[[int], float] | None = None,
                    on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """One pass over ``loader``; loss, each loss term (``loss_<term>``: mean per counted item) and accuracy
    are over the global batches (all ranks). With ``lr_at`` (step of the epoch -> learning rate) the rate is set
    before every step (``optim.scheduler_step: iteration``); else the optimiser keeps the rate it has.

    ``on_step(step of the epoch, values)`` is called after every optimiser step with the step's global ``loss``,
    ``loss_<term>`` (methods with more than one term), ``images`` (the global batch) and ``seconds`` (the wall time
    since the previous step, data loading included); the values are those the loop reads anyway (no further device
    sync).
    """
    method.train()
    loss_fn = method.training_loss if loss_fn is None else loss_fn
    progress = cfg.train.progress if progress is None else progress
    params = [p for _, p in method.learned_parameters()]
    owns_step = method.capabilities.owns_gradient_step
    total_loss, correct, seen = 0.0, 0, 0
    term_sums: dict[str, float] = {}
    term_counts: dict[str, int] = {}
    tick = time.perf_counter()
    for step, (images, labels) in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False,
                                                 disable=not progress)):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, cfg.train.compute_precision):
            # else: cached features, or a method's multi-view images [B, V, 3, H, W] (its training_transform)
            feats = encode_batch(method, images) if images.dim() == 4 else images
            out = loss_fn(feats, labels)
        optimizer.zero_grad(set_to_none=True)
        if lr_at is not None:
            set_lr(optimizer, lr_at(step), warmup=epoch < cfg.optim.warmup_epoch)
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
        if on_step is not None:
            now = time.perf_counter()
            values = {"loss": stats.loss, "images": float(stats.n), "seconds": now - tick,
                      **_term_means(stats.term_sums, stats.term_counts)}
            on_step(step, values)
            tick = now
    if seen == 0:
        raise VlpromptError("the training split is empty; check data.dataset / data.root / data.shots")
    return {"loss": total_loss / seen, "accuracy": 100.0 * correct / seen, **_term_means(term_sums, term_counts)}


def _term_means(sums: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """``{"loss_<term>": mean}`` of a method with more than one named loss term (sorted by name), else empty."""
    if len(sums) <= 1:
        return {}
    return {f"loss_{k}": sums[k] / counts[k] if counts[k] else 0.0 for k in sorted(sums)}


def _report_step(on_step: Callable[[int, dict[str, float]], None], done: int,
                 lr_of_step: Callable[[int], float] | None, lr: float, step: int, values: dict[str, float]) -> None:
    """``on_step`` of :func:`run_epochs`: the step counted over every epoch (``done`` before this one), the
    schedule's rate of the step (``lr_of_step``, per-step schedules) or of the epoch (``lr``)."""
    on_step(done + step + 1, {**values, "lr": lr_of_step(step) if lr_of_step is not None else lr})


def run_epochs(method: PromptMethod, loader: Any, loss_fn: Callable[[Tensor, Tensor], LossTerms], state: LoopState,
               cfg: ExperimentConfig, device: torch.device, ctx: DistContext, *, checkpoints: Path, progress: bool,
               validate: Callable[[], float] | None, record: Callable[[dict[str, Any]], None],
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, Any]]:
    """Train from ``state.start_epoch`` to ``state.max_epoch``; returns the history (one record per epoch).

    Each epoch: the learning rate of the schedule (set once, or before every step with ``optim.scheduler_step:
    iteration``; the record's ``lr`` is the epoch's first), the data-loader workers reseeded, one pass
    (:func:`train_one_epoch`), ``method.on_epoch_end``, the validation accuracy every ``train.eval_every``
    epochs (``validate``, None without a validation split), ``record(epoch record)`` (the run's log), and a
    checkpoint (rank 0) every ``train.checkpoint_every`` epochs and after the last. ``on_step(step, values)``
    gets every optimiser step's values (:func:`train_one_epoch`'s, with the schedule's ``lr``); ``step`` counts the
    steps of every epoch, from 1.
    """
    optimizer, max_epoch, history = state.optimizer, state.max_epoch, state.history
    per_step = cfg.optim.scheduler_step == "iteration"
    epochs = tqdm(range(state.start_epoch, max_epoch), desc="epochs", disable=not progress,
                  initial=state.start_epoch, total=max_epoch)
    for epoch in epochs:
        lr_of_step = functools.partial(lr_at_step, epoch, cfg=cfg.optim, max_epoch=max_epoch,
                                       steps_per_epoch=state.steps_per_epoch)
        lr = lr_of_step(0)
        set_lr(optimizer, lr, warmup=epoch < cfg.optim.warmup_epoch)
        reseed_worker_rng(ctx, cfg.train.seed, epoch)
        step_hook = None if on_step is None else functools.partial(
            _report_step, on_step, epoch * state.steps_per_epoch, lr_of_step if per_step else None, lr)
        stats = train_one_epoch(method, loader, optimizer, device, cfg, epoch, ctx=ctx, loss_fn=loss_fn,
                                progress=progress, lr_at=lr_of_step if per_step else None, on_step=step_hook)
        method.on_epoch_end(epoch, max_epoch)  # e.g. PromptSRC's prompt aggregation
        entry = {"epoch": epoch + 1, "lr": lr, **stats}
        if cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0 and validate is not None:
            entry["val_accuracy"] = validate()
        history.append(entry)
        epochs.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['accuracy']:.1f}", lr=f"{lr:.2e}")
        record(entry)
        if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == max_epoch:
            main_only(ctx, functools.partial(save_training_state, checkpoints, epoch, method, optimizer,
                                             extra={"history": history}, keep=cfg.train.keep_checkpoints))
    return history
