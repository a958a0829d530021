"""CoOp's schedule: our closed form equals Dassl's ConstantWarmupScheduler(CosineAnnealingLR) stepped per epoch."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from vlprompt.config import OptimConfig
from vlprompt.engine.optim import build_optimizer, default_max_epoch, lr_at_epoch


class _DasslConstantWarmup(LRScheduler):
    """Dassl's ``ConstantWarmupScheduler`` (dassl/optim/lr_scheduler.py), transcribed for the test."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


@pytest.mark.parametrize("max_epoch", [5, 50, 200])
def test_lr_matches_dassl_reference(max_epoch):
    cfg = OptimConfig(max_epoch=max_epoch)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = _DasslConstantWarmup(opt, CosineAnnealingLR(opt, T_max=max_epoch), 1, cfg.warmup_lr)
    for epoch in range(max_epoch):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at_epoch(epoch, cfg, max_epoch), rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()
    assert lr_at_epoch(0, cfg, max_epoch) == 1e-5
    assert lr_at_epoch(1, cfg, max_epoch) == pytest.approx(0.002)
    assert lr_at_epoch(max_epoch - 1, cfg, max_epoch) > 0


def test_sgd_hyperparameters():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimConfig())
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.002, 0.9, 5e-4)


@pytest.mark.parametrize("dataset,shots,epochs", [
    ("oxford_pets", 1, 50), ("oxford_pets", 2, 100), ("dtd", 4, 100), ("dtd", 8, 200), ("eurosat", 16, 200),
    ("imagenet", 1, 50), ("imagenet", 16, 50),
])
def test_default_epochs_follow_coop(dataset, shots, epochs):
    assert default_max_epoch(dataset, shots) == epochs
