"""``vlprompt sweep --launcher slurm|local``: a sweep's runs as jobs of a SLURM cluster, through submitit.

submitit (https://github.com/facebookincubator/submitit) pickles a Python callable, writes an sbatch
file and submits it; on the node ``python -m submitit.core._submit`` unpickles and calls it. Its
``LocalExecutor`` runs the very same pickled callables as processes of this machine, which is how the
tests run a sweep "on a cluster" without one. Here:

* every run of the sweep (:class:`~vlprompt.tasks.sweep_jobs.SweepJob`) is one job; on SLURM the runs
  of one submission form a job array whose ``%`` limit is ``max_parallel`` (the local launcher keeps at
  most ``max_parallel`` processes running);
* a run on G > 1 GPUs is one job with G tasks on one node (``--ntasks-per-node=G --gpus-per-node=G``);
  each task exports the variables ``torchrun`` would set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``), so :func:`vlprompt.engine.trainer.train` trains data-parallel
  exactly as under ``torchrun --nproc_per_node G``;
* the frozen work the runs share (pseudo-labels, test features) is computed by one job first
  (:func:`~vlprompt.tasks.sweep_jobs.prepare_shared`): the launcher waits for it, or (``wait=False``
  on SLURM) the runs depend on it (``--dependency=afterok:<id>``);
* faults: a job SLURM preempts or times out is requeued by submitit (the callable is checkpointable:
  it is resubmitted as is and the run resumes from its last checkpoint); a job that fails otherwise
  (node failure, killed process, an error) is resubmitted by the launcher up to ``retries`` times, and
  resumes the same way. The state file ``sweep_state.json`` says for every run: done, running (job id),
  failed (error and log path) or pending; running the command again submits only what is missing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.core.io import atomic_write_json
from vlprompt.tasks.sweep_jobs import (
    SweepJob,
    SweepState,
    done_file,
    execute_job,
    plan_jobs,
    prepare_shared,
    shard_jobs,
    summary_file,
    sweep_lock,
)

LAUNCHERS = ("slurm", "local")
#: SLURM states of a job that is still queued or running (it may be requeued after a preemption).
_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
          "RESIZING", "SUSPENDED", "UNKNOWN", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


@dataclass
class LaunchOptions:
    """How the runs are submitted (the ``vlprompt sweep`` options of the same names)."""

    launcher: str = "slurm"
    partition: str | None = None
    gpus_per_run: int = 1  # 0: CPU jobs; > 1: one multi-GPU (data-parallel) job per run
    cpus_per_task: int | None = None
    time_min: int = 240
    mem_gb: float | None = None
    account: str | None = None
    max_parallel: int = 16
    retries: int = 2
    wait: bool = True
    poll_s: float = 30.0
    sbatch: dict[str, str] = field(default_factory=dict)  # further #SBATCH options (e.g. qos, constraint)
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load, ...)

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got '{self.launcher}'")
        for name in ("max_parallel", "time_min"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_run < 0 or self.retries < 0:
            raise ConfigError("--gpus-per-run and --retries must be >= 0")

    @property
    def tasks_per_run(self) -> int:
        return max(1, self.gpus_per_run)


def slurm_parameters(opts: LaunchOptions, name: str) -> dict[str, Any]:
    """The ``SlurmExecutor.update_parameters`` of every run job (``#SBATCH`` lines once rendered)."""
    params: dict[str, Any] = {"job_name": f"vlprompt-{name}", "time": int(opts.time_min), "nodes": 1,
                              "ntasks_per_node": opts.tasks_per_run, "array_parallelism": opts.max_parallel,
                              "signal_delay_s": 120}
    if opts.gpus_per_run:
        params["gpus_per_node"] = opts.gpus_per_run
    if opts.partition:
        params["partition"] = opts.partition
    if opts.cpus_per_task:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.mem_gb:
        params["mem"] = f"{int(opts.mem_gb)}GB" if float(opts.mem_gb).is_integer() else f"{int(opts.mem_gb * 1024)}MB"
    if opts.account:
        params["account"] = opts.account
    if opts.sbatch:
        params["additional_parameters"] = dict(opts.sbatch)
    if opts.setup:
        params["setup"] = list(opts.setup)
    return params


def _submitit() -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise VlpromptError("--launcher needs the submitit package: pip install -e '.[slurm]' in the vlprompt "
                            "clone") from exc
    return submitit


def make_executor(opts: LaunchOptions, folder: Path, name: str, *, single: bool = False) -> Any:
    """A submitit executor writing its files (pickles, sbatch scripts, logs) to ``folder``; ``single``: for
    the shared-work job (one task, at most one GPU)."""
    submitit = _submitit()
    tasks = 1 if single else opts.tasks_per_run
    gpus = min(opts.gpus_per_run, 1) if single else opts.gpus_per_run
    if opts.launcher == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.retries)
        ex.update_parameters(timeout_min=opts.time_min, tasks_per_node=tasks, gpus_per_node=gpus)
        return ex
    if shutil.which("srun") is None or shutil.which("sbatch") is None:
        raise VlpromptError("--launcher slurm: no SLURM here (sbatch / srun not found); run the command on a "
                            "cluster login node, or use --launcher local to run the jobs on this machine")
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.retries)
    params = slurm_parameters(opts, name)
    params["ntasks_per_node"] = tasks
    if single:
        params["job_name"] += "-shared"
        params.pop("gpus_per_node", None)
        if gpus:
            params["gpus_per_node"] = gpus
    ex.update_parameters(**params)
    return ex


