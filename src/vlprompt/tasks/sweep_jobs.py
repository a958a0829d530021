"""A sweep as a list of independent jobs: planning, shards, shared frozen work, state files.

:func:`vlprompt.tasks.sweep.run_sweep` runs a sweep's combinations one after another in one process.
Spread over several processes or machines (``vlprompt sweep --launcher slurm|local``, or ``--shard i/N``
in one's own job-array script) the same combinations become :class:`SweepJob` s, each run by
:func:`execute_job` into the same run folder as the sequential sweep, so ``vlprompt report`` reads the
results of every launcher and shard alike.

Frozen work shared by several jobs is computed once, before them (:func:`prepare_shared`), under a
file lock so parallel shards never compute it twice:

* the UPL pseudo-labels of an ``unsupervised`` sweep (``<folder>/pseudo_labels.json``, one per
  method x backbone x dataset x K, shared by the seeds);
* the test-split image features of every backbone x dataset x feature kind, in the disk feature cache
  ``data.feature_cache_dir`` (default ``<output_dir>/shared/features``), which every later run and
  evaluation reads instead of encoding the test images again.

Each launcher (or shard) keeps a state file in the sweep folder, ``sweep_state.json`` (or
``sweep_state.shard-<i>-of-<N>.json``): for every run its status (``done``, ``running``, ``failed``,
``pending``), job id, attempts, and the log path of a failure. :func:`sweep_status` merges all of them;
a run a local launcher or a shard left ``running`` when it ended (killed, terminated) shows as
``interrupted``; a damaged state file is left out with a warning.

One sweep at a time per folder (:func:`sweep_lock`): the sequential sweep and a launcher hold an
exclusive ``flock`` on ``<output_dir>/.sweep.lock``; a shard holds it shared (shards of one sweep run in
parallel) and its own ``.sweep.shard-<i>-of-<N>.lock`` exclusively. A second sweep on a folder in use is
refused at once; the locks die with their process, however it ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlprompt.core.errors import ConfigError, VlpromptError, user_message
from vlprompt.core.io import atomic_write_json
from vlprompt.core.validate import path_part

STATE_PREFIX = "sweep_state"
STATUSES = ("done", "running", "failed", "pending", "interrupted")
#: Launchers whose processes run on this machine: their locks say whether they still run.
_LOCAL_LAUNCHERS = ("local", "shard")


@dataclass(frozen=True)
class SweepJob:
    """One unit of work of a sweep: a seed run, or (base2new / dg / xd) a protocol over all seeds."""

    method: str | None
    backbone: tuple[tuple[str, Any], ...] | None  # the sweep's backbone mapping, hashable
    dataset: str
    shots: int
    seed: int | None  # None: the protocol function runs every seed itself

    @property
    def backbone_dict(self) -> dict[str, Any] | None:
        return dict(self.backbone) if self.backbone is not None else None

    @property
    def group(self) -> str:
        """The folder (relative to the sweep's output_dir) holding this job's seed runs."""
        from vlprompt.tasks.sweep import _backbone_name

        dataset = path_part(self.dataset)  # hf:owner/name -> hf_owner_name; registered names unchanged
        return f"{self.method or 'config'}/{_backbone_name(self.backbone_dict)}/{dataset}/{self.shots}shots"

    @property
    def run_id(self) -> str:
        """Stable name of the job: its run folder relative to the sweep's output_dir."""
        return self.group + (f"/seed{self.seed}" if self.seed is not None else "")

    @property
    def label(self) -> str:
        return (f"{self.method or 'config'} {self.dataset} {self.shots}-shot"
                + (f" seed {self.seed}" if self.seed is not None else ""))


def plan_jobs(sw: Any) -> list[SweepJob]:
    """Every job of sweep ``sw`` in :func:`run_sweep`'s order (methods x backbones x datasets x shots x seeds)."""
    from vlprompt.tasks.sweep import SEEDS_INSIDE

    seeds: Sequence[int | None] = [None] if sw.protocol in SEEDS_INSIDE else sw.seeds
    jobs: list[SweepJob] = []
    for method in sw.methods:
        for bb in sw.backbones:
            frozen = tuple(sorted(bb.items())) if bb else None
            for dataset in sw.datasets:
                for shots in sw.shots:
                    jobs.extend(SweepJob(method, frozen, dataset, shots, seed) for seed in seeds)
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N`` (``i`` is e.g. ``$SLURM_ARRAY_TASK_ID`` of ``--array=0-(N-1)``)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        got = repr(text) if (text or "").strip() else "an empty value (an unset variable?)"
        raise ConfigError(f"--shard must be i/N with 0 <= i < N (e.g. --shard $SLURM_ARRAY_TASK_ID/8), got {got}")
    return int(m.group(1)), int(m.group(2))


def shard_jobs(jobs: Sequence[SweepJob], index: int, count: int) -> list[SweepJob]:
    """Shard ``index`` of ``count``: jobs ``index, index + count, ...`` of the plan (deterministic, disjoint,
    together the whole sweep; neighbouring jobs, e.g. the seeds of one setting, go to different shards)."""
    return list(jobs[index::count])


def state_file(output_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return Path(output_dir) / f"{STATE_PREFIX}{suffix}.json"


def summary_file(output_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return Path(output_dir) / f"sweep_summary{suffix}.json"


def lock_file(output_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    """The lock of the whole sweep (``None``) or of one shard, held while it runs (:func:`sweep_lock`)."""
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return Path(output_dir) / f".sweep{suffix}.lock"


@contextlib.contextmanager
def sweep_lock(output_dir: str | Path, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold the sweep folder for one sweep (or shard ``(i, N)``) while it runs; another sweep on it is refused.

    The whole sweep (sequential, or a launcher without ``--shard``) locks the folder exclusively; a shard
    locks it shared and its own shard lock exclusively, so shards of one sweep run in parallel but never
    beside the whole sweep or the same shard twice.
    """
    from vlprompt.engine.run import RunLock

    out = Path(output_dir)
    where = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    busy = (f"sweep folder '{out}' is in use by another vlprompt sweep{where}; wait for it to finish (`vlprompt "
            "sweep SWEEP.yaml --status` shows its runs) or choose another output folder (-o). Nothing was changed.")
    with contextlib.ExitStack() as stack:
        stack.enter_context(RunLock(lock_file(out), shared=shard is not None, busy=busy, what="sweep"))
        if shard is not None:
            stack.enter_context(RunLock(lock_file(out, shard), busy=busy, what="sweep"))
        yield


# ------------------------------------------------------------------------------------ one job
def shared_dir(sw: Any) -> Path:
    return Path(sw.output_dir) / "shared"


def done_file(sw: Any, job: SweepJob) -> Path:
    """The file whose existence means ``job`` is finished (as :func:`run_sweep` decides)."""
    folder = Path(sw.output_dir) / job.run_id
    if job.seed is None:
        return folder / f"{sw.protocol}_results.json"
    names = {"ood": "ood/ood_results.json", "tta": "tta_results.json"}
    return folder / names.get(sw.protocol, "metrics.json")


def job_config(sw: Any, job: SweepJob, *, progress: bool = False, shared: bool = True) -> Any:
    """The experiment config of ``job``; with ``shared`` (jobs of a launcher, possibly in parallel) the
    feature cache ``data.feature_cache_dir`` is ``<output_dir>/shared/features`` unless the sweep sets one
    (the sequential sweep keeps its in-memory cache)."""
    from vlprompt.tasks.sweep import build_config

    folder = Path(sw.output_dir) / job.group
    seed = job.seed if job.seed is not None else sw.seeds[0]
    run_dir = folder / (f"seed{job.seed}" if job.seed is not None else "unused")
    cfg = build_config(sw, job.method, job.backbone_dict, job.dataset, job.shots, seed, run_dir, progress=progress)
    if shared and cfg.data.feature_cache_dir is None:
        cfg.data.feature_cache_dir = str(shared_dir(sw) / "features")
    return cfg


def execute_job(sw: Any, job: SweepJob, *, rank: int = 0, progress: bool = False, shared: bool = True) -> str:
    """Run (or resume) ``job`` into its run folder; ``"skipped"`` if it was finished, else ``"done"``.

    The one place a sweep job runs: the sequential ``vlprompt sweep`` (``shared=False``: no on-disk
    feature cache, no locks) and every launcher / shard call it. A job stopped at any point resumes from
    its last checkpoint (``train(resume=True)``). Under a multi-process (torchrun-style) job every rank
    calls this: ranks > 0 join the training only, rank 0 does the rest (zero-shot evaluation, OOD
    scoring) alone.
    """
    from vlprompt.engine.trainer import train
    from vlprompt.tasks.protocols import base_to_new, transfer
    from vlprompt.tasks.sweep import _run_seed

    if done_file(sw, job).exists():
        return "skipped"
    cfg = job_config(sw, job, progress=progress, shared=shared)
    folder = Path(sw.output_dir) / job.group
    if job.seed is None:
        if rank == 0:
            if sw.protocol == "base2new":
                base_to_new(cfg, sw.seeds, folder)
            else:
                transfer(cfg, sw.targets, sw.seeds, folder, kind=sw.protocol)
        return "done"
    if rank > 0:  # the other ranks of a data-parallel job: training only
        if sw.protocol == "tta":  # test-time adaptation runs on rank 0 alone
            return "done"
        if cfg.method.capabilities.trainable:
            if sw.protocol == "unsupervised":
                cfg.data.fewshot_file = str(folder / "pseudo_labels.json")
            train(cfg, resume=True)
        return "done"
    lock = shared_lock(sw, f"pseudo:{job.group}") if shared else contextlib.nullcontext()
    with lock:  # normally prepared already (prepare_shared)
        _run_seed(sw, cfg, folder, folder / f"seed{job.seed}", job.dataset, job.shots, job.seed, train, job.method,
                  job.backbone_dict)
    return "done"


# ------------------------------------------------------------------------------------ shared work
@contextlib.contextmanager
def shared_lock(sw: Any, key: str) -> Iterator[None]:
    """An exclusive lock (``fcntl.flock``, blocking) on ``key`` among every process of the sweep."""
    path = shared_dir(sw) / "locks" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX: no locking
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def prepare_shared(sw: Any, jobs: Sequence[SweepJob], *, log: Any = print) -> dict[str, int]:
    """Compute the frozen work ``jobs`` share (see the module docstring) once, each item under a lock.

    Returns ``{"pseudo_labels": n, "features": n}``: pseudo-label files computed by this call, and feature
    sets made sure of (computed, or read back from the cache when another process had computed them).
    """

    counts = {"pseudo_labels": 0, "features": 0}
    pending = [j for j in jobs if not done_file(sw, j).exists()]
    seen: set[str] = set()
    for job in pending:
        if job.group in seen:
            continue
        seen.add(job.group)
        cfg = job_config(sw, replace(job, seed=job.seed if job.seed is not None else sw.seeds[0]))
        if sw.protocol == "unsupervised" and cfg.method.capabilities.trainable:
            pseudo = Path(sw.output_dir) / job.group / "pseudo_labels.json"
            with shared_lock(sw, f"pseudo:{job.group}"):
                if not pseudo.exists():
                    from vlprompt.tasks.pseudo_label import pseudo_label

                    log(f"shared: UPL pseudo-labels of {job.group}")
                    pseudo_label(cfg, pseudo, top_k=job.shots, progress=False)
                    counts["pseudo_labels"] += 1
    feature_keys: set[tuple[Any, ...]] = set()
    for job in pending:
        if (job.seed is None and sw.protocol == "base2new") or sw.protocol == "tta":
            continue  # base2new evaluates class subsets, tta the targets' views: nothing shared across runs
        cfg = job_config(sw, replace(job, seed=job.seed if job.seed is not None else sw.seeds[0]))
        key = (json.dumps(cfg.as_dict()["backbone"], sort_keys=True, default=str), cfg.train.compute_precision,
               json.dumps(cfg.as_dict()["data"], sort_keys=True, default=str),
               cfg.method.capabilities.feature_kind)
        if key in feature_keys:
            continue
        feature_keys.add(key)
        with shared_lock(sw, "features:" + "|".join(map(str, key))):
            counts["features"] += _encode_test_split(cfg, log)
    return counts


def _encode_test_split(cfg: Any, log: Any) -> int:
    """Put the test-split features of ``cfg`` in its disk feature cache (read back if already there)."""
    from vlprompt.backbones.build import build_backbone
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.engine.features import encode_items
    from vlprompt.engine.run import autocast, resolve_device
    from vlprompt.methods.registry import build_method

    device = resolve_device(cfg.train.device)
    backbone = build_backbone(cfg.backbone, device=device)
    splits = load_dataset(cfg.data)
    if not splits.test:
        return 0
    method = build_method(cfg.method.name, backbone, splits.classnames, config=cfg.method.config).to(device)
    transform = backbone.eval_transform()
    log(f"shared: test-split features of {cfg.data.dataset} ({cfg.backbone.model}, {method.capabilities.feature_kind})")
    with autocast(device, cfg.train.compute_precision):  # the evaluation's autocast: same cache entry
        encode_items(method.encode_images, splits.test, splits.loader, transform,
                     batch_size=cfg.optim.test_batch_size, num_workers=cfg.data.num_workers,
                     cache_owner=backbone, cache_kind=method.capabilities.feature_kind,
                     disk_dir=cfg.data.feature_cache_dir)
    return 1


# ------------------------------------------------------------------------------------ state files
class SweepState:
    """The state file of one launcher or shard: ``runs[run_id] = {status, label, folder, job_id, attempts,
    log, error}``, written atomically after every change."""

    def __init__(self, sw: Any, launcher: str, shard: tuple[int, int] | None = None) -> None:
        self.path = state_file(sw.output_dir, shard)
        self.header = {"sweep": sw.name, "protocol": sw.protocol, "launcher": launcher,
                       "shard": f"{shard[0]}/{shard[1]}" if shard else None}
        old, _ = read_state(self.path)  # a damaged state file is started afresh (the result files say what is done)
        self.runs: dict[str, dict[str, Any]] = dict(old["runs"]) if old is not None else {}

    def set(self, job: SweepJob, sw: Any, status: str, **fields: Any) -> dict[str, Any]:
        entry = self.runs.setdefault(job.run_id, {})
        entry.update({"status": status, "label": job.label, "folder": str(Path(sw.output_dir) / job.run_id),
                      **fields})
        if status != "failed":
            entry.pop("error", None)
        return entry

    def save(self) -> None:
        counts = {s: sum(1 for r in self.runs.values() if r.get("status") == s) for s in STATUSES}
        atomic_write_json(self.path, {**self.header, "updated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "counts": counts, "runs": self.runs})


def read_state(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A state file's content (``runs``: run id -> entry with a known ``status`` and a ``folder``), or None and
    what is wrong with it (unreadable, not JSON, ``runs`` not a mapping, an entry without a folder, ...)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"not readable as JSON ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__}, not an object"
    runs = data.get("runs", {})
    if not isinstance(runs, dict):
        return None, f"'runs' is a {type(runs).__name__}, not a mapping"
    for run_id, entry in runs.items():
        if not isinstance(entry, dict):
            return None, f"the entry of run '{run_id}' is a {type(entry).__name__}, not a mapping"
        if entry.get("status") not in STATUSES:
            return None, f"run '{run_id}' has an unknown status {entry.get('status')!r}"
        if not isinstance(entry.get("folder"), str):
            return None, f"the 'folder' of run '{run_id}' is a {type(entry.get('folder')).__name__}, not text"
    return data, None


def _state_lock(path: Path) -> Path:
    """The lock held by the launcher or shard that writes state file ``path``."""
    m = re.fullmatch(re.escape(STATE_PREFIX) + r"\.shard-(\d+)-of-(\d+)\.json", path.name)
    return lock_file(path.parent, (int(m.group(1)), int(m.group(2))) if m else None)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def sweep_status(output_dir: str | Path) -> dict[str, Any]:
    """Merge every state file of a sweep folder (all launchers and shards) into one view.

    A run whose result file exists is ``done`` whatever the state files say; otherwise the entry of the
    most recently written state file counts. A run left ``running`` by a local launcher or a shard that no
    longer runs (its sweep lock is free) and that no process trains (its run lock is free) is
    ``interrupted``. A damaged state file is left out, with a line in ``warnings``. Returns ``{"files",
    "counts", "runs", "warnings"}``.
    """
    from vlprompt.engine.run import RunPaths, lock_is_held

    root = Path(output_dir)
    runs: dict[str, dict[str, Any]] = {}
    files, warnings = [], []
    for path in sorted(root.glob(f"{STATE_PREFIX}*.json"), key=_mtime):
        data, problem = read_state(path)
        if data is None:
            warnings.append(f"sweep state file '{path}' is damaged ({problem}); it is left out of this status. "
                            "Rerun the sweep (the same command) to rewrite it, or delete it: finished runs are "
                            "found from their result files")
            continue
        files.append(path)
        gone = data.get("launcher") in _LOCAL_LAUNCHERS and not lock_is_held(_state_lock(path))
        for run_id, entry in data["runs"].items():
            runs[run_id] = {**entry, "state_file": path.name}
            if gone and entry["status"] == "running" and not lock_is_held(RunPaths(Path(entry["folder"])).lock):
                runs[run_id]["status"] = "interrupted"
    for entry in runs.values():
        folder = Path(entry["folder"])
        if any((folder / f).exists() for f in ("metrics.json", "ood/ood_results.json")) or \
                any(folder.glob("*_results.json")):
            entry["status"] = "done"
    counts = {s: sum(1 for r in runs.values() if r.get("status") == s) for s in STATUSES}
    return {"files": [p.name for p in files], "counts": counts, "runs": runs, "warnings": warnings}


# ------------------------------------------------------------------------------------ a shard, in-process
def run_shard(sw: Any, shard: tuple[int, int], *, log: Any = print) -> dict[str, Any]:
    """Run shard ``i/N`` of the sweep one job after another in this process (one's own array script).

    Shared work of the shard's jobs is prepared first (locks keep parallel shards from repeating it);
    the shard's state and summary go to ``sweep_state.shard-i-of-N.json`` / ``sweep_summary.shard-i-of-N.json``.
    """
    from vlprompt.tasks.sweep import NEEDS_TARGETS

    if sw.protocol in NEEDS_TARGETS and not sw.targets:
        raise ConfigError(f"sweep protocol {sw.protocol} needs 'targets' (the target / OOD datasets)")
    with sweep_lock(sw.output_dir, shard):
        return _run_shard(sw, shard, log)


def _run_shard(sw: Any, shard: tuple[int, int], log: Any) -> dict[str, Any]:
    """:func:`run_shard` once its lock is held."""
    jobs = shard_jobs(plan_jobs(sw), *shard)
    state = SweepState(sw, "shard", shard)
    summary: dict[str, Any] = {"sweep": sw.name, "protocol": sw.protocol, "shard": f"{shard[0]}/{shard[1]}",
                               "jobs": len(jobs), "done": 0, "skipped": 0, "failed": []}
    for job in jobs:
        state.set(job, sw, "done" if done_file(sw, job).exists() else "pending")
    state.save()
    prepare_shared(sw, jobs, log=log)
    for job in jobs:
        if done_file(sw, job).exists():
            summary["skipped"] += 1
            state.set(job, sw, "done")
            continue
        state.set(job, sw, "running", job_id=f"pid {os.getpid()}", started_at=time.strftime("%Y-%m-%d %H:%M:%S"))
        state.save()
        try:
            execute_job(sw, job)
            summary["done"] += 1
            state.set(job, sw, "done")
        except (VlpromptError, RuntimeError, ValueError, OSError) as exc:
            msg = user_message(exc)
            log_path = Path(sw.output_dir) / job.run_id / "log.txt"
            summary["failed"].append({"run": job.label, "folder": str(Path(sw.output_dir) / job.run_id), "error": msg,
                                      "traceback": traceback.format_exc(limit=3)})
            state.set(job, sw, "failed", error=msg, log=str(log_path) if log_path.exists() else None)
            log(f"FAILED {job.label}: {msg}")
        state.save()
    state.save()
    summary["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_json(summary_file(sw.output_dir, shard), summary)
    return summary
