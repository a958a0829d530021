"""Issue 25 (reliability round three): run folders and resume, sweeps, the report.

Each test is named after the issue's item (``test_r3_<n>_...``; the smaller message fixes ``test_r3_msg_...``)
and failed on the code before the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vlprompt.cli.main import main
from vlprompt.engine.checkpoint import read_prompt

from conftest import tiny_config, write_config


# ------------------------------------------------------------------------------------ helpers
def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI in-process; (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _config(tmp_path: Path, root: Path, **optim) -> Path:
    """A tiny CoOp config on cached features (fast), 1 epoch unless told otherwise."""
    raw = tiny_config(tmp_path, root, optim={"max_epoch": 1, **optim}, data={"augment": False},
                      train={"output_dir": str(tmp_path / "run")})
    return write_config(tmp_path / "cfg.yaml", **raw)


def _ctx(run: Path):
    return read_prompt(run / "prompt.safetensors")[0]["prompt_learner.ctx"]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, tiny_imagefolder) -> Path:
    """A finished 1-epoch run folder (trained through the CLI); copy it before changing anything."""
    tmp = tmp_path_factory.mktemp("one_epoch")
    assert main(["train", "-c", str(_config(tmp, tiny_imagefolder))]) == 0
    return tmp / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


# ------------------------------------------------------------------------------------ 3 train longer
@pytest.mark.slow
def test_r3_3_resume_with_a_larger_max_epoch_trains_on_to_the_new_budget(tmp_path, tiny_imagefolder, one_epoch,
                                                                         capsys):
    run = _copy(one_epoch, tmp_path)
    cfg = _config(tmp_path, tiny_imagefolder)
    before, first = _ctx(run), _metrics(run)
    # the same budget: the finished run is the result, nothing is trained or rewritten
    stamp = (run / "metrics.json").stat().st_mtime_ns
    code, err = _cli(capsys, "train", "-c", cfg, "--resume")
    assert code == 0, err
    assert (run / "metrics.json").stat().st_mtime_ns == stamp

    code, err = _cli(capsys, "train", "-c", cfg, "--resume", "--set", "optim.max_epoch=3")
    assert code == 0, err
    metrics = _metrics(run)
    assert metrics["epochs"] == 3 and [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["history"][0] == first["history"][0]  # epoch 1 is the old run's, not trained again
    assert read_prompt(run / "prompt.safetensors")[1]["epochs"] == 3
    assert not (_ctx(run) == before).all(), "the prompt did not change"
    assert "optim.max_epoch changed from 1 to 3: training epochs 2-3" in (run / "log.txt").read_text()
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["max_epoch"] == 3
    # epoch 1 is warm-up (its rate does not depend on the budget) and the checkpoint restores the RNG states:
    # the extended run equals a run trained for 3 epochs from the start
    fresh = tmp_path / "fresh"
    assert main(["train", "-c", str(cfg), "-o", str(fresh), "--set", "optim.max_epoch=3"]) == 0
    assert (_ctx(run) - _ctx(fresh)).abs().max() < 1e-6
    assert [h["loss"] for h in metrics["history"]] == pytest.approx([h["loss"] for h in _metrics(fresh)["history"]])


def test_r3_3_resume_with_a_smaller_budget_is_refused_and_changes_nothing(tmp_path, tiny_imagefolder, one_epoch,
                                                                         capsys):
    run = _copy(one_epoch, tmp_path)
    cfg = _config(tmp_path, tiny_imagefolder)
    assert main(["train", "-c", str(cfg), "--resume", "--set", "optim.max_epoch=2"]) == 0
    saved = {name: (run / name).read_bytes() for name in ("metrics.json", "prompt.safetensors", "config.yaml")}
    line = _one_error_line(*_cli(capsys, "train", "-c", cfg, "--resume", "--set", "optim.max_epoch=1"))
    assert "optim.max_epoch" in line and "2 epochs" in line, line
    assert {name: (run / name).read_bytes() for name in saved} == saved


def test_r3_3_a_finished_run_without_checkpoints_is_not_trained_again_from_scratch(tmp_path, tiny_imagefolder,
                                                                                   one_epoch, capsys):
    run = _copy(one_epoch, tmp_path)
    shutil.rmtree(run / "checkpoints")
    saved = (run / "metrics.json").read_bytes(), (run / "prompt.safetensors").read_bytes()
    line = _one_error_line(*_cli(capsys, "train", "-c", _config(tmp_path, tiny_imagefolder), "--resume", "--set",
                                 "optim.max_epoch=3"))
    assert "checkpoints" in line and "finished result is kept" in line, line
    assert ((run / "metrics.json").read_bytes(), (run / "prompt.safetensors").read_bytes()) == saved


def test_r3_3_resume_with_a_larger_iterations_budget_trains_on(tmp_path, tiny_imagefolder, capsys):
    # 3 classes x 4 shots = 12 images, batches of 4: 3 steps per epoch
    cfg = _config(tmp_path, tiny_imagefolder, max_epoch=None, iterations=3)
    run = tmp_path / "run"
    assert main(["train", "-c", str(cfg)]) == 0
    assert _metrics(run)["epochs"] == 1
    before = _ctx(run)
    code, err = _cli(capsys, "train", "-c", cfg, "--resume", "--set", "optim.iterations=9")
    assert code == 0, err
    assert _metrics(run)["epochs"] == 3 and len(_metrics(run)["history"]) == 3
    assert not (_ctx(run) == before).all()
    assert "optim.iterations changed from 3 to 9: training epochs 2-3" in (run / "log.txt").read_text()
    line = _one_error_line(*_cli(capsys, "train", "-c", cfg, "--resume", "--set", "optim.iterations=4"))
    assert "optim.iterations" in line and "3 epochs" in line, line
    assert _metrics(run)["epochs"] == 3


# ------------------------------------------------------------------------------------ sweeps
def _sweep_file(tmp_path: Path, **changes) -> Path:
    raw = {"name": "s", "methods": ["zeroshot"], "datasets": ["imagefolder"], "shots": [1], "seeds": [1, 2],
           "set": ["data.root=/nowhere", "backbone.model=vlprompt-test-vit", "backbone.pretrained=null"],
           "output_dir": str(tmp_path / "out"), **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_r3_10_an_empty_shard_is_refused(tmp_path, capsys):
    line = _one_error_line(*_cli(capsys, "sweep", _sweep_file(tmp_path), "--shard", "", "--no-progress"))
    assert "--shard must be i/N" in line
    assert not (tmp_path / "out").exists()  # nothing ran


_STATE = {"sweep": "s", "protocol": "fewshot", "launcher": "shard", "shard": "0/1", "counts": {},
          "runs": {"zeroshot/default/imagefolder/1shots/seed1": {"status": "failed", "label": "x", "error": "boom",
                                                                 "folder": "OUT/seed1"}}}


@pytest.mark.parametrize("damage", ["binary", "runs a list", "runs a string", "folder an int", "entry a list",
                                    "a folder"])
def test_r3_16_status_with_a_damaged_state_file_warns_and_reports_the_rest(tmp_path, capsys, damage):
    out = tmp_path / "out"
    out.mkdir()
    good = json.loads(json.dumps(_STATE).replace("OUT", str(out)))
    (out / "sweep_state.shard-0-of-2.json").write_text(json.dumps(good))
    bad = out / "sweep_state.shard-1-of-2.json"
    run = "zeroshot/default/imagefolder/1shots/seed2"
    if damage == "binary":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00" * 20)
    elif damage == "a folder":
        bad.mkdir()
    else:
        value = {"runs a list": [1, 2], "runs a string": "seed2",
                 "folder an int": {run: {"status": "running", "folder": 7}},
                 "entry a list": {run: ["running"]}}[damage]
        bad.write_text(json.dumps({**_STATE, "runs": value}))
    capsys.readouterr()
    code = main(["sweep", str(_sweep_file(tmp_path)), "--status"])
    out_text, err = capsys.readouterr()
    assert code == 0, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and bad.name in lines[0], err
    assert "rerun" in lines[0] or "delete" in lines[0], lines[0]
    assert "1 failed" in out_text and "boom" in out_text, out_text  # the good state file is still reported


@pytest.mark.slow
@pytest.mark.world
def test_r3_16_a_shard_rerun_over_a_damaged_state_file_rewrites_it(tmp_path, capsys):
    path = _sweep_file(tmp_path, seeds=[1], datasets=["world_patterns"],
                       set=["backbone.model=vlprompt-test-vit", "backbone.pretrained=null",
                            "data.options={n_train: 2, n_val: 1, n_test: 2}"])
    state = tmp_path / "out" / "sweep_state.shard-0-of-1.json"
    state.parent.mkdir()
    state.write_text(json.dumps({**_STATE, "runs": "seed1"}))
    code, err = _cli(capsys, "sweep", path, "--shard", "0/1", "--no-progress")
    assert code == 0, err
    assert json.loads(state.read_text())["counts"]["done"] == 1


def test_r3_msg_a_second_sweep_on_the_same_folder_is_refused_at_once(tmp_path, monkeypatch, capsys):
    import vlprompt.tasks.sweep as sweep_mod

    path = _sweep_file(tmp_path)
    second: list[tuple[int, str]] = []

    def fake_run_seed(sw, cfg, folder, run_dir, dataset, shots, seed, train, *_):
        if seed == 1:  # while the first sweep runs: a second one on the same folder
            capsys.readouterr()
            code = main(["sweep", str(path), "--no-progress"])
            second.append((code, capsys.readouterr().err))
            shard = main(["sweep", str(path), "--shard", "0/2", "--no-progress"])
            second.append((shard, capsys.readouterr().err))
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text("{}")

    monkeypatch.setattr(sweep_mod, "_run_seed", fake_run_seed)
    code, err = _cli(capsys, "sweep", path, "--no-progress")
    assert code == 0, err
    assert len(second) == 2
    for code2, err2 in second:
        line = _one_error_line(code2, err2)
        assert "in use by another vlprompt sweep" in line and str(tmp_path / "out") in line, line
    summary = json.loads((tmp_path / "out" / "sweep_summary.json").read_text())
    assert summary["done"] == 2 and not summary["failed"]  # the first sweep's, untouched by the loser


def test_r3_msg_parallel_shards_of_one_sweep_are_still_allowed(tmp_path):
    from vlprompt.tasks.sweep import load_sweep
    from vlprompt.tasks.sweep_jobs import sweep_lock

    sw = load_sweep(_sweep_file(tmp_path))
    with sweep_lock(sw.output_dir, (0, 2)), sweep_lock(sw.output_dir, (1, 2)):
        pass
    with (sweep_lock(sw.output_dir, (0, 2)), pytest.raises(Exception, match="in use by another vlprompt sweep"),
          sweep_lock(sw.output_dir, None)):
        pass


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.world
def test_r3_msg_status_says_interrupted_once_the_local_launcher_is_gone(tmp_path, capsys):
    """A real `vlprompt sweep --launcher local` killed (with its jobs) while its runs are 'running'."""
    pytest.importorskip("submitit")
    base = {"method": {"name": "coop", "n_ctx": 2}, "backbone": {"model": "vlprompt-test-rn", "pretrained": None},
            "data": {"dataset": "world_patterns", "augment": False, "num_workers": 0, "cache_features": False,
                     "options": {"n_train": 4, "n_val": 1, "n_test": 2}},
            "optim": {"max_epoch": 50, "batch_size": 4}, "train": {"device": "cpu", "tensorboard": False}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = _sweep_file(tmp_path, methods=["coop"], datasets=["world_patterns"], seeds=[1], set=[],
                       config=str(tmp_path / "base.yaml"))
    state = tmp_path / "out" / "sweep_state.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "vlprompt.cli.main", "sweep", str(path), "--launcher", "local",
                             "--gpus-per-run", "0", "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                if any(r["status"] == "running" for r in json.loads(state.read_text())["runs"].values()):
                    break
            time.sleep(0.2)
        assert proc.poll() is None and state.is_file(), "the launcher ended before its run was running"
        capsys.readouterr()
        assert main(["sweep", str(path), "--status"]) == 0  # while the launcher lives: running
        assert "1 running" in capsys.readouterr().out
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its jobs
        proc.wait(timeout=60)
    deadline = time.time() + 30  # the job processes die with their group; their run lock with them
    while True:
        capsys.readouterr()
        assert main(["sweep", str(path), "--status"]) == 0
        text = capsys.readouterr().out
        if "0 running" in text or time.time() > deadline:
            break
        time.sleep(0.5)
    assert "0 running" in text and "1 interrupted" in text, text
    assert json.loads(state.read_text())["runs"]  # the state file itself is left as it was


def test_r3_msg_status_of_a_dead_shard_says_interrupted(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    state = json.loads(json.dumps(_STATE).replace("OUT", str(out)))
    state["runs"]["zeroshot/default/imagefolder/1shots/seed1"]["status"] = "running"
    (out / "sweep_state.shard-0-of-1.json").write_text(json.dumps(state))  # no process holds its lock
    capsys.readouterr()
    assert main(["sweep", str(_sweep_file(tmp_path)), "--status"]) == 0
    text = capsys.readouterr().out
    assert "0 running" in text and "1 interrupted" in text, text


# ------------------------------------------------------------------------------------ 15 report
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["method a mapping", "accuracy too large for float", "shots too large",
                                    "dataset null", "deep nesting", "seed text"])
def test_r3_15_report_skips_one_malformed_metrics_file_with_one_warning(tmp_path, one_epoch, capsys, damage):
    runs = tmp_path / "runs"
    shutil.copytree(one_epoch, runs / "good")
    bad = runs / "bad" / "metrics.json"
    bad.parent.mkdir()
    data = _metrics(one_epoch)
    if damage == "deep nesting":
        bad.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    else:
        key, value = {"method a mapping": ("method", {"name": "coop"}), "dataset null": ("dataset", None),
                      "accuracy too large for float": ("test", {**data["test"], "accuracy": 10**400}),
                      "shots too large": ("shots", 10**400), "seed text": ("seed", "one")}[damage]
        bad.write_text(json.dumps({**data, key: value}))
    code, err = _cli(capsys, "report", runs)
    assert code == 0, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and str(bad) in lines[0], err
    report = json.loads((runs / "report.json").read_text())
    assert report["fewshot"]["coop|vlprompt-test-vit"]["imagefolder"]["4"]["seeds"] == 1
    assert str(bad) in report["ignored"]


# ------------------------------------------------------------------------------------ smaller: messages
def test_r3_msg_a_symlink_loop_in_the_output_folder_is_named(tmp_path, tiny_imagefolder, capsys):
    cfg = _config(tmp_path, tiny_imagefolder)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for out in (tmp_path / "a" / "run", tmp_path / "a"):
        line = _one_error_line(*_cli(capsys, "train", "-c", cfg, "-o", out))
        assert "symbolic link loop" in line and "Free disk space" not in line, line


@pytest.mark.parametrize("value", ["1e20", "100000000000000000000", "-100000000000000000000"])
def test_r3_msg_a_huge_iterations_value_says_it_is_out_of_range(tmp_path, tiny_imagefolder, capsys, value):
    cfg = _config(tmp_path, tiny_imagefolder, max_epoch=None)
    line = _one_error_line(*_cli(capsys, "train", "-c", cfg, "--set", f"optim.iterations={value}"))
    assert "optim.iterations" in line and "out of range" in line and "int or null" not in line, line


@pytest.mark.slow
def test_r3_msg_eval_with_another_prompt_never_overwrites_the_run_eval_file(tmp_path, tiny_imagefolder, one_epoch,
                                                                           capsys):
    run = _copy(one_epoch, tmp_path)
    other = tmp_path / "kgcoop"
    raw = tiny_config(tmp_path, tiny_imagefolder, method={"name": "kgcoop"}, optim={"max_epoch": 1},
                      data={"augment": False}, train={"output_dir": str(other)})
    assert main(["train", "-c", str(write_config(tmp_path / "kg.yaml", **raw))]) == 0
    code, err = _cli(capsys, "eval", "--run", run, "--no-progress")
    assert code == 0, err
    own = run / "eval_imagefolder_test.json"
    saved = own.read_bytes()
    assert json.loads(saved)["method"] == "coop"
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--prompt", str(other / "prompt.safetensors"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert own.read_bytes() == saved  # the run's own evaluation is kept
    written = Path(printed.strip().splitlines()[-1].removeprefix("saved "))
    assert written != own and json.loads(written.read_text())["method"] == "kgcoop"
    assert not (other / "eval_imagefolder_test.json").exists()  # nor the other run's own file
