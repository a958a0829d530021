"""Experiment tracking: a run's hyper-parameters and metrics sent to the loggers of option ``train.loggers``.

One :class:`Logger` per back-end, all behind one :class:`Tracker` (rank 0 only; the other ranks of a torchrun
job get an empty one)::

    tensorboard  <run>/tb/                       TensorBoard scalars + hyper-parameters (HParams dashboard)
    csv          <run>/tracking/metrics.csv      step,metric,value,time (one row per value; appended)
                 <run>/tracking/hparams.csv      key,value (the resolved config)
    wandb        <run>/tracking/wandb/           a Weights & Biases run, offline unless WANDB_MODE says otherwise
    mlflow       <run>/tracking/mlruns/          an MLflow run in a local file store (or MLFLOW_TRACKING_URI)

What is logged (``step`` = optimisation steps done, over all epochs):

* at the start: the resolved config, flattened to dotted keys (``optim.lr``), as hyper-parameters;
* every step (every ``train.log_every`` steps): ``train/loss``, ``train/loss_<term>`` (each named loss term, when
  a method has more than one), ``train/lr`` (the schedule's rate) and ``train/images_per_s`` (the images of the
  global batches since the previous logged step over their steps' wall time, data loading included);
* every epoch, at its last step: ``epoch`` (its number, from 1), the epoch's means ``train_epoch/loss``,
  ``train_epoch/accuracy``, ``train_epoch/loss_<term>``, its rate ``train_epoch/lr`` and ``val/accuracy`` when the
  epoch was validated (``train.eval_every``);
* at the end, at the last step: ``test/accuracy``, ``test/macro_accuracy``, ``test/n``, the same of ``val/``
  and ``train_time_s``: the numbers of ``metrics.json``.

A resumed run continues at the step of its checkpoint: TensorBoard and CSV drop what was logged after it (the
steps of an interrupted epoch, trained again), W&B and MLflow continue the same run (its id is kept in
``<run>/tracking/run_ids.json``). The back-end packages are imported when a run starts, never at import time;
a logger named but not installed is one :class:`~vlprompt.core.errors.ConfigError` (:func:`check_available`).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from vlprompt.config import LOGGERS
from vlprompt.core.errors import ConfigError
from vlprompt.core.io import atomic_write_json, atomic_write_text, ensure_dir, write_error

#: The module each logger imports and the package that provides it (the ``track`` extra of pyproject.toml).
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
             "mlflow": ("mlflow", "mlflow-skinny")}
#: The metrics the TensorBoard HParams dashboard shows next to the hyper-parameters.
_HPARAM_METRICS = ("test/accuracy", "val/accuracy")
#: MLflow's limits: parameters per ``log_batch`` call, characters of a parameter's value.
_MLFLOW_BATCH, _MLFLOW_VALUE = 100, 6000


class Logger(Protocol):
    """One tracking back-end. ``step`` is the number of optimisation steps done (0 before the first)."""

    name: str

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        """Record the run's hyper-parameters (the resolved config, dotted keys -> plain values)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at ``step``."""

    def finish(self, final_metrics: Mapping[str, float] | None, step: int) -> None:
        """Record the final metrics at ``step`` and close; ``None``: the run stopped without a result (failed)."""


