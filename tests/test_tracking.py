"""Experiment tracking (option train.loggers): what each back-end wrote, read back with its own reader.

One run is shared by the module: KgCoOp (two named loss terms) on the tiny imagefolder for 2 epochs of 3 steps, with
every logger (CSV, TensorBoard, W&B offline, MLflow in a local file store), stopped by an error in epoch 2 after its
4th step and resumed from the checkpoint of epoch 1 (step 3). No network is used.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest

import vlprompt.engine.loop as loop_mod
from vlprompt.config import config_from_dict
from vlprompt.core.errors import ConfigError
from vlprompt.engine.run import console_logging, make_logger, quiet_logger
from vlprompt.engine.tracking import CsvLogger, StepReporter, Tracker, check_available
from vlprompt.engine.trainer import train

from conftest import tiny_config

STEPS_PER_EPOCH, EPOCHS = 3, 2
LOGGERS = ["csv", "tensorboard", "wandb", "mlflow"]
ENV = ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE")


class _Stopped(Exception):
    pass


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_imagefolder):
    """The run folder and its metrics.json, after an interrupted first session and a resumed second one."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV:  # the defaults: W&B offline, MLflow's file store in the run folder
            mp.delenv(name, raising=False)
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # never the user's folders
            mp.setenv(name, str(tmp / name.lower()))
        raw = tiny_config(tmp, tiny_imagefolder, method={"name": "kgcoop"}, optim={"max_epoch": EPOCHS},
                          train={"loggers": LOGGERS, "tensorboard": None, "eval_every": 1})
        raw["method"] = {"name": "kgcoop", "n_ctx": 4}
        original, calls = loop_mod.backward_terms, []

        def stop_at_step_5(*args, **kwargs):
            calls.append(1)
            if len(calls) == 5:
                raise _Stopped()
            return original(*args, **kwargs)

        mp.setattr(loop_mod, "backward_terms", stop_at_step_5)
        with pytest.raises(_Stopped):
            train(config_from_dict(raw))
        mp.setattr(loop_mod, "backward_terms", original)
        train(config_from_dict(raw), resume=True)
        run = tmp / "run"
        yield run, json.loads((run / "metrics.json").read_text())


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _csv_metrics(run: Path) -> dict[str, list[tuple[int, float]]]:
    series = defaultdict(list)
    rows = _rows(run / "tracking" / "metrics.csv")
    assert rows[0] == ["step", "metric", "value", "time"]
    for step, name, value, _ in rows[1:]:
        series[name].append((int(step), float(value)))
    return series


@pytest.mark.slow
def test_csv_has_every_step_once_and_the_run_s_numbers(tracked_run):
    run, metrics = tracked_run
    series = _csv_metrics(run)
    steps = list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))
    for name in ("train/loss", "train/loss_ce", "train/loss_kg", "train/lr", "train/images_per_s"):
        assert [s for s, _ in series[name]] == steps, name  # step 4 of the stopped session was dropped on resuming
    assert all(v > 0 for _, v in series["train/images_per_s"])
    history = metrics["history"]
    for e, record in enumerate(history):
        of_epoch = [v for s, v in series["train/loss"] if e * STEPS_PER_EPOCH < s <= (e + 1) * STEPS_PER_EPOCH]
        assert sum(of_epoch) / len(of_epoch) == pytest.approx(record["loss"], rel=1e-6)  # equal batches of 4
        for term in ("ce", "kg"):
            per_step = [v for s, v in series[f"train/loss_{term}"] if e * STEPS_PER_EPOCH < s <= (e + 1) * 3]
            assert sum(per_step) / 3 == pytest.approx(record[f"loss_{term}"], rel=1e-6, abs=1e-9)
        assert {v for s, v in series["train/lr"] if e * 3 < s <= (e + 1) * 3} == {record["lr"]}
    assert series["epoch"] == [(3, 1), (6, 2)]
    assert series["train_epoch/loss"] == [(3 * (i + 1), pytest.approx(h["loss"])) for i, h in enumerate(history)]
    assert series["val/accuracy"][:2] == [(3, pytest.approx(history[0]["val_accuracy"])),
                                          (6, pytest.approx(history[1]["val_accuracy"]))]
    assert series["test/accuracy"] == [(6, pytest.approx(metrics["test"]["accuracy"]))]  # the stopped session: none
    assert series["test/n"] == [(6, metrics["test"]["n"])]
    assert series["train_time_s"] == [(6, pytest.approx(metrics["train_time_s"]))]
    hparams = dict(_rows(run / "tracking" / "hparams.csv"))
    assert hparams["method.name"] == "kgcoop" and float(hparams["optim.lr"]) == 0.01
    assert json.loads(hparams["train.loggers"]) == LOGGERS


