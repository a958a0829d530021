"""The results schema (vlprompt.core.results): every result file is written and read through it, and
files written by the previous release (format 0, tests/data/results_v0) still load and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlprompt.cli.main import main
from vlprompt.core.errors import DataError
from vlprompt.core.results import (
    FORMAT_VERSION,
    EvalResult,
    OodResult,
    ProtocolResult,
    RunResult,
    from_dict,
    read_result,
    write_result,
)

V0 = Path(__file__).parent / "data" / "results_v0"
RUN = V0 / "coop" / "world_shapes" / "2shots" / "seed1"
V0_FILES = [
    (RUN / "metrics.json", RunResult),
    (RUN / "eval_world_shapes_test.json", EvalResult),
    (V0 / "zeroshot_eval.json", EvalResult),
    (V0 / "b2n" / "base2new_results.json", ProtocolResult),
    (V0 / "xd" / "xd_results.json", ProtocolResult),
    (RUN / "ood" / "ood_results.json", OodResult),
]


@pytest.mark.parametrize(("path", "cls"), V0_FILES, ids=lambda v: getattr(v, "name", getattr(v, "__name__", v)))
def test_previous_release_files_load(path: Path, cls: type) -> None:
    raw = json.loads(path.read_text())
    assert "format_version" not in raw  # really written before the schema existed
    record = read_result(path, cls)
    assert isinstance(record, cls)
    for key, value in record.to_dict().items():  # every field the file had is kept as written
        if key in raw:
            assert value == raw[key], key
    again = from_dict(cls, json.loads(json.dumps(record.to_dict())))
    assert again == record  # and it round-trips in the current format


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    rec = RunResult(method="coop", dataset="d", shots=4, seed=2, backbone={"model": "m", "pretrained": None},
                    test={"accuracy": 50.0, "macro_accuracy": 40.0, "n": 10, "per_class": {"a": 50.0}})
    written = write_result(tmp_path / "metrics.json", rec)
    assert written["format_version"] == FORMAT_VERSION and written["kind"] == "run"
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == written
    assert read_result(tmp_path / "metrics.json", RunResult) == rec


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(backbone="ViT-B-16"), "backbone"),
    (lambda d: d.pop("test"), "test"),
    (lambda d: d["test"].update(accuracy="high"), "test.accuracy"),
    (lambda d: d["test"].update(accuracy=float("nan")), "test.accuracy"),
    (lambda d: d.update(shots="two"), "shots"),
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "newer than this vlprompt reads"),
    (lambda d: d.update(kind="ood"), "holds a 'ood' result"),
])
def test_malformed_results_are_refused_naming_file_and_field(tmp_path: Path, mutate, message: str) -> None:
    data = json.loads((RUN / "metrics.json").read_text())
    mutate(data)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as info:
        read_result(path, RunResult)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_unreadable_result_files_are_data_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(DataError, match="metrics.json"):
        read_result(path, RunResult)


def test_report_reads_previous_release_folder(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(V0, runs)
    assert main(["report", str(runs), "--output", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["ignored"] == []
    few = summary["fewshot"]["coop|vlprompt-test-vit"]["world_shapes"]["2"]
    assert few["mean"] == pytest.approx(json.loads((RUN / "metrics.json").read_text())["test"]["accuracy"])
    assert summary["protocols"] and summary["ood"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "base2new" in md and "world_textures" in md and "world_ood_shapes" in md
