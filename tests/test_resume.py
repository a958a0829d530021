"""A run interrupted (exception or SIGKILL) and resumed ends with the same prompt as an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import vlprompt.engine.loop as loop_mod
import vlprompt.engine.trainer as trainer_mod
from vlprompt.config import config_from_dict
from vlprompt.core.errors import VlpromptError
from vlprompt.engine.checkpoint import read_prompt

from conftest import tiny_config, write_config

EPOCHS = 5


def _cfg(tmp_path, root, name, **train):
    raw = tiny_config(tmp_path, root, optim={"max_epoch": EPOCHS},
                      data={"augment": True}, train={"output_dir": str(tmp_path / name), **train})
    return raw


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_imagefolder):
    tmp = tmp_path_factory.mktemp("ref")
    metrics = trainer_mod.train(config_from_dict(_cfg(tmp, tiny_imagefolder, "full")))
    tensors, _ = read_prompt(tmp / "full" / "prompt.safetensors")
    return tensors["prompt_learner.ctx"], metrics


class _Killed(Exception):
    pass


def test_resume_with_a_changed_config_is_refused(tmp_path, tiny_imagefolder, monkeypatch):
    raw = _cfg(tmp_path, tiny_imagefolder, "changed")
    original = loop_mod.save_training_state

    def die(folder, epoch, *args, **kwargs):
        original(folder, epoch, *args, **kwargs)
        raise _Killed()

    monkeypatch.setattr(loop_mod, "save_training_state", die)
    with pytest.raises(_Killed):
        trainer_mod.train(config_from_dict(raw))
    monkeypatch.setattr(loop_mod, "save_training_state", original)
    raw["optim"]["batch_size"] = 2  # optim.lr / optim.max_epoch may change (tests/test_hostile.py)
    with pytest.raises(VlpromptError, match=r"differs in optim\.batch_size"):
        trainer_mod.train(config_from_dict(raw), resume=True)


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_during_training_then_resume(tmp_path, tiny_imagefolder, reference):
    """A real SIGKILL of the CLI process once checkpoints appear; resuming gives the reference prompt."""
    ref_ctx, _ = reference
    raw = _cfg(tmp_path, tiny_imagefolder, "killed")
    cfg = write_config(tmp_path / "cfg.yaml", **raw)
    cmd = [sys.executable, "-m", "vlprompt.cli.main", "train", "-c", str(cfg)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.suffix == ".safetensors" for p in ckpts.iterdir()):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    # never a half-written file: every checkpoint present is complete and readable
    for p in ckpts.iterdir():
        assert not p.name.endswith(".tmp") or p.name.startswith(".")
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tensors, _ = read_prompt(tmp_path / "killed" / "prompt.safetensors")
    torch.testing.assert_close(tensors["prompt_learner.ctx"], ref_ctx, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["epochs"] == EPOCHS


@pytest.mark.slow
def test_cached_features_give_the_same_prompt_as_encoding_every_batch(tmp_path, tiny_imagefolder):
    prompts = {}
    for cache in (True, False):
        raw = tiny_config(tmp_path, tiny_imagefolder, optim={"max_epoch": 4},
                          data={"augment": False, "cache_features": cache},
                          train={"output_dir": str(tmp_path / f"cache{cache}")})
        metrics = trainer_mod.train(config_from_dict(raw))
        prompts[cache] = (read_prompt(tmp_path / f"cache{cache}" / "prompt.safetensors")[0], metrics)
    torch.testing.assert_close(prompts[True][0]["prompt_learner.ctx"], prompts[False][0]["prompt_learner.ctx"],
                               rtol=1e-4, atol=1e-5)
    assert [h["loss"] for h in prompts[True][1].history] == pytest.approx(
        [h["loss"] for h in prompts[False][1].history], rel=1e-4)


@pytest.mark.slow
def test_cached_augmented_views_train_and_resume_exactly(tmp_path, tiny_imagefolder, monkeypatch):
    def raw(name):
        return tiny_config(tmp_path, tiny_imagefolder, optim={"max_epoch": 4}, data={"augment": True,
                           "augment_views": 3}, train={"output_dir": str(tmp_path / name)})

    full = trainer_mod.train(config_from_dict(raw("full")))
    assert len(full.history) == 4
    original = loop_mod.save_training_state

    def die(folder, epoch, *a, **k):
        original(folder, epoch, *a, **k)
        if epoch == 1:
            raise _Killed()

    monkeypatch.setattr(loop_mod, "save_training_state", die)
    with pytest.raises(_Killed):
        trainer_mod.train(config_from_dict(raw("cut")))
    monkeypatch.setattr(loop_mod, "save_training_state", original)
    trainer_mod.train(config_from_dict(raw("cut")), resume=True)
    a = read_prompt(tmp_path / "full" / "prompt.safetensors")[0]["prompt_learner.ctx"]
    b = read_prompt(tmp_path / "cut" / "prompt.safetensors")[0]["prompt_learner.ctx"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_per_iteration_schedule_resumes_with_the_rates_of_an_uninterrupted_run(tmp_path, tiny_imagefolder,
                                                                               monkeypatch):
    """``optim.scheduler_step: iteration`` (Tip-Adapter-F's CosineAnnealingLR over train_epoch x len(loader),
    Tip-Adapter main.py l.73): a run stopped after its first epoch and resumed sets the same rate before every
    step as an uninterrupted run, and ends with the same prompt."""
    def raw(name):  # 12 training images, batches of 4: 3 steps per epoch, 9 in all
        return tiny_config(tmp_path, tiny_imagefolder, data={"augment": False},
                           optim={"name": "adamw", "eps": 1e-4, "max_epoch": 3, "warmup_epoch": 0,
                                  "scheduler_step": "iteration"},
                           train={"output_dir": str(tmp_path / name)})

    rates: list[float] = []
    original_set_lr, original_save = loop_mod.set_lr, loop_mod.save_training_state
    monkeypatch.setattr(loop_mod, "set_lr", lambda opt, lr, **kw: (rates.append(lr), original_set_lr(opt, lr, **kw)))
    trainer_mod.train(config_from_dict(raw("full")))
    full, ref = list(rates), read_prompt(tmp_path / "full" / "prompt.safetensors")[0]["prompt_learner.ctx"]
    per_step = [r for i, r in enumerate(full) if i % 4]  # each epoch: its first rate, then one before each step
    assert per_step == pytest.approx([0.01 * (1 + math.cos(math.pi * i / 9)) / 2 for i in range(9)], rel=1e-12)

    def die(folder, epoch, *args, **kwargs):
        original_save(folder, epoch, *args, **kwargs)
        raise _Killed()

    monkeypatch.setattr(loop_mod, "save_training_state", die)
    with pytest.raises(_Killed):
        trainer_mod.train(config_from_dict(raw("stopped")))
    monkeypatch.setattr(loop_mod, "save_training_state", original_save)
    rates.clear()
    trainer_mod.train(config_from_dict(raw("stopped")), resume=True)
    assert rates == full[4:]
    torch.testing.assert_close(read_prompt(tmp_path / "stopped" / "prompt.safetensors")[0]["prompt_learner.ctx"],
                               ref, rtol=0, atol=1e-6)