# ------------------------------------------------------------------------------------ job callables
class _Checkpointable:
    """submitit requeues a preempted / timed-out job whose callable has ``checkpoint``: it is resubmitted
    unchanged, and the run resumes from the checkpoints in its run folder."""

    __call__: Callable[..., Any]  # each job callable below

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


@dataclass
class RunTask(_Checkpointable):
    """One run of the sweep, called in the job (in every task of a multi-GPU job)."""

    sweep: Any
    job: SweepJob
    distributed: bool = False

    def __call__(self) -> dict[str, Any]:
        rank = 0
        if self.distributed:
            from submitit.helpers import TorchDistributedEnvironment

            rank = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True).rank
        try:
            status = execute_job(self.sweep, self.job, rank=rank)
        finally:
            if self.distributed:
                from vlprompt.engine.distributed import shutdown

                shutdown()
        return {"run": self.job.run_id, "status": status, "rank": rank}


@dataclass
class PrepareTask(_Checkpointable):
    """The frozen work shared by ``jobs``, computed once before them."""

    sweep: Any
    jobs: list[SweepJob]

    def __call__(self) -> dict[str, int]:
        return prepare_shared(self.sweep, self.jobs)


# ------------------------------------------------------------------------------------ the launcher
def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
    return (text or type(exc).__name__)[:400]


def _job_log(sjob: Any) -> str:
    return str(sjob.paths.stderr)


def _outcome(sjob: Any) -> str | None:
    """None if the submitit job finished cleanly, else its error (one line)."""
    try:
        sjob.results()
    except Exception as exc:  # FailedJobError (an exception in the job), UncompletedJobError (killed)
        return _last_line(exc)
    return None


