"""Data-parallel training under torchrun (2 gloo processes on CPU) equals one process; torch.compile option.

The multi-process tests launch ``python -m torch.distributed.run --standalone --nproc_per_node=2`` on
the tiny random ViT and the procedural ``world_shapes`` dataset (no augmentation: cached features, the
path where 1 and N processes are exactly the same computation up to float summation order).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vlprompt.config import config_from_dict
from vlprompt.core.errors import ConfigError
from vlprompt.engine.checkpoint import read_prompt
from vlprompt.engine.distributed import DistContext, check_batch_size, shard
from vlprompt.engine.features import feature_loader

from conftest import write_config

EPOCHS = 4
# LoCoOp: its regulariser is a mean over the selected patches of the whole global batch (all ranks)
LOCOOP = {"name": "locoop", "n_ctx": 4, "lambda_value": 0.5, "top_k": 3}


def _raw(out: Path, method: dict | None = None, **optim) -> dict:
    return {
        "method": method or {"name": "coop", "n_ctx": 4},
        "backbone": {"model": "vlprompt-test-vit", "pretrained": None},
        "data": {"dataset": "world_shapes", "shots": 2, "num_workers": 0, "augment": False,
                 "options": {"n_train": 2, "n_val": 1, "n_test": 1, "image_size": 32}},
        "optim": {"max_epoch": EPOCHS, "batch_size": 8, "lr": 0.05, "warmup_epoch": 0, **optim},
        "train": {"output_dir": str(out), "device": "cpu", "progress": False, "tensorboard": True},
    }


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _learned(run: Path) -> dict[str, torch.Tensor]:
    return read_prompt(run / "prompt.safetensors")[0]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _assert_same_run(one: Path, two: Path) -> None:
    a, b = _learned(one), _learned(two)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    m1, m2 = _metrics(one), _metrics(two)
    assert [h["loss"] for h in m2["history"]] == pytest.approx([h["loss"] for h in m1["history"]], rel=1e-5)
    assert [h["accuracy"] for h in m2["history"]] == [h["accuracy"] for h in m1["history"]]
    assert m2["test"]["accuracy"] == m1["test"]["accuracy"]
    assert m2["test"]["per_class"] == m1["test"]["per_class"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One-process reference runs (CoOp, CoCoOp, LoCoOp), in this process."""
    from vlprompt.engine.trainer import train

    tmp = tmp_path_factory.mktemp("single")
    train(config_from_dict(_raw(tmp / "coop")))
    train(config_from_dict(_raw(tmp / "cocoop", {"name": "cocoop", "n_ctx": 4})))
    train(config_from_dict(_raw(tmp / "locoop", LOCOOP)))
    return tmp


