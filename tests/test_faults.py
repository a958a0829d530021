"""Fault injection: repeated SIGKILL, corrupted checkpoints, full disk, concurrent runs, NaN loss, bad images."""

from __future__ import annotations

import json
import os
import random
import shutil
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
from vlprompt.engine.checkpoint import list_checkpoints, read_prompt
from vlprompt.engine.run import RunLock

from conftest import tiny_config, write_config

EPOCHS = 6


def _raw(tmp_path, root, name, **data):
    return tiny_config(tmp_path, root, optim={"max_epoch": EPOCHS}, data={"augment": True, **data},
                       train={"output_dir": str(tmp_path / name)})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_imagefolder):
    tmp = tmp_path_factory.mktemp("ref")
    trainer_mod.train(config_from_dict(_raw(tmp, tiny_imagefolder, "full")))
    return read_prompt(tmp / "full" / "prompt.safetensors")[0]["prompt_learner.ctx"]


def _cmd(cfg):
    return [sys.executable, "-m", "vlprompt.cli.main", "train", "-c", str(cfg)]


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_many_times_at_random_points_then_resumed(tmp_path, tiny_imagefolder, reference):
    cfg = write_config(tmp_path / "cfg.yaml", **_raw(tmp_path, tiny_imagefolder, "run"))
    rng = random.Random(0)
    ckpts = tmp_path / "run" / "checkpoints"
    for attempt in range(3):
        args = _cmd(cfg) + (["--resume"] if attempt else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n_before = len(list_checkpoints(ckpts))
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:  # wait for one new epoch, then a random delay
            if len(list_checkpoints(ckpts)) > n_before:
                time.sleep(rng.uniform(0.0, 0.05))
                break
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        for p in ckpts.iterdir():  # never a visible half-written file
            assert p.name.startswith(".") or p.suffix == ".safetensors"
    done = subprocess.run(_cmd(cfg) + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ctx = read_prompt(tmp_path / "run" / "prompt.safetensors")[0]["prompt_learner.ctx"]
    torch.testing.assert_close(ctx, reference, rtol=0, atol=1e-6)


class _Stop(Exception):
    pass


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, tiny_imagefolder, reference, monkeypatch):
    raw = _raw(tmp_path, tiny_imagefolder, "run")
    original = loop_mod.save_training_state

    def stop_after_3(folder, epoch, *a, **k):
        path = original(folder, epoch, *a, **k)
        if epoch + 1 == 3:
            raise _Stop()
        return path

    monkeypatch.setattr(loop_mod, "save_training_state", stop_after_3)
    with pytest.raises(_Stop):
        trainer_mod.train(config_from_dict(raw))
    monkeypatch.setattr(loop_mod, "save_training_state", original)
    latest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    latest.write_bytes(latest.read_bytes()[:200])  # truncated
    trainer_mod.train(config_from_dict(raw), resume=True)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "skipping unusable checkpoint" in log and "resumed from epoch 2" in log
    ctx = read_prompt(tmp_path / "run" / "prompt.safetensors")[0]["prompt_learner.ctx"]
    torch.testing.assert_close(ctx, reference, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.subprocess
def test_full_disk_gives_a_clear_error_and_keeps_earlier_files(tmp_path, tiny_imagefolder):
    raw = _raw(tmp_path, tiny_imagefolder, "run")
    raw["train"]["tensorboard"] = False
    cfg = write_config(tmp_path / "cfg.yaml", **raw)
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000)); "
            "from vlprompt.cli.main import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "train", "-c", str(cfg)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "could not write" in done.stderr and "earlier files are intact" in done.stderr
    assert "Traceback (most recent call last)" not in done.stderr.split("error:")[-1]
    run = tmp_path / "run"
    assert json.loads((run / "fewshot.json").read_text())["shots"] == 4  # written before the disk filled
    assert "method:" in (run / "config.yaml").read_text()
    assert not [p for p in run.rglob("*.tmp")]  # no temporary file left behind
    assert not (run / "metrics.json").exists()


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path, tiny_imagefolder):
    raw = _raw(tmp_path, tiny_imagefolder, "run")
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run" / ".lock"), pytest.raises(VlpromptError, match="in use by another"):
        trainer_mod.train(config_from_dict(raw))
    trainer_mod.train(config_from_dict(raw))  # free again once the other process is gone


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_imagefolder, monkeypatch):
    from vlprompt.methods.coop.model import CoOp

    raw = _raw(tmp_path, tiny_imagefolder, "run")
    real = CoOp.training_loss
    calls = {"n": 0}

    def poisoned(self, feats, labels):
        out = real(self, feats, labels)
        calls["n"] += 1
        if calls["n"] > 7:  # 3 steps/epoch: epoch 3, step 2
            return out._replace(terms={k: (s * float("nan"), c) for k, (s, c) in out.terms.items()})
        return out

    monkeypatch.setattr(CoOp, "training_loss", poisoned)
    with pytest.raises(VlpromptError, match=r"loss became nan at epoch 3, step 2.*learning rate.*precision"):
        trainer_mod.train(config_from_dict(raw))
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert ckpts[-1].name == "epoch-0002.safetensors"
    from vlprompt.engine.checkpoint import read_safetensors

    t, meta = read_safetensors(ckpts[-1])
    assert meta["epoch"] == 1 and torch.isfinite(t["model.prompt_learner.ctx"]).all()


def test_unreadable_images_skip_and_report(tmp_path, tiny_imagefolder):
    root = tmp_path / "data"
    shutil.copytree(tiny_imagefolder, root)
    bad = sorted((root / "train" / "red thing").glob("*.png"))[:2]
    for p in bad:
        p.write_bytes(b"")
    raw = tiny_config(tmp_path, root, optim={"max_epoch": 1}, data={"on_bad_image": "skip"})
    metrics = trainer_mod.train(config_from_dict(raw))
    report = json.loads((tmp_path / "run" / "skipped_images.json").read_text())
    assert sorted(r["path"] for r in report) == sorted(str(p) for p in bad)
    assert metrics.skipped_images == 2
    used = json.loads((tmp_path / "run" / "fewshot.json").read_text())["train"]
    assert not {str(p) for p in bad} & {p for p, _, _ in used}
    raw["data"]["on_bad_image"] = "stop"
    raw["train"]["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(VlpromptError, match="Remove or replace it"):
        trainer_mod.train(config_from_dict(raw))


def test_unicode_class_names_are_tokenised_like_the_written_prompt(vit_backbone):
    import open_clip

    from vlprompt.methods.registry import build_method

    names = ["café crème", "日本の犬", "naïve_bayes"]
    ref_tok = open_clip.get_tokenizer("vlprompt-test-vit")([f"a photo of a {n.replace('_', ' ')}." for n in names])
    assert torch.equal(vit_backbone.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in names]), ref_tok)
    m = build_method("coop", vit_backbone, names, ctx_init="a photo of a")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(vit_backbone.model.encode_text(ref_tok), dim=-1)
        torch.testing.assert_close(m.text_features(), ref, rtol=1e-5, atol=1e-5)


def test_too_long_class_name_is_named_with_the_excess(vit_backbone):
    from vlprompt.methods.registry import build_method

    long_name = "very " * 70 + "long dog"
    with pytest.raises(VlpromptError, match=r"very very.*is \d+ tokens long.*\d+ more than the context length 77"):
        build_method("coop", vit_backbone, ["cat", long_name], n_ctx=16)
