"""A training run's life in its folder: opened, locked, compared on resumption, logged, written.

What :func:`vlprompt.engine.trainer.train` leaves to this module (the optimisation itself is
:mod:`vlprompt.engine.loop`'s)::

    open_run()          refuse to overwrite a run; compare a resumed run's config (only the options of
                        _RESUME_MAY_CHANGE may differ); lock the folder; save a new run's config; the log
    Run.check_budget()  a resumption's budget against the epochs trained (never shorter); save its config
    Run.tracker()       the experiment trackers of option train.loggers (rank 0; :mod:`vlprompt.engine.tracking`)
    Run.record_epoch()  one log line (and the trackers' epoch metrics) per epoch
    Run.save_prompt()   the learned prompt file (rank 0)
    Run.write_results() metrics.json and results.md (rank 0)

Ranks > 0 of a torchrun job get a quiet log and write nothing.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.config import ExperimentConfig, apply_overrides, config_from_dict, read_yaml
from vlprompt.core.errors import ConfigError, DataError, VlpromptError, user_message
from vlprompt.core.io import atomic_write_json, atomic_write_text, ensure_dir
from vlprompt.core.results import BackboneRecord, RunResult, config_digest, read_result, write_result
from vlprompt.core.tables import accuracy_table
from vlprompt.engine.checkpoint import list_checkpoints, save_prompt
from vlprompt.engine.distributed import DistContext, main_only
from vlprompt.engine.run import RunLock, RunPaths, close_logger, console_logging, make_logger, quiet_logger
from vlprompt.engine.tracking import Tracker, epoch_metrics, flat_params, open_tracker
from vlprompt.methods.base import PromptMethod

#: Config parts that must not change between a run and its resumption ...
_RESUME_KEYS = ("method", "backbone", "data", "optim")
#: ... except these, which a user changes to recover a run (a NaN stop: lower the learning rate) or to
#: train it longer (a smaller budget than the epochs trained is refused: :meth:`Run.check_budget`); the log says
#: what changed.
_RESUME_MAY_CHANGE = ("optim.lr", "optim.max_epoch", "optim.iterations")
#: The options that set a run's training budget: a larger one trains a finished run on (see :meth:`Run.check_budget`).
_BUDGET_KEYS = ("optim.max_epoch", "optim.iterations")
#: Options that say where files go, not what is computed: they may differ on resumption (a sweep's
#: launcher points every run at a shared feature cache); not even logged.
_RESUME_LOCATIONS = ("data.feature_cache_dir",)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def check_run_folder(paths: RunPaths, cfg: ExperimentConfig, resume: bool) -> list[str]:
    """Never overwrite a finished or half-finished run unless asked to resume it; returns the notes
    ("optim.lr changed from ... to ...") of the options a resumption may change."""
    finished = paths.metrics.exists()
    started = bool(list_checkpoints(paths.checkpoints))
    if not resume and (finished or started):
        state = "a finished run" if finished else "checkpoints of an unfinished run"
        raise VlpromptError(
            f"run folder '{paths.root}' already holds {state}; pass --resume to continue it, or choose "
            "another folder (option train.output_dir / --output-dir). Nothing was changed."
        )
    if not (resume and paths.config.exists()):
        return []
    saved = read_yaml(paths.config)
    if not isinstance(saved, dict):
        raise ConfigError(f"cannot resume '{paths.root}': its config file '{paths.config}' is damaged (not a "
                          "mapping of sections); restore it or start a new run in another folder.")
    saved = _with_defaults(saved)
    now = cfg.as_dict()
    before = _flatten({k: saved.get(k) for k in _RESUME_KEYS})
    after = _flatten({k: now.get(k) for k in _RESUME_KEYS})
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k, "<unset>") != after.get(k, "<unset>") and k not in _RESUME_LOCATIONS)
    saved_train = saved["train"] if isinstance(saved.get("train"), dict) else {}
    if saved_train.get("seed") != cfg.train.seed:
        changed.append("train.seed")
    fixed = [k for k in changed if k not in _RESUME_MAY_CHANGE]
    if fixed:
        shown = ", ".join(fixed[:6]) + (f" and {len(fixed) - 6} more" if len(fixed) > 6 else "")
        raise VlpromptError(
            f"cannot resume '{paths.root}': its config differs in {shown}. Resume with the same config "
            f"({paths.config}; only {' and '.join(_RESUME_MAY_CHANGE)} may change) or start a new run in another "
            "folder."
        )
    return [f"{k} changed from {before.get(k)} to {after.get(k)}" for k in changed]


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config as this release resolves it (options added since filled with their defaults,
    renamed options under their new names), so that older runs compare equal to the same config; the raw
    mapping when it no longer validates (the comparison then names what differs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # renamed options: not the user's doing here
            return config_from_dict(copy.deepcopy(saved)).as_dict()
    except VlpromptError:
        return saved


def _read_finished_metrics(paths: RunPaths) -> RunResult | None:
    """The result of a finished run, or None when ``metrics.json`` is unreadable / not a run's metrics
    (the run is then finished again from its checkpoints, which rewrites it)."""
    try:
        return read_result(paths.metrics, RunResult)
    except DataError:
        return None


def _is_budget_note(note: str) -> bool:
    """``note`` ("optim.max_epoch changed from 1 to 3") is about an option of the training budget."""
    return note.split(" ", 1)[0] in _BUDGET_KEYS


@dataclass
class Run:
    """An open run folder (see :func:`open_run`).

    Attributes:
        finished: the result of a finished run resumed with the same training budget (the result as it is;
            nothing is to be done), else None.
        extending: the result of a finished run resumed with another budget (trained on to it, or refused, by
            :meth:`check_budget`), else None.
        budget_notes: changes of the training budget on resumption, logged with the epochs they train.
    """

    paths: RunPaths
    cfg: ExperimentConfig
    ctx: DistContext
    resume: bool
    log: Any = None
    finished: RunResult | None = None
    extending: RunResult | None = None
    budget_notes: Sequence[str] = field(default_factory=list)
    command: str | None = None  #: the command line that started the run (kept in the prompt file's metadata)

    def write_config(self) -> None:
        """Save the resolved config (rank 0)."""
        main_only(self.ctx, lambda: atomic_write_text(self.paths.config, self.cfg.to_yaml()))

    def note_skipped(self, skipped: list[Any]) -> None:
        """List unreadable images that were skipped (``data.on_bad_image=skip``) in ``skipped_images.json``."""
        if skipped and self.ctx.is_main:
            where = self.paths.root / "skipped_images.json"
            atomic_write_json(where, skipped)
            self.log.warning(f"skipped {len(skipped)} unreadable images (data.on_bad_image=skip); listed in {where}")

    def check_budget(self, max_epoch: int, start_epoch: int, restored: bool) -> RunResult | None:
        """The budget of a resumed run: refuse one smaller than what the run has trained, or one that would
        train a finished run on without a checkpoint to continue from (its result is kept; nothing changes).
        Logs the epochs a changed budget trains, then saves the config. Returns the finished run's metrics when
        there is nothing more to train (the same number of epochs, e.g. another iterations count), else None.
        """
        cfg, paths, extending = self.cfg, self.paths, self.extending
        budget = (f"optim.iterations={cfg.optim.iterations} ({max_epoch} epochs)" if cfg.optim.iterations is not None
                  else f"optim.max_epoch={max_epoch}")
        if extending is not None and not restored:
            raise VlpromptError(
                f"cannot train '{paths.root}' on to {budget}: none of its checkpoints ({paths.checkpoints}) is "
                "usable, so there is nothing to continue from; its finished result is kept. Train a new run in "
                "another folder. Nothing was changed."
            )
        finished = extending.epochs if extending is not None else None
        done = max(start_epoch, finished if isinstance(finished, int) and not isinstance(finished, bool) else 0)
        if max_epoch < done:
            raise VlpromptError(
                f"cannot resume '{paths.root}' with {budget}: it has already trained {done} epochs and a run cannot "
                f"be shortened. Resume with a budget of at least {done} epochs (e.g. --set optim.max_epoch={done}), "
                "or start a new run in another folder. Nothing was changed."
            )
        if self.budget_notes:  # the schedule (lr_at_step) follows the new budget from the next epoch on
            what = (f"training epoch {max_epoch}" if start_epoch + 1 == max_epoch
                    else f"training epochs {start_epoch + 1}-{max_epoch}" if start_epoch < max_epoch
                    else f"nothing more to train ({start_epoch} epochs done)")
            self.log.info(f"{'; '.join(self.budget_notes)}: {what}")
        self.write_config()
        if extending is not None and start_epoch >= max_epoch:
            return extending
        return None

    @property
    def earlier_time(self) -> float:
        """Training seconds of the finished run being trained on (0 for any other)."""
        return float(self.extending.train_time_s or 0.0) if self.extending is not None else 0.0

    def tracker(self, start_step: int) -> Tracker:
        """The experiment trackers of option ``train.loggers`` (rank 0; an empty one on the other ranks) of a run
        that starts (or, resumed, continues) at optimisation step ``start_step``, with the resolved config logged
        as its hyper-parameters. Finish it with the final metrics (:meth:`Tracker.finish`)."""
        if not (self.ctx.is_main and self.cfg.train.loggers):
            return Tracker(start_step=start_step)
        tracker = open_tracker(self.cfg.train.loggers, tensorboard_dir=self.paths.tensorboard,
                               tracking_dir=self.paths.tracking, start_step=start_step, run_name=self.paths.root.name)
        try:
            tracker.log_hparams(flat_params(self.cfg.as_dict()))
        except BaseException:
            tracker.finish(None)
            raise
        self.log.info(f"tracking with {', '.join(tracker.names)}"
                      + (f" from step {start_step}" if start_step else ""))
        return tracker

    def record_epoch(self, record: dict[str, Any], tracker: Tracker, step: int) -> None:
        """Log one epoch's record (``epoch``, ``lr``, losses, accuracies), and give it to ``tracker`` at ``step``
        (the epoch's last optimisation step)."""
        self.log.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        tracker.log_metrics(epoch_metrics(record), step)

    def save_prompt(self, method: PromptMethod, epochs: int) -> None:
        """Write the learned prompt file ``prompt.safetensors`` (+ ``prompt.json``; rank 0)."""
        cfg = self.cfg
        extra: dict[str, Any] = {"dataset": cfg.data.dataset, "shots": cfg.data.shots, "seed": cfg.train.seed,
                                 "epochs": epochs}
        if self.command:
            extra["command"] = self.command
        save_prompt(self.paths.prompt, method, extra=extra)

    def write_results(self, *, backbone: BackboneRecord, test: dict[str, Any], val: dict[str, Any] | None,
                      history: list[dict[str, Any]], epochs: int, train_time: float, skipped: int,
                      fit_info: dict[str, Any] | None) -> RunResult:
        """Write ``metrics.json`` and ``results.md`` (rank 0); return the run's result."""
        cfg, paths = self.cfg, self.paths
        result = RunResult(
            method=cfg.method.name, dataset=cfg.data.dataset, shots=cfg.data.shots, seed=cfg.train.seed,
            backbone=backbone, epochs=epochs, train_time_s=train_time, skipped_images=skipped, test=test,
            val=val, history=history, fit=fit_info or None, config_digest=config_digest(cfg.as_dict()))
        write_result(paths.metrics, result)
        shots = f"{cfg.data.shots} shot{'' if cfg.data.shots == 1 else 's'}"
        table = accuracy_table(test, title=f"{cfg.method.name} on {cfg.data.dataset} ({shots}, "
                                             f"seed {cfg.train.seed}) - test")
        atomic_write_text(paths.results_table, table)
        self.log.info("\n" + table)
        return result


def _open(run: Run, stack: contextlib.ExitStack) -> tuple[RunResult | None, list[str], RunResult | None]:
    """Check and lock the run folder (held until ``stack`` closes), save the config of a new run. Rank 0 only.

    Returns the result of a finished run resumed with the same training budget (else None), notes on changed
    options, and the result of a finished run resumed with another budget (else None). A resumed run's config is
    saved by :meth:`Run.check_budget`, so that a refused resumption changes nothing.
    """
    paths, cfg, resume = run.paths, run.cfg, run.resume
    notes = check_run_folder(paths, cfg, resume)
    ensure_dir(paths.root, "run folder (option train.output_dir)")
    stack.enter_context(RunLock(paths.lock))
    extending = None
    if resume and paths.metrics.exists():
        metrics = _read_finished_metrics(paths)
        if metrics is None:
            notes.append(f"warning: '{paths.metrics}' is unreadable or not a run's metrics; finishing the run "
                         "again from its checkpoints")
        elif not any(_is_budget_note(n) for n in notes):
            return metrics, [], None
        else:
            extending = metrics
    if not (resume and paths.config.exists()):
        atomic_write_text(paths.config, cfg.to_yaml())
    return None, notes, extending


@contextlib.contextmanager
def open_run(cfg: ExperimentConfig, ctx: DistContext, resume: bool, command: str | None = None) -> Iterator[Run]:
    """Open the run folder ``cfg.train.output_dir`` for the length of the ``with`` block.

    Rank 0 refuses to overwrite a run that is not resumed, compares a resumed run's config with the saved one
    and locks the folder; every rank gets the run's log (a quiet one on ranks > 0), which logs the changed
    options. A user error raised in the block while the folder holds no checkpoint and no result says that the
    same command starts the run afresh.
    """
    run = Run(RunPaths(Path(cfg.train.output_dir)), cfg, ctx, resume, command=command)
    with contextlib.ExitStack() as stack:
        run.finished, notes, run.extending = main_only(ctx, lambda: _open(run, stack))
        if run.finished is not None:
            yield run
            return
        console = cfg.train.progress and cfg.train.console_log
        run.log = make_logger(run.paths.log, console=console) if ctx.is_main else quiet_logger(ctx.rank)
        run.budget_notes = [n for n in notes if _is_budget_note(n)]
        for note in notes:
            if note not in run.budget_notes:  # budget changes: logged with the epochs they train (check_budget)
                run.log.warning(note)
        try:
            with console_logging(run.log):
                yield run
        except VlpromptError as exc:
            paths = run.paths
            if ctx.is_main and not list_checkpoints(paths.checkpoints) and not paths.metrics.exists():
                exc.args = (f"{user_message(exc)} (Run folder '{paths.root}' holds no checkpoint yet, only its config "
                            "and log; the same command starts it afresh.)",)
            raise
        finally:
            close_logger(run.log)


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The resolved config saved in a run folder (its ``output_dir`` = the folder), with ``--set`` overrides."""
    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise VlpromptError(f"'{run_dir}' is not a vlprompt run folder (no config.yaml); "
                            "pass a run folder made by `vlprompt train`, or --config and --prompt")
    raw = read_yaml(paths.config)
    if not isinstance(raw, dict) or not isinstance(raw.get("train", {}), dict):
        raise ConfigError(f"config file '{paths.config}' of run '{run_dir}' is damaged (not a "
                          "mapping of sections); restore it, or pass --config and --prompt")
    raw.setdefault("train", {})["output_dir"] = str(paths.root)
    return config_from_dict(apply_overrides(raw, list(overrides)))