@pytest.mark.slow
def test_tensorboard_has_the_steps_once_and_the_hparams(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run, metrics = tracked_run
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    series = _csv_metrics(run)
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in loss] == list(range(1, 7))  # the resumed session purged step 4 of the stopped one
    assert [v for _, v in loss] == pytest.approx([v for _, v in series["train/loss"]], rel=1e-6)
    assert [e.step for e in acc.Scalars("train/loss_kg")] == list(range(1, 7))
    val = [(e.step, e.value) for e in acc.Scalars("val/accuracy")]
    assert val[-1] == (6, pytest.approx(metrics["val"]["accuracy"]))
    assert acc.Scalars("test/accuracy")[-1].value == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(0.01)
    assert start.hparams["method.name"].string_value == "kgcoop"


def _wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``: a LevelDB-style log of 32 KiB blocks of protobuf records
    after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        if kind in (1, 4):  # a full record, or the last chunk of one
            yield pb.Record.FromString(buf)
            buf = b""


@pytest.mark.slow
def test_wandb_offline_runs_hold_history_config_and_summary(tracked_run):
    run, metrics = tracked_run
    run_id = json.loads((run / "tracking" / "run_ids.json").read_text())["wandb"]
    sessions = sorted((run / "tracking" / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2 and all((s / f"run-{run_id}.wandb").is_file() for s in sessions)  # one W&B run
    history, config, summary, exits = {}, {}, {}, []
    for session in sessions:
        for rec in _wandb_records(session / f"run-{run_id}.wandb"):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
                history[row["_step"]] = row  # a step logged again (step 4) keeps its last values
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
            elif kind == "summary":
                summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.summary.update})
            elif kind == "exit":
                exits.append(rec.exit.exit_code)
    assert exits == [1, 0]  # the stopped session failed, the resumed one finished
    series = _csv_metrics(run)
    assert sorted(history) == list(range(1, 7))
    assert [history[s]["train/loss"] for s in range(1, 7)] == pytest.approx([v for _, v in series["train/loss"]])
    assert history[6]["epoch"] == 2
    assert history[6]["val/accuracy"] == pytest.approx(metrics["history"][1]["val_accuracy"])
    assert config["optim.lr"] == 0.01 and config["method.name"] == "kgcoop"
    assert summary["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert summary["train_time_s"] == pytest.approx(metrics["train_time_s"])


@pytest.mark.slow
def test_mlflow_file_store_holds_one_run_with_params_and_metrics(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    run, metrics = tracked_run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run / "tracking" / "mlruns").resolve().as_uri())
    run_id = json.loads((run / "tracking" / "run_ids.json").read_text())["mlflow"]
    experiment = client.get_experiment_by_name("vlprompt")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == "run"
    assert info.data.params["optim.lr"] == "0.01" and info.data.params["method.name"] == "kgcoop"
    last = {m.step: m.value for m in sorted(client.get_metric_history(run_id, "train/loss"),
                                            key=lambda m: m.timestamp)}  # step 4 was logged by both sessions
    assert sorted(last) == list(range(1, 7))
    assert [last[s] for s in range(1, 7)] == pytest.approx([v for _, v in _csv_metrics(run)["train/loss"]])
    assert {m.step for m in client.get_metric_history(run_id, "train/loss_ce")} == set(range(1, 7))
    assert info.data.metrics["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert info.data.metrics["val/accuracy"] == pytest.approx(metrics["val"]["accuracy"])


def test_csv_logger_resumed_keeps_the_rows_up_to_its_step(tmp_path):
    first = CsvLogger(tmp_path, 0)
    first.log_metrics({"train/loss": 1.5, "train/lr": 0.1}, 1)
    first.log_metrics({"train/loss": 1.25}, 2)
    first.log_metrics({"train/loss": 1.0}, 3)
    first.finish(None, 3)
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("3,train/loss,0.")  # a row cut short by a crash ...
    resumed = CsvLogger(tmp_path, 2)
    resumed.log_metrics({"train/loss": 0.75}, 3)
    resumed.finish({"test/accuracy": 50.0}, 3)
    rows = _rows(tmp_path / "metrics.csv")
    assert [r[:3] for r in rows[1:]] == [["1", "train/loss", "1.5"], ["1", "train/lr", "0.1"],
                                         ["2", "train/loss", "1.25"], ["3", "train/loss", "0.75"],
                                         ["3", "test/accuracy", "50.0"]]
    CsvLogger(tmp_path, 0).finish(None, 0)  # a run started afresh starts the file afresh
    assert _rows(tmp_path / "metrics.csv") == [list(CsvLogger.HEADER)]


def test_step_reporter_logs_every_n_steps_with_the_throughput_of_the_interval(tmp_path):
    tracker = Tracker([CsvLogger(tmp_path / "tracking", 0)])
    report = StepReporter(tracker, every=2)
    for step in range(1, 6):
        report(step, {"loss": float(step), "loss_ce": step / 2, "lr": 0.1, "images": 4.0, "seconds": 0.5 * step})
    tracker.finish(None)
    series = _csv_metrics(tmp_path)
    assert series["train/loss"] == [(2, 2.0), (4, 4.0)] and series["train/loss_ce"] == [(2, 1.0), (4, 2.0)]
    assert series["train/lr"] == [(2, 0.1), (4, 0.1)]
    assert series["train/images_per_s"] == [(2, pytest.approx(8 / 1.5)), (4, pytest.approx(8 / 3.5))]
    assert set(series) == {"train/loss", "train/loss_ce", "train/lr", "train/images_per_s"}
    with pytest.raises(ConfigError, match=r"train\.log_every"):
        config_from_dict(tiny_config(tmp_path, tmp_path, train={"log_every": 0}))


@pytest.mark.parametrize(("loggers", "tensorboard", "expected"), [
    (["tensorboard"], None, ["tensorboard"]),
    (["csv", "wandb", "csv"], None, ["csv", "wandb"]),
    (["csv"], True, ["csv", "tensorboard"]),
    (["tensorboard", "csv"], False, ["csv"]),
    ([], None, []),
])
def test_train_loggers_option_and_the_older_tensorboard_switch(tmp_path, loggers, tensorboard, expected):
    raw = tiny_config(tmp_path, tmp_path, train={"loggers": loggers, "tensorboard": tensorboard})
    cfg = config_from_dict(raw)
    assert cfg.train.loggers == expected and cfg.train.tensorboard is None
    assert config_from_dict(cfg.as_dict()).train.loggers == expected  # the saved config says the same


def test_old_configs_keep_their_tensorboard_choice(tmp_path):
    raw = tiny_config(tmp_path, tmp_path)
    raw["train"].pop("tensorboard")
    assert config_from_dict(raw).train.loggers == ["tensorboard"]  # the default, as before
    raw["train"]["tensorboard"] = False
    assert config_from_dict(raw).train.loggers == []


def test_unknown_logger_is_one_error_listing_the_known(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.loggers: unknown logger 'neptune'; known: tensorboard, csv, "
                                          r"wandb, mlflow"):
        config_from_dict(tiny_config(tmp_path, tmp_path, train={"loggers": ["csv", "neptune"]}))
    with pytest.raises(ConfigError, match=r"train\.loggers must be a list"):
        config_from_dict(tiny_config(tmp_path, tmp_path, train={"loggers": "csv"}))


def test_a_logger_not_installed_is_one_error_naming_the_option_and_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        check_available(["csv", "wandb"])
    assert "train.loggers" in str(err.value) and 'pip install -e ".[track]"' in str(err.value)
    assert "pip install wandb" in str(err.value)
    check_available(["csv", "tensorboard"])


def test_a_missing_tracker_stops_training_before_anything_is_written(tmp_path, tiny_imagefolder, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    raw = tiny_config(tmp_path, tiny_imagefolder, train={"loggers": ["mlflow"], "tensorboard": None})
    with pytest.raises(ConfigError, match="mlflow-skinny"):
        train(config_from_dict(raw))
    assert not (tmp_path / "run").exists()


def test_console_log_lines_go_through_tqdm_and_the_file_keeps_them(tmp_path, capsys):
    log = make_logger(tmp_path / "log.txt", console=True, name="test.tracking")
    with console_logging(log):
        assert all(type(h).__name__ != "StreamHandler" for h in log.handlers)  # tqdm's handler instead
        log.info("epoch=1 loss=0.5")
    assert [type(h).__name__ for h in log.handlers] == ["FileHandler", "StreamHandler"]  # restored
    assert capsys.readouterr().out == "epoch=1 loss=0.5\n"
    assert (tmp_path / "log.txt").read_text().endswith("epoch=1 loss=0.5\n")
    quiet = quiet_logger(7)
    with console_logging(quiet):
        quiet.warning("not shown")
    assert capsys.readouterr() == ("", "")
    file_only = make_logger(tmp_path / "other.txt", console=False, name="test.tracking2")
    with console_logging(file_only):
        file_only.info("to the file only")
    assert capsys.readouterr() == ("", "")
    for lg in (log, file_only):
        for h in list(lg.handlers):
            h.close()
            lg.removeHandler(h)


def test_no_progress_turns_transformers_bars_off_without_importing_it(monkeypatch):
    from vlprompt.backbones.hf import quiet_progress_bars

    saved = sys.modules.pop("transformers", None)
    try:
        quiet_progress_bars()
        assert "transformers" not in sys.modules  # not imported for it
    finally:
        if saved is not None:
            sys.modules["transformers"] = saved
    calls = []
    fake = types.SimpleNamespace(utils=types.SimpleNamespace(logging=types.SimpleNamespace(
        disable_progress_bar=lambda: calls.append("off"))))
    monkeypatch.setitem(sys.modules, "transformers", fake)
    quiet_progress_bars()
    assert calls == ["off"]