def launch_sweep(sw: Any, opts: LaunchOptions, *, shard: tuple[int, int] | None = None, log: Any = print,
                 on_poll: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Submit the sweep's missing runs as jobs; with ``opts.wait`` watch them until every run is done or
    has failed ``opts.retries + 1`` times (resubmitting failures), else return once submitted.

    Args:
        sw: the sweep (:func:`vlprompt.tasks.sweep.load_sweep`).
        opts: launcher, resources, ``max_parallel``, ``retries``.
        shard: only shard ``(i, N)`` of the runs (state and summary files of their own).
        on_poll: called at every poll with ``{run_id: submitit job}`` of the running jobs (tests, progress).

    Returns:
        The summary (also written to ``sweep_summary[.shard-i-of-N].json``): counts of runs done now,
        already finished (``skipped``), submitted, ``resubmitted``, still ``running`` and the ``failed``
        runs with their error and log file.
    """
    opts.check()
    from vlprompt.tasks.sweep import NEEDS_TARGETS

    if sw.protocol in NEEDS_TARGETS and not sw.targets:
        raise ConfigError(f"sweep protocol {sw.protocol} needs 'targets' (the target / OOD datasets)")
    if opts.gpus_per_run > 1 and sw.protocol in ("base2new", "dg", "xd", "tta"):
        raise ConfigError(f"--gpus-per-run > 1 trains one run on several GPUs; protocol {sw.protocol} evaluates "
                          "in one process (between or after its training): use --gpus-per-run 1")
    with sweep_lock(sw.output_dir, shard):  # one launcher per sweep folder (or shard); `--status` reads the lock
        return _launch(sw, opts, shard, log, on_poll)


def _launch(sw: Any, opts: LaunchOptions, shard: tuple[int, int] | None, log: Any,
            on_poll: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """:func:`launch_sweep` once the sweep folder (or shard) is locked."""
    jobs = plan_jobs(sw)
    if shard:
        jobs = shard_jobs(jobs, *shard)
    out = Path(sw.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = SweepState(sw, opts.launcher, shard)
    folder = out / "submitit"
    executor = make_executor(opts, folder, sw.name)
    summary: dict[str, Any] = {"sweep": sw.name, "protocol": sw.protocol, "launcher": opts.launcher,
                               "shard": f"{shard[0]}/{shard[1]}" if shard else None, "jobs": len(jobs),
                               "done": 0, "skipped": 0, "submitted": 0, "resubmitted": 0, "running": 0,
                               "failed": []}
    active: dict[str, tuple[SweepJob, Any]] = {}
    todo: list[SweepJob] = []
    for job in jobs:
        entry = state.runs.get(job.run_id, {})
        if done_file(sw, job).exists():
            state.set(job, sw, "done")
            summary["skipped"] += 1
        elif opts.launcher == "slurm" and entry.get("status") == "running" and entry.get("job_id"):
            sjob = _submitit().SlurmJob(folder=folder, job_id=str(entry["job_id"]))
            slurm_state = str(sjob.get_info(mode="force").get("State") or "UNKNOWN")
            if slurm_state.split()[0].upper() in _ALIVE:
                active[job.run_id] = (job, sjob)  # submitted by an earlier call: watched, not resubmitted
                continue
            todo.append(job)
        else:
            todo.append(job)
    for job in todo:
        state.set(job, sw, "pending")
    state.save()
    if not todo and not active:
        return _finish(sw, state, summary, shard)

    dependency = None
    if todo:
        prep_ex = make_executor(opts, folder, sw.name, single=True)
        prep = prep_ex.submit(PrepareTask(sw, todo))
        log(f"shared work: job {prep.job_id} (log {_job_log(prep)})")
        if opts.wait or opts.launcher == "local":
            error = _outcome(prep)
            if error:
                raise VlpromptError(f"the job computing the shared work (pseudo-labels, features) failed: {error}; "
                                    f"log: {_job_log(prep)}. No run was submitted.")
        else:
            dependency = f"afterok:{prep.job_id}"

    attempts: dict[str, int] = {}

    def submit(batch: list[SweepJob]) -> None:
        if not batch:
            return
        if dependency:  # only the first submission (--no-wait on SLURM): it returns right after
            executor.update_parameters(dependency=dependency)
        tasks = [RunTask(sw, job, distributed=opts.gpus_per_run > 1) for job in batch]
        if opts.launcher == "slurm" and len(tasks) > 1:
            with executor.batch():
                sjobs = [executor.submit(t) for t in tasks]
        else:
            sjobs = [executor.submit(t) for t in tasks]
        for job, sjob in zip(batch, sjobs):
            attempts[job.run_id] = attempts.get(job.run_id, 0) + 1
            entry = state.runs.get(job.run_id, {})
            state.set(job, sw, "running", job_id=str(sjob.job_id), log=_job_log(sjob),
                      attempts=int(entry.get("attempts", 0)) + 1,
                      submitted_at=time.strftime("%Y-%m-%d %H:%M:%S"))
            active[job.run_id] = (job, sjob)
        state.save()

    queue = list(todo)
    slots = opts.max_parallel if opts.launcher == "local" else len(queue)
    first, queue = queue[:slots], queue[slots:]
    submit(first)
    summary["submitted"] = len(todo)
    if not opts.wait and opts.launcher == "slurm":
        summary["running"] = len(active)
        log(f"submitted {len(todo)} run(s) as SLURM jobs; state in {state.path}. Run the same command again to "
            "watch them, resubmit failures and submit what is missing")
        return _finish(sw, state, summary, shard)

    try:
        _watch(sw, opts, state, summary, active, queue, attempts, submit, on_poll, log)
    except BaseException:
        if opts.launcher == "local":  # local jobs are this process's children: do not leave them orphaned
            for _, sjob in active.values():
                sjob.cancel(check=False)
        raise
    return _finish(sw, state, summary, shard)


def _watch(sw: Any, opts: LaunchOptions, state: SweepState, summary: dict[str, Any],
           active: dict[str, tuple[SweepJob, Any]], queue: list[SweepJob], attempts: dict[str, int],
           submit: Callable[[list[SweepJob]], None], on_poll: Callable[[dict[str, Any]], None] | None,
           log: Any) -> None:
    """Poll the jobs until none is left: record finished runs, resubmit failures, keep the local slots full."""
    out = Path(sw.output_dir)
    while active or queue:
        time.sleep(opts.poll_s)
        if on_poll is not None:
            on_poll({rid: sjob for rid, (_, sjob) in active.items()})
        retry: list[SweepJob] = []
        for run_id, (job, sjob) in list(active.items()):
            if not sjob.done():
                continue
            del active[run_id]
            error = _outcome(sjob)
            if error is None and done_file(sw, job).exists():
                state.set(job, sw, "done")
                summary["done"] += 1
                continue
            error = error or "the job ended without the run's results"
            if attempts.get(run_id, 0) <= opts.retries:
                log(f"run {job.label} failed ({error}); resubmitting (attempt {attempts.get(run_id, 0) + 1} of "
                    f"{opts.retries + 1}), it resumes from its last checkpoint")
                summary["resubmitted"] += 1
                retry.append(job)
            else:
                state.set(job, sw, "failed", error=error, log=_job_log(sjob),
                          run_log=str(out / job.run_id / "log.txt"))
                summary["failed"].append({"run": job.label, "folder": str(out / job.run_id), "error": error,
                                          "log": _job_log(sjob)})
                log(f"FAILED {job.label}: {error} (log {_job_log(sjob)})")
        queue[:0] = retry
        free = max(0, (opts.max_parallel - len(active)) if opts.launcher == "local" else len(queue))
        batch = queue[:free]
        del queue[:free]
        submit(batch)
        state.save()


def _finish(sw: Any, state: SweepState, summary: dict[str, Any], shard: tuple[int, int] | None) -> dict[str, Any]:
    state.save()
    summary["state_file"] = str(state.path)
    summary["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_json(summary_file(sw.output_dir, shard), summary)
    return summary
