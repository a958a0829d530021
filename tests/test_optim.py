"""CoOp's schedule: our closed form equals Dassl's ConstantWarmupScheduler(CosineAnnealingLR) stepped per epoch."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from vlprompt.config import OptimConfig, config_from_dict
from vlprompt.core.errors import ConfigError
from vlprompt.engine.optim import build_optimizer, default_max_epoch, lr_at_epoch, lr_at_step


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


def _first_adamw_update(eps: float | None) -> torch.Tensor:
    """One step of vlprompt's AdamW (optim.eps = ``eps``) on a small gradient, from weights of 1."""
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = build_optimizer([p], OptimConfig(name="adamw", lr=0.001, weight_decay=0.01, eps=eps))
    p.grad = torch.tensor([1e-5, -2e-5, 3e-4], dtype=torch.float64)
    opt.step()
    return p.detach().clone()


def test_adamw_eps_reaches_the_optimiser():
    """Tip-Adapter-F's AdamW(eps=1e-4) (gaopengcuhk/Tip-Adapter main.py l.72): the first update, by hand, is
    p (1 - lr wd) - lr g / (|g| + eps) (bias-corrected moments m = g, v = g^2); torch's 1e-8 moves the weights
    by ~lr instead of ~lr |g| / eps for these small gradients."""
    g = torch.tensor([1e-5, -2e-5, 3e-4], dtype=torch.float64)
    by_hand = 1.0 * (1 - 0.001 * 0.01) - 0.001 * g / (g.abs() + 1e-4)
    torch.testing.assert_close(_first_adamw_update(1e-4), by_hand, rtol=0, atol=1e-12)
    default = _first_adamw_update(None)  # torch's default, as before the option existed
    torch.testing.assert_close(default, 1.0 * (1 - 0.001 * 0.01) - 0.001 * g / (g.abs() + 1e-8), rtol=0, atol=1e-12)
    assert (default - by_hand).abs().min() > 1e-4


@pytest.mark.parametrize("iterations,min_lr", [(None, 0.0), (10, 0.0), (10, 1e-4)])
def test_per_iteration_cosine_is_torch_cosine_annealing_stepped_every_step(iterations, min_lr):
    """``scheduler_step: iteration`` = CosineAnnealingLR(T_max, eta_min) stepped after every optimiser step, T_max =
    max_epoch x steps per epoch (Tip-Adapter main.py l.73, l.105-106) or optim.iterations (CLIP-LoRA lora.py
    l.76: total_iters, eta_min 1e-6 = optim.min_lr; vlprompt's extra steps up to the whole epoch stay at the end
    of the cosine)."""
    steps_per_epoch = 4
    cfg = OptimConfig(name="adamw", lr=0.001, warmup_epoch=0, scheduler_step="iteration", min_lr=min_lr,
                      **({"max_epoch": 5} if iterations is None else {"iterations": iterations}))
    max_epoch = 5 if iterations is None else 3  # 10 steps rounded up to 3 epochs of 4
    t_max = iterations or max_epoch * steps_per_epoch
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = CosineAnnealingLR(opt, T_max=t_max, eta_min=min_lr)
    ours = [lr_at_step(e, s, cfg, max_epoch, steps_per_epoch) for e in range(max_epoch) for s in range(steps_per_epoch)]
    for i in range(t_max):
        assert ours[i] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    assert ours[t_max:] == pytest.approx([min_lr] * (len(ours) - t_max), abs=1e-15)
    assert len(set(ours[:steps_per_epoch])) == steps_per_epoch  # it changes within an epoch
    by_epoch = OptimConfig(name="adamw", lr=0.001, warmup_epoch=0, max_epoch=5)  # the default: unchanged
    assert [lr_at_step(e, 2, by_epoch, 5, 4) for e in range(5)] == [lr_at_epoch(e, by_epoch, 5) for e in range(5)]


@pytest.mark.parametrize("options,match", [
    ({"name": "adamw", "eps": 0}, r"optim.eps must be > 0"),
    ({"name": "adamw", "eps": "tiny"}, r"optim.eps must be float or null"),
    ({"eps": 1e-4}, r"optim.eps is AdamW's epsilon.*optim.name sgd"),
    ({"scheduler_step": "batch"}, r"optim.scheduler_step must be one of epoch, iteration"),
    ({"lr": 0.001, "min_lr": 0.01}, r"optim.min_lr .* must be below optim.lr"),
])
def test_bad_eps_and_scheduler_step_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"method": {"name": "coop"}, "data": {"dataset": "dtd"}, "optim": options})