# ------------------------------------------------------------------------------------ sampling (no processes)
@pytest.mark.parametrize(("n", "bs"), [(24, 8), (25, 8), (5, 8)])
def test_the_batch_sampler_shuffles_exactly_like_the_dataloader(n, bs):
    x, y = torch.arange(n).float(), torch.arange(n)
    torch.manual_seed(3)
    ref = [b[1].tolist() for _ in range(3) for b in DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True,
                                                                drop_last=n >= bs)]
    after_ref = torch.rand(2)
    torch.manual_seed(3)
    ours = [b[1].tolist() for _ in range(3) for b in feature_loader(x, y, batch_size=bs)]
    assert ours == ref
    torch.testing.assert_close(torch.rand(2), after_ref)  # same RNG use: resume and later draws unchanged


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_slices_partition_a_global_batch_contiguously(world):
    batch = list(range(100, 112))
    parts = [shard(batch, r, world) for r in range(world)]
    assert sum(parts, []) == batch
    assert {len(p) for p in parts} == {12 // world}


def test_a_batch_size_not_divisible_by_the_processes_is_one_clear_error():
    ctx = DistContext(rank=0, world_size=3)
    with pytest.raises(ConfigError, match=r"optim.batch_size \(8\) must be divisible by the number of processes \(3\)"):
        check_batch_size(ctx, 8, 24)
    with pytest.raises(ConfigError, match="fewer than the 3 processes"):
        check_batch_size(ctx, 9, 2)
    check_batch_size(ctx, 9, 24)
    check_batch_size(DistContext(), 7, 1)  # one process: anything goes


# ------------------------------------------------------------------------------------ 2 processes
@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_through_the_cli_equal_one_process_and_only_rank_0_writes(single, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", **_raw(tmp_path / "unused"))
    run = tmp_path / "ddp"
    proc = _torchrun(["-m", "vlprompt", "train", "-c", str(cfg), "-o", str(run)], cwd=tmp_path)
    _assert_same_run(single / "coop", run)
    assert proc.stdout.count("test accuracy") == 1  # rank 0 prints, rank 1 is silent
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (single / "coop").iterdir())
    assert len(list((run / "tb").iterdir())) == 1  # one TensorBoard writer
    log = (run / "log.txt").read_text()
    assert log.count("epoch=1 ") == 1 and "data parallel: 2 processes (cpu), global batch 8 = 2 x 4" in log
    assert [p.name for p in (run / "checkpoints").iterdir()] != []


_DRIVER = textwrap.dedent('''
    """Run by torchrun: the new methods' runs; CoCoOp; LoCoOp; a CoOp run stopped on rank 0 after epoch 2, then
    resumed; a bad batch size."""
    import json, os, sys
    import vlprompt.engine.loop as loop_mod
    import vlprompt.engine.trainer as trainer_mod
    from vlprompt.config import load_config
    from vlprompt.engine.distributed import shutdown

    cocoop, coop, bad, out, locoop = sys.argv[1:6]
    rank = int(os.environ["RANK"])
    report = {}
    for path in sys.argv[6:]:  # the new methods' runs (test_new_methods_under_two_processes_equal_one_process)
        trainer_mod.train(load_config(path))
    trainer_mod.train(load_config(cocoop))
    trainer_mod.train(load_config(locoop))
    original = loop_mod.save_training_state

    def save_then_fail(folder, epoch, *args, **kwargs):
        path = original(folder, epoch, *args, **kwargs)
        if epoch + 1 == 2:
            raise RuntimeError("disk on fire")
        return path

    loop_mod.save_training_state = save_then_fail
    try:
        trainer_mod.train(load_config(coop))
    except Exception as exc:
        report["stopped"] = [type(exc).__name__, str(exc), getattr(exc, "relayed", False)]
    loop_mod.save_training_state = original
    report["resumed_test_accuracy"] = trainer_mod.train(load_config(coop), resume=True).accuracy
    try:
        trainer_mod.train(load_config(bad))
    except Exception as exc:
        report["bad"] = [type(exc).__name__, str(exc), getattr(exc, "relayed", False)]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    shutdown()
''')


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One torchrun (2 processes) of _DRIVER for the two tests below: the new methods' runs (in ``new/``), then
    CoCoOp, LoCoOp, the stopped and resumed CoOp and the bad batch size (one process start-up, not two)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cocoop = write_config(tmp / "cocoop.yaml", **_raw(tmp / "cocoop", {"name": "cocoop", "n_ctx": 4}))
    locoop = write_config(tmp / "locoop.yaml", **_raw(tmp / "locoop", LOCOOP))
    coop = write_config(tmp / "coop.yaml", **_raw(tmp / "coop"))
    bad = write_config(tmp / "bad.yaml", **_raw(tmp / "bad", batch_size=7))
    new = [str(write_config(tmp / f"new_{name}.yaml", **_raw(tmp / "new" / name, method, lr=0.01)))
           for name, method in NEW_METHODS.items()]
    driver = tmp / "driver.py"
    driver.write_text(_DRIVER)
    _torchrun([str(driver), str(cocoop), str(coop), str(bad), str(tmp), str(locoop), *new], cwd=tmp)
    return tmp


@pytest.mark.slow
@pytest.mark.subprocess
def test_cocoop_locoop_resume_and_errors_under_two_processes(single, two_process_runs):
    tmp_path = two_process_runs
    _assert_same_run(single / "cocoop", tmp_path / "cocoop")
    _assert_same_run(single / "locoop", tmp_path / "locoop")
    _assert_same_run(single / "coop", tmp_path / "coop")  # stopped after epoch 2 and resumed: same result
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["stopped"] == ["RuntimeError", "disk on fire", False]
    assert r1["stopped"][1] == "rank 0 failed: RuntimeError: disk on fire" and r1["stopped"][2] is True
    assert r0["resumed_test_accuracy"] == r1["resumed_test_accuracy"] == _metrics(single / "coop")["test"]["accuracy"]
    assert r0["bad"][0] == "ConfigError" and "must be divisible by the number of processes (2)" in r0["bad"][1]
    assert r1["bad"][1] == r0["bad"][1] and (r0["bad"][2], r1["bad"][2]) == (False, True)  # the CLI prints it once
    assert not (tmp_path / "bad").exists()  # refused before anything is written


# ------------------------------------------------------------------------------------ torch.compile
def _step_losses(backend: str | bool) -> tuple[float, float]:
    """Loss before and after one SGD step of a freshly built CoOp (seeded), compiled or not."""
    from vlprompt.backbones.openclip import load_backbone
    from vlprompt.engine.loop import loss_step
    from vlprompt.methods.registry import build_method, make_method_config

    backbone = load_backbone("vlprompt-test-vit")
    torch.manual_seed(0)
    method = build_method("coop", backbone, [f"shape {i}" for i in range(5)],
                          config=make_method_config("coop", {"n_ctx": 4})).train()
    feats, labels = torch.randn(8, backbone.embed_dim), torch.arange(8) % 5
    opt = torch.optim.SGD([p for _, p in method.learned_parameters()], lr=0.1, momentum=0.9)
    step = loss_step(method, backend)
    loss = step(feats, labels).total()
    loss.backward()
    opt.step()
    after = step(feats, labels).total()
    return loss.item(), after.item()


_SLOW = os.environ.get("VLPROMPT_SLOW_TESTS") == "1"


@pytest.mark.slow
@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param(True, marks=pytest.mark.skipif(
        not _SLOW or shutil.which(os.environ.get("CXX", "g++")) is None,
        reason="inductor (train.compile: true) needs a C++ compiler and takes ~60 s to compile on 2 CPU cores; "
               "run with VLPROMPT_SLOW_TESTS=1")),
])
def test_compiled_loss_step_equals_eager(backend):
    eager = _step_losses(False)
    compiled = _step_losses(backend)
    assert eager[1] != eager[0]
    assert compiled == pytest.approx(eager, abs=1e-4)