def check_available(names: Sequence[str]) -> None:
    """One :class:`ConfigError` when a logger of ``names`` (option ``train.loggers``) is not installed; cheap (no
    import), so that a run fails before it writes anything."""
    missing = [n for n in names if n in _PACKAGES and importlib.util.find_spec(_PACKAGES[n][0]) is None]
    if missing:
        packages = " ".join(_PACKAGES[n][1] for n in missing)
        raise ConfigError(
            f"option train.loggers names {', '.join(missing)}, but {packages} {'is' if len(missing) == 1 else 'are'} "
            f"not installed; install the tracking extra (from the vlprompt clone: pip install -e \".[track]\"; or "
            f"pip install {packages}), or remove {'it' if len(missing) == 1 else 'them'} from train.loggers"
        )


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys (``{"optim": {"lr": 0.002}}`` -> ``{"optim.lr": 0.002}``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class StepReporter:
    """The per-step metrics of :func:`vlprompt.engine.loop.run_epochs`'s ``on_step`` given to ``tracker`` every
    ``every`` steps (option ``train.log_every``): the step's ``loss``, ``loss_<term>`` and ``lr`` under ``train/``,
    and ``train/images_per_s`` over the steps since the previous report (``images`` / ``seconds`` summed)."""

    def __init__(self, tracker: Tracker, every: int = 1) -> None:
        self.tracker, self.every = tracker, every
        self._images = self._seconds = 0.0

    def __call__(self, step: int, values: Mapping[str, float]) -> None:
        self._images += values.get("images", 0.0)
        self._seconds += values.get("seconds", 0.0)
        if step % self.every:
            return
        metrics = {f"train/{k}": v for k, v in values.items() if k not in ("images", "seconds")}
        if self._seconds > 0:
            metrics["train/images_per_s"] = self._images / self._seconds
        self._images = self._seconds = 0.0
        self.tracker.log_metrics(metrics, step)


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's history record (``epoch``, ``lr``, ``loss``, ``accuracy``, ``loss_<term>``, ``val_accuracy``)
    as metrics: ``epoch``, ``train_epoch/<key>``, ``val/<key>``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if not _is_number(value):
            continue
        name = key if key == "epoch" else f"val/{key[4:]}" if key.startswith("val_") else f"train_epoch/{key}"
        out[name] = value
    return out


def final_metrics(test: Mapping[str, Any], val: Mapping[str, Any] | None, train_time_s: float) -> dict[str, float]:
    """A run's result as metrics: the numbers of its test (``test/<key>``) and validation (``val/<key>``) reports
    (per-class lists left out) and ``train_time_s``."""
    out = {f"test/{k}": v for k, v in test.items() if _is_number(v)}
    out.update({f"val/{k}": v for k, v in (val or {}).items() if _is_number(v)})
    out["train_time_s"] = train_time_s
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    """A hyper-parameter's value as text: strings as they are, anything else as JSON (``null``, ``[1, 2]``)."""
    return value if isinstance(value, str) else json.dumps(value)


class Tracker:
    """Every logger of a run as one (an empty tracker does nothing). Finished once: :meth:`finish` with the final
    metrics, or ``None`` when the run failed; later calls are ignored."""

    def __init__(self, loggers: Sequence[Logger] = (), start_step: int = 0) -> None:
        self.loggers = list(loggers)
        self.step = start_step
        self._finished = False

    @property
    def names(self) -> list[str]:
        return [lg.name for lg in self.loggers]

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_hparams(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.step = max(self.step, step)
        for lg in self.loggers:
            lg.log_metrics(metrics, step)

    def finish(self, final_metrics: Mapping[str, float] | None = None) -> None:
        """Close every logger (the others too when one fails; its error is raised after), with the final metrics
        logged at the last step."""
        if self._finished:
            return
        self._finished = True
        error: BaseException | None = None
        for lg in self.loggers:
            try:
                lg.finish(final_metrics, self.step)
            except Exception as exc:  # noqa: BLE001 - closed all, the first error raised below
                error = error or exc
        if error is not None:
            raise error


def open_tracker(names: Sequence[str], *, tensorboard_dir: Path, tracking_dir: Path, start_step: int,
                 run_name: str) -> Tracker:
    """The loggers of ``names`` (option ``train.loggers``) of a run resumed at ``start_step`` (0: a new run)."""
    check_available(names)
    ids = _RunIds(tracking_dir / "run_ids.json")
    builders: dict[str, Callable[[], Logger]] = {
        "tensorboard": lambda: TensorBoardLogger(tensorboard_dir, start_step),
        "csv": lambda: CsvLogger(tracking_dir, start_step),
        "wandb": lambda: WandbLogger(tracking_dir, run_name, ids),
        "mlflow": lambda: MlflowLogger(tracking_dir, run_name, ids),
    }
    assert set(builders) == set(LOGGERS)
    opened: list[Logger] = []
    try:
        for name in names:
            opened.append(builders[name]())
    except BaseException:
        with contextlib.suppress(Exception):
            Tracker(opened, start_step).finish(None)
        raise
    return Tracker(opened, start_step)


class _RunIds:
    """The W&B / MLflow run ids of a run folder (``run_ids.json``), so that a resumed run continues its run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or damaged: new runs
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    def get(self, name: str) -> str | None:
        return self._read().get(name)

    def set(self, name: str, run_id: str) -> None:
        ensure_dir(self.path.parent)
        atomic_write_json(self.path, {**self._read(), name: run_id})


class TensorBoardLogger:
    """Scalars and hyper-parameters in one event file per session under ``folder`` (``<run>/tb``); a resumed run
    purges the steps after its checkpoint (``SummaryWriter(purge_step=...)``)."""

    name = "tensorboard"

    def __init__(self, folder: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(folder), purge_step=start_step + 1 if start_step else None)
        self._end: Any = None  # the hparams session's end (status: success), written by finish

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, int | float | str | bool) else _text(v)
                  for k, v in params.items() if v is not None}
        experiment, start, self._end = hparams(values, dict.fromkeys(_HPARAM_METRICS, 0.0))
        writer = self._writer._get_file_writer()  # add_hparams would open a second event file in a sub-folder
        writer.add_summary(experiment)
        writer.add_summary(start)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def finish(self, final_metrics: Mapping[str, float] | None, step: int) -> None:
        if final_metrics is not None:
            self.log_metrics(final_metrics, step)
            if self._end is not None:
                self._writer._get_file_writer().add_summary(self._end)
        self._writer.close()


class CsvLogger:
    """``metrics.csv`` (``step,metric,value,time``: one row per value, appended and flushed as logged) and
    ``hparams.csv`` (``key,value``) in ``folder``. A resumed run keeps the rows up to its checkpoint's step."""

    name = "csv"
    HEADER = ("step", "metric", "value", "time")

    def __init__(self, folder: Path, start_step: int) -> None:
        ensure_dir(folder, "tracking folder")
        self.metrics_path, self.hparams_path = folder / "metrics.csv", folder / "hparams.csv"
        kept = self._rows_up_to(start_step) if start_step else []
        out = io.StringIO()
        csv.writer(out).writerows([self.HEADER, *kept])
        atomic_write_text(self.metrics_path, out.getvalue())
        try:
            self._file = open(self.metrics_path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed by finish
        except OSError as exc:
            raise write_error(self.metrics_path, exc) from exc
        self._writer = csv.writer(self._file)

    def _rows_up_to(self, step: int) -> list[list[str]]:
        """The rows of the existing ``metrics.csv`` at steps <= ``step`` (a row cut short by a crash is dropped)."""
        try:
            with open(self.metrics_path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except OSError:
            return []
        return [row for row in rows[1:] if (at := _row_step(row)) is not None and at <= step]

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        out = io.StringIO()
        csv.writer(out).writerows([("key", "value"), *((k, _text(v)) for k, v in params.items())])
        atomic_write_text(self.hparams_path, out.getvalue())

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = round(time.time(), 3)
        try:
            self._writer.writerows((step, k, v, now) for k, v in metrics.items())
            self._file.flush()
        except OSError as exc:
            raise write_error(self.metrics_path, exc) from exc

    def finish(self, final_metrics: Mapping[str, float] | None, step: int) -> None:
        try:
            if final_metrics is not None:
                self.log_metrics(final_metrics, step)
        finally:
            self._file.close()


def _row_step(row: list[str]) -> int | None:
    """The step of a ``metrics.csv`` row, None for a damaged one (cut short by a crash)."""
    if len(row) != len(CsvLogger.HEADER) or not row[1]:
        return None
    try:
        float(row[2]), float(row[3])
        return int(row[0])
    except ValueError:
        return None


class WandbLogger:
    """A Weights & Biases run in ``folder/wandb``: offline (no account, no network; upload later with
    ``wandb sync``) unless the environment sets ``WANDB_MODE``; project ``WANDB_PROJECT`` or ``vlprompt``; the run
    folder's name as the run's name. A resumed run logs into the run of the same id; final metrics go to the
    run's summary."""

    name = "wandb"

    def __init__(self, folder: Path, run_name: str, ids: _RunIds) -> None:
        import wandb

        ensure_dir(folder, "tracking folder")
        run_id = ids.get(self.name) or secrets.token_hex(6)
        ids.set(self.name, run_id)
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "vlprompt", name=run_name, id=run_id, resume="allow",
            dir=str(folder), mode=None if os.environ.get("WANDB_MODE") else "offline",
            settings=wandb.Settings(console="off", silent=True, reinit="create_new"),
        )

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        self._run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=step)

    def finish(self, final_metrics: Mapping[str, float] | None, step: int) -> None:
        if final_metrics is not None:
            self._run.summary.update(dict(final_metrics))
        self._run.finish(exit_code=0 if final_metrics is not None else 1)


class MlflowLogger:
    """An MLflow run (experiment ``MLFLOW_EXPERIMENT_NAME`` or ``vlprompt``, the run folder's name as the run's
    name) in the tracking store ``MLFLOW_TRACKING_URI``, else a file store in ``folder/mlruns`` (MLflow keeps its
    file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which this sets for it). A resumed run logs
    into the run of the same id; parameters changed on resumption (``optim.lr``) are recorded as tags
    ``resumed.<key>`` (MLflow's parameters cannot change)."""

    name = "mlflow"

    def __init__(self, folder: Path, run_name: str, ids: _RunIds) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            store = folder / "mlruns"
            ensure_dir(store, "MLflow file store")
            uri = store.resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client = client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "vlprompt"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        run = None
        run_id = ids.get(self.name)
        if run_id:
            with contextlib.suppress(MlflowException):
                run = client.get_run(run_id)
        if run is None or run.info.lifecycle_stage != "active":
            run = client.create_run(experiment_id, run_name=run_name)
            ids.set(self.name, run.info.run_id)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self._params = dict(run.data.params)

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        values = {k: _text(v)[:_MLFLOW_VALUE] for k, v in params.items()}
        new = [Param(k, v) for k, v in values.items() if k not in self._params]
        changed = [RunTag(f"resumed.{k}", v) for k, v in values.items() if k in self._params and self._params[k] != v]
        for i in range(0, max(len(new), 1), _MLFLOW_BATCH):
            self._client.log_batch(self.run_id, params=new[i:i + _MLFLOW_BATCH],
                                   tags=changed if i == 0 else [])
        self._params.update((p.key, p.value) for p in new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish(self, final_metrics: Mapping[str, float] | None, step: int) -> None:
        if final_metrics is not None:
            self.log_metrics(final_metrics, step)
        self._client.set_terminated(self.run_id, status="FINISHED" if final_metrics is not None else "FAILED")


@contextlib.contextmanager
def tracking(tracker: Tracker) -> Iterator[Tracker]:
    """``tracker`` for the length of a ``with`` block: finished as failed when the block raises, closed (without
    final metrics) when it ends without :meth:`Tracker.finish`."""
    try:
        yield tracker
    except BaseException:
        with contextlib.suppress(Exception):  # the run's own error matters, not a logger's on closing
            tracker.finish(None)
        raise
    tracker.finish(None)
