"""Sweeps spread over jobs: plans and shards, the SLURM submission (with fake sbatch / sacct), submitit's
local executor (2 runs in parallel, one killed and resumed: same results as the sequential sweep), and
shards whose results `vlprompt report` merges."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
import yaml

from vlprompt.cli.main import main
from vlprompt.tasks.sweep import load_sweep
from vlprompt.tasks.sweep_jobs import parse_shard, plan_jobs, shard_jobs, sweep_status

BASE = {
    "method": {"name": "coop", "n_ctx": 2},
    "backbone": {"model": "vlprompt-test-rn", "pretrained": None},
    "data": {"dataset": "world_patterns", "augment": False, "num_workers": 0,
             "options": {"n_train": 2, "n_val": 1, "n_test": 2}},
    "optim": {"max_epoch": 1, "batch_size": 8},
    "train": {"device": "cpu", "tensorboard": False},
}


def _sweep(tmp_path: Path, base: dict | None = None, **extra) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    sweep = {"name": "tiny", "protocol": "fewshot", "config": str(tmp_path / "base.yaml"), "methods": ["coop"],
             "datasets": ["world_patterns"], "shots": [1], "seeds": [1, 2, 3], "output_dir": str(tmp_path / "out"),
             **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.world
def test_shards_partition_the_plan_deterministically(tmp_path):
    sw = load_sweep(_sweep(tmp_path, methods=["zeroshot", "coop"], shots=[1, 2, 4], seeds=[1, 2, 3]))
    jobs = plan_jobs(sw)
    assert len(jobs) == 2 * 3 * 3 and len({j.run_id for j in jobs}) == len(jobs)
    assert jobs[0].run_id == "zeroshot/default/world_patterns/1shots/seed1"
    for n in (1, 4, 7, 30):
        shards = [shard_jobs(jobs, i, n) for i in range(n)]
        assert sorted(j.run_id for s in shards for j in s) == sorted(j.run_id for j in jobs)  # disjoint, complete
        assert shards == [shard_jobs(plan_jobs(load_sweep(tmp_path / "sweep.yaml")), i, n) for i in range(n)]
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "1", "-1/4", "a/b", "0/0"):
        with pytest.raises(Exception, match="--shard must be i/N"):
            parse_shard(bad)
    b2n = load_sweep(_sweep(tmp_path, protocol="base2new"))
    assert [j.seed for j in plan_jobs(b2n)] == [None]  # the protocol runs its seeds itself: one job


# ------------------------------------------------------------------------------------ SLURM (fake commands)
_SBATCH = """#!/bin/bash
d="$(dirname "$0")"; n=$(( $(cat "$d/counter" 2>/dev/null || echo 1000) + 1 )); echo $n > "$d/counter"
cp "$1" "$d/sbatch_$n.sh"; echo "Submitted batch job $n"
"""
_SACCT = """#!/bin/bash
echo "JobID|State|NodeList"; cat "$(dirname "$0")/sacct_lines" 2>/dev/null; true
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", _SBATCH), ("sacct", _SACCT), ("srun", "#!/bin/bash\nexit 0\n"),
                       ("scancel", "#!/bin/bash\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def _sbatch_lines(path: Path) -> set[str]:
    return {ln for ln in path.read_text().splitlines() if ln.startswith("#SBATCH")}


@pytest.mark.subprocess
def test_slurm_submission_settings_and_rerun_submits_only_what_is_missing(tmp_path, fake_slurm, capsys):
    pytest.importorskip("submitit")
    path = _sweep(tmp_path)
    args = ["sweep", str(path), "--launcher", "slurm", "--partition", "gpu", "--account", "lab", "--gpus-per-run",
            "2", "--cpus-per-task", "8", "--time", "90", "--mem-gb", "32", "--max-parallel", "2", "--sbatch",
            "qos=high", "--no-wait"]
    assert main(args) == 0
    # 1001: the shared-work job (1 task, 1 GPU); 1002: the array of the 3 runs, after it
    shared, array = _sbatch_lines(fake_slurm / "sbatch_1001.sh"), _sbatch_lines(fake_slurm / "sbatch_1002.sh")
    common = {"#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=90", "#SBATCH --mem=32GB",
              "#SBATCH --cpus-per-task=8", "#SBATCH --nodes=1", "#SBATCH --qos=high", "#SBATCH --signal=USR2@120"}
    assert common <= shared and common <= array
    assert {"#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=1", "#SBATCH --job-name=vlprompt-tiny-shared"
            } <= shared and not any("--array" in ln or "--dependency" in ln for ln in shared)
    assert {"#SBATCH --array=0-2%2", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2",
            "#SBATCH --dependency=afterok:1001", "#SBATCH --job-name=vlprompt-tiny"} <= array
    script = (fake_slurm / "sbatch_1002.sh").read_text()
    assert "srun" in script and "-m submitit.core._submit" in script
    state = json.loads((tmp_path / "out" / "sweep_state.json").read_text())
    assert state["launcher"] == "slurm" and state["counts"]["running"] == 3
    ids = {r: e["job_id"] for r, e in state["runs"].items()}
    assert sorted(ids.values()) == ["1002_0", "1002_1", "1002_2"]
    # each task of a 2-GPU run exports torchrun's variables: the pickled callable says so
    import cloudpickle

    pickles = sorted((tmp_path / "out" / "submitit").glob("1002_*_submitted.pkl"))
    assert len(pickles) == 3
    task = cloudpickle.loads(pickles[0].read_bytes()).function
    assert task.distributed and task.job.run_id in ids

    # rerun: seed1 finished, seed2 still running, seed3 failed on its node -> only seed3 is submitted again
    by_seed = {r.rsplit("seed", 1)[1]: r for r in ids}
    done = tmp_path / "out" / by_seed["1"] / "metrics.json"
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text("{}")
    (fake_slurm / "sacct_lines").write_text(f"{ids[by_seed['2']]}|RUNNING|node1\n{ids[by_seed['3']]}|NODE_FAIL|node2\n")
    assert main(args) == 0
    assert sorted(p.name for p in fake_slurm.glob("sbatch_*.sh")) == [f"sbatch_{n}.sh" for n in (1001, 1002, 1003,
                                                                                              1004)]
    single = _sbatch_lines(fake_slurm / "sbatch_1004.sh")  # one run: a plain job, not an array
    assert "#SBATCH --dependency=afterok:1003" in single and not any("--array" in ln for ln in single)
    state = json.loads((tmp_path / "out" / "sweep_state.json").read_text())
    runs = state["runs"]
    assert runs[by_seed["1"]]["status"] == "done"
    assert runs[by_seed["2"]]["job_id"] == ids[by_seed["2"]] and runs[by_seed["2"]]["status"] == "running"
    assert runs[by_seed["3"]]["job_id"] == "1004" and runs[by_seed["3"]]["attempts"] == 2
    capsys.readouterr()
    assert main(["sweep", str(path), "--status"]) == 0
    assert "1 done, 2 running, 0 failed, 0 pending" in capsys.readouterr().out


def test_slurm_launcher_without_slurm_is_one_error_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch / srun
    assert main(["sweep", str(_sweep(tmp_path)), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --launcher slurm: no SLURM here") and "Traceback" not in err


# ------------------------------------------------------------------------------------ local executor
def _task_pids(controller_pid: int) -> list[int]:
    """The processes a submitit local job's controller started (its tasks)."""
    try:
        return [int(p) for p in Path(f"/proc/{controller_pid}/task/{controller_pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


@pytest.mark.slow
@pytest.mark.world
def test_local_executor_parallel_runs_survive_a_killed_job_and_equal_the_sequential_sweep(tmp_path, monkeypatch):
    """submitit's LocalExecutor runs the jobs (the code path of SLURM jobs): 2 runs at once; one is
    killed (SIGKILL) after its first epoch's checkpoint (of 2; images are encoded every step so an epoch
    takes a while), resubmitted, resumes, and both runs end as the sequential sweep's runs do."""
    submitit = pytest.importorskip("submitit")
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux /proc to find the job's process")
    import torch

    # The killed job never writes its result file; submitit waits _results_timeout_s (15 s) for one before the
    # launcher sees the job failed. A finished job writes it before its process ends, so 2 s change no outcome.
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 2, raising=False)

    from vlprompt.engine.checkpoint import read_prompt
    from vlprompt.tasks.launchers import LaunchOptions, launch_sweep
    from vlprompt.tasks.sweep import run_sweep

    base = {**BASE, "data": {**BASE["data"], "cache_features": False, "options": {"n_train": 4, "n_val": 1,
                                                                                  "n_test": 2}},
            "optim": {"max_epoch": 2, "batch_size": 4}, "train": {**BASE["train"], "checkpoint_every": 1}}
    path = _sweep(tmp_path, base, shots=[4], seeds=[1, 2])
    sw = load_sweep(path)
    victim = tmp_path / "out" / "coop" / "default" / "world_patterns" / "4shots" / "seed1"
    killed: list[int] = []

    def kill_after_first_checkpoint(active: dict) -> None:
        job = active.get("coop/default/world_patterns/4shots/seed1")
        if killed or job is None or not list((victim / "checkpoints").glob("epoch-*.safetensors")):
            return
        assert not (victim / "metrics.json").exists(), "the run finished before it could be killed"
        for pid in _task_pids(int(job.job_id)):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary = launch_sweep(sw, LaunchOptions(launcher="local", gpus_per_run=0, max_parallel=2, retries=1, poll_s=0.05,
                                             time_min=20), on_poll=kill_after_first_checkpoint)
    assert killed, "the victim job was not killed"
    assert summary["done"] == 2 and summary["resubmitted"] == 1 and not summary["failed"]
    state = json.loads((tmp_path / "out" / "sweep_state.json").read_text())
    assert state["counts"]["done"] == 2
    assert state["runs"]["coop/default/world_patterns/4shots/seed1"]["attempts"] == 2
    assert "resumed from epoch" in (victim / "log.txt").read_text()
    assert list((tmp_path / "out" / "shared" / "features").glob("features-*.safetensors"))  # shared test features

    seq = load_sweep(path)
    seq.output_dir = tmp_path / "sequential"
    assert not run_sweep(seq, progress=False)["failed"]
    for seed in (1, 2):
        rel = Path("coop/default/world_patterns/4shots") / f"seed{seed}"
        a = json.loads((tmp_path / "out" / rel / "metrics.json").read_text())
        b = json.loads((seq.output_dir / rel / "metrics.json").read_text())
        assert a["test"]["accuracy"] == b["test"]["accuracy"]
        assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], abs=1e-6)
        pa, _ = read_prompt(tmp_path / "out" / rel / "prompt.safetensors")
        pb, _ = read_prompt(seq.output_dir / rel / "prompt.safetensors")
        for k in pa:
            assert torch.allclose(pa[k], pb[k], atol=1e-6)


@pytest.mark.world
def test_shards_write_their_own_state_and_the_report_merges_them(tmp_path, capsys):
    path = _sweep(tmp_path, methods=["zeroshot", "coop"], seeds=[1, 2])
    assert main(["sweep", str(path), "--shard", "0/2", "--no-progress"]) == 0
    assert main(["sweep", str(path), "--shard", "1/2", "--no-progress"]) == 0
    out = tmp_path / "out"
    s0 = json.loads((out / "sweep_state.shard-0-of-2.json").read_text())
    s1 = json.loads((out / "sweep_state.shard-1-of-2.json").read_text())
    assert not set(s0["runs"]) & set(s1["runs"]) and len(s0["runs"]) + len(s1["runs"]) == 4
    assert (out / "sweep_summary.shard-0-of-2.json").is_file() and (out / "sweep_summary.shard-1-of-2.json").is_file()
    status = sweep_status(out)
    assert status["counts"]["done"] == 4 and len(status["files"]) == 2
    assert main(["report", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["fewshot"]["coop|vlprompt-test-rn"]["world_patterns"]["1"]["seeds"] == 2
    assert report["fewshot"]["zeroshot|vlprompt-test-rn"]["world_patterns"]["1"]["seeds"] == 2
    capsys.readouterr()
    assert main(["sweep", str(path), "--shard", "1/2", "--no-progress"]) == 0  # rerun: nothing left to do
    assert "0 runs done, 2 already finished" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.world
def test_a_multi_gpu_run_is_one_job_whose_tasks_train_like_torchrun(tmp_path):
    """--gpus-per-run 2: one job with 2 tasks that export torchrun's variables; on CPU (gloo) they train the
    run data-parallel, and the prompt equals the sequential (one-process) sweep's."""
    pytest.importorskip("submitit")
    import torch

    from vlprompt.engine.checkpoint import read_prompt
    from vlprompt.tasks.launchers import LaunchOptions, launch_sweep
    from vlprompt.tasks.sweep import run_sweep

    path = _sweep(tmp_path, {**BASE, "optim": {"max_epoch": 2, "batch_size": 4}}, shots=[2], seeds=[1])
    summary = launch_sweep(load_sweep(path), LaunchOptions(launcher="local", gpus_per_run=2, max_parallel=1,
                                                           retries=0, poll_s=0.2, time_min=20))
    assert summary["done"] == 1 and not summary["failed"]
    rel = Path("coop/default/world_patterns/2shots/seed1")
    log = (tmp_path / "out" / rel / "log.txt").read_text()
    assert "data parallel: 2 processes (cpu), global batch 4 = 2 x 2" in log
    seq = load_sweep(path)
    seq.output_dir = tmp_path / "sequential"
    assert not run_sweep(seq, progress=False)["failed"]
    pa, _ = read_prompt(tmp_path / "out" / rel / "prompt.safetensors")
    pb, _ = read_prompt(seq.output_dir / rel / "prompt.safetensors")
    for k in pa:
        assert torch.allclose(pa[k], pb[k], atol=1e-5)


def test_a_run_resumes_under_a_launcher_that_sets_the_shared_feature_cache(tmp_path):
    """The launchers point every run at OUT/shared/features; a run started by the sequential sweep (no cache
    folder) may be resumed that way, since a cache location changes no result. Other data options may not."""
    from vlprompt.config import config_from_dict
    from vlprompt.core.errors import VlpromptError
    from vlprompt.engine.run import RunPaths
    from vlprompt.engine.run_life import check_run_folder

    raw = {**BASE, "train": {**BASE["train"], "output_dir": str(tmp_path / "run")}}
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    paths.config.write_text(config_from_dict(raw).to_yaml())
    cached = config_from_dict({**raw, "data": {**raw["data"], "feature_cache_dir": str(tmp_path / "features")}})
    check_run_folder(paths, cached, resume=True)  # allowed
    other = config_from_dict({**raw, "data": {**raw["data"], "shots": 8}})
    with pytest.raises(VlpromptError, match="differs in data"):
        check_run_folder(paths, other, resume=True)


@pytest.mark.world
def test_shared_work_is_computed_once_and_reused(tmp_path):
    """prepare_shared computes the UPL pseudo-labels of each setting and the test features once (under a lock);
    a second call (another shard, a rerun) finds them and computes nothing."""
    from vlprompt.tasks.sweep_jobs import job_config, prepare_shared

    sw = load_sweep(_sweep(tmp_path, protocol="unsupervised", methods=["upl"], shots=[2], seeds=[1, 2]))
    jobs = plan_jobs(sw)
    assert prepare_shared(sw, jobs, log=lambda _: None) == {"pseudo_labels": 1, "features": 1}
    pseudo = tmp_path / "out" / "upl" / "default" / "world_patterns" / "2shots" / "pseudo_labels.json"
    features = sorted((tmp_path / "out" / "shared" / "features").glob("features-*.safetensors"))
    assert pseudo.is_file() and len(features) == 1
    stamps = [p.stat().st_mtime_ns for p in (pseudo, *features)]
    assert prepare_shared(sw, jobs, log=lambda _: None)["pseudo_labels"] == 0
    assert [p.stat().st_mtime_ns for p in (pseudo, *features)] == stamps  # read back, not recomputed
    assert job_config(sw, jobs[0]).data.feature_cache_dir == str(tmp_path / "out" / "shared" / "features")