def test_an_unknown_compile_backend_is_a_clear_error():
    from vlprompt.engine.loop import loss_step

    with pytest.raises(ConfigError, match="unknown torch.compile backend 'warp9'"):
        loss_step(object(), "warp9")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train.compile"):
        config_from_dict({"data": {"dataset": "x"}, "train": {"compile": " "}})


# ------------------------------------------------------------------------------------ the new methods, 2 processes
#: one of each kind of loss / step: a per-batch penalty (KgCoOp), a method-owned gradient step (ProGrad),
#: fit then SGD (Tip-Adapter-F), fit only (linear probe), encoders modified (CLIP-LoRA; dropout off: the ranks'
#: dropout masks come from different RNG streams)
NEW_METHODS = {
    "kgcoop": {"name": "kgcoop", "n_ctx": 4, "ctx_init": None},
    "prograd": {"name": "prograd", "n_ctx": 4, "lambda_value": 0.8},
    "tip_adapter_f": {"name": "tip_adapter_f", "search_step": [20, 5], "augment_epoch": 2},
    "linear_probe": {"name": "linear_probe", "search_steps": 2},
    "clip_lora": {"name": "clip_lora", "dropout_rate": 0.0},
}

@pytest.mark.slow
@pytest.mark.subprocess
def test_new_methods_under_two_processes_equal_one_process(tmp_path, two_process_runs):
    """The runs come from the module's one torchrun (``two_process_runs``, before its CoCoOp / LoCoOp runs)."""
    from vlprompt.engine.trainer import train

    for name, method in NEW_METHODS.items():
        train(config_from_dict(_raw(tmp_path / "single" / name, method, lr=0.01)))
    for name in NEW_METHODS:
        _assert_same_run(tmp_path / "single" / name, two_process_runs / "new" / name)
    assert _metrics(two_process_runs / "new" / "linear_probe")["fit"]["C"] > 0
    log = (two_process_runs / "new" / "prograd" / "log.txt").read_text()
    assert "loss_ce=" in log and "loss_kl=" in log  # each loss term is logged
