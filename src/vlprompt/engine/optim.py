"""Optimiser and learning-rate schedule of CoOp (Dassl's ``build_optimizer`` / ``build_lr_scheduler``).

Dassl steps the scheduler once per epoch. With ``ConstantWarmupScheduler(successor=
CosineAnnealingLR(T_max=max_epoch), warmup_epoch=1, cons_lr=1e-5)`` the rate of epoch ``e`` is

    e <  W:  warmup_lr
    e >= W:  lr * (1 + cos(pi * (e - W) / max_epoch)) / 2

i.e. the cosine starts after the warm-up and runs over ``max_epoch`` steps, so it never reaches
zero within training (the last epoch uses ``(max_epoch - 1 - W) / max_epoch`` of the period).

With ``optim.scheduler_step: iteration`` the cosine is stepped after every optimisation step instead, as
Tip-Adapter-F (gaopengcuhk/Tip-Adapter@d0e2d6f ``main.py`` l.73: ``CosineAnnealingLR(optimizer,
cfg['train_epoch'] * len(train_loader_F))``, ``scheduler.step()`` after each ``optimizer.step()`` l.105-106),
APE-T (yangyangyang127/APE@70460de ``main.py`` l.117, l.152-153) and CLIP-LoRA (MaxZanella/CLIP-LoRA@358f0d7
``lora.py`` l.76, l.122) do. Step ``s`` (0-based, counted over the whole run) of ``T`` steps uses::

    s <  W * S:  warmup_lr
    s >= W * S:  lr * (1 + cos(pi * min(s - W * S, T) / T)) / 2

with ``S`` the steps per epoch, ``W`` the warm-up epochs (0 in those methods) and ``T = optim.iterations`` when
given (CLIP-LoRA's ``total_iters``; the extra steps of vlprompt's last whole epoch stay at the end of the
cosine) else ``max_epoch * S``: the rate of ``CosineAnnealingLR(T_max=T)`` stepped per iteration.
``optim.min_lr`` is the cosine's floor (``eta_min``: ``min_lr + (lr - min_lr) (1 + cos) / 2``; CLIP-LoRA
``lora.py`` l.76: ``eta_min=1e-6``). ``optim.eps`` is AdamW's epsilon (Tip-Adapter-F ``main.py`` l.72:
``eps=1e-4``; APE-T: its config's ``eps``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from vlprompt.config import OptimConfig
from vlprompt.data.registry import get_dataset_info


def lr_at_epoch(epoch: int, cfg: OptimConfig, max_epoch: int) -> float:
    """Learning rate used during ``epoch`` (0-based), as Dassl's per-epoch scheduler gives it."""
    if epoch < cfg.warmup_epoch:
        return cfg.warmup_lr
    if cfg.lr_scheduler == "constant":
        return cfg.lr
    return _cosine(cfg, (epoch - cfg.warmup_epoch) / max_epoch)


def _cosine(cfg: OptimConfig, fraction: float) -> float:
    """``min_lr + (lr - min_lr) (1 + cos(pi f)) / 2``: CosineAnnealingLR's closed form (``eta_min = optim.min_lr``)."""
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def lr_at_step(epoch: int, step: int, cfg: OptimConfig, max_epoch: int, steps_per_epoch: int) -> float:
    """Learning rate of step ``step`` (0-based) of ``epoch`` (0-based): :func:`lr_at_epoch` with
    ``optim.scheduler_step: epoch``; with ``iteration`` the cosine of the module doc, a function of the step
    counted over the run (so a run resumed at an epoch boundary continues the same sequence)."""
    if cfg.scheduler_step == "epoch":
        return lr_at_epoch(epoch, cfg, max_epoch)
    if epoch < cfg.warmup_epoch:
        return cfg.warmup_lr
    if cfg.lr_scheduler == "constant":
        return cfg.lr
    total = cfg.iterations if cfg.iterations is not None else max_epoch * steps_per_epoch
    done = min((epoch - cfg.warmup_epoch) * steps_per_epoch + step, total)
    return _cosine(cfg, done / total)


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig,
                    lr_scales: Sequence[float] | None = None) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, weight decay 5e-4 by default) as CoOp, Adam (Dassl's, TCP) or AdamW (epsilon ``optim.eps``,
    torch's 1e-8 when null). ``lr_scales`` (one per parameter, from the method's
    :meth:`~vlprompt.methods.base.PromptMethod.lr_scales`) puts the parameters of each multiplier other than 1 in a
    group of their own (key ``lr_scale``, read by :func:`set_lr`); without any, one group as before."""
    params = list(params)
    if lr_scales is not None and any(s != 1.0 for s in lr_scales):
        if len(lr_scales) != len(params):
            raise ValueError(f"{len(lr_scales)} learning-rate multipliers for {len(params)} parameters")
        groups: dict[float, list[nn.Parameter]] = {}
        for p, scale in zip(params, lr_scales):
            groups.setdefault(float(scale), []).append(p)
        params = [{"params": ps, "lr_scale": scale} for scale, ps in groups.items()]  # type: ignore[misc]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":  # Dassl's "adam" (dassl/optim/optimizer.py l.88-94): weight decay added to the gradient
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps or 1e-8)
    if cfg.eps is None:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, *, warmup: bool = False) -> None:
    """Every group's rate: ``lr`` times its ``lr_scale`` (:func:`build_optimizer`), or ``lr`` alone during the warm-up
    (Dassl's ``ConstantWarmupScheduler`` gives every group the constant warm-up rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr if warmup else lr * group.get("lr_scale", 1.0)


def default_max_epoch(dataset: str, shots: int) -> int:
    """The epochs ``dataset`` declares (``DatasetInfo.default_epochs``; ImageNet: 50 for every K), else
    CoOp's rule: 50 for 1 shot, 100 for 2/4 shots, 200 for 8/16 shots."""
    declared = get_dataset_info(dataset).default_epochs
    if declared is not None:
        return declared
    if shots == 1:
        return 50
    if shots in (2, 4):
        return 100
    if shots in (8, 16):
        return 200
    return 50 if shots == -1 else (100 if shots < 8 else 200)


def epochs_for(cfg: OptimConfig, dataset: str, shots: int, steps_per_epoch: int) -> int:
    """The run's epochs: ``optim.max_epoch``; or ``optim.iterations`` steps rounded up to whole epochs of
    ``steps_per_epoch`` steps (so at least that many steps run); else CoOp's :func:`default_max_epoch`."""
    if cfg.iterations is not None:
        return max(1, math.ceil(cfg.iterations / steps_per_epoch))
    return cfg.max_epoch or default_max_epoch(dataset, shots)
