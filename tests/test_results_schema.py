"""The results schema (vlprompt.core.results): every result file is written and read through it; files of the
earlier releases (format 0: tests/data/results_v0, format 1: tests/data/results_v1) still load and report as
they did (tests/data/report_golden), except that one backbone is one backbone in every result kind."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from vlprompt.cli.main import main
from vlprompt.core.errors import DataError
from vlprompt.core.results import (
    DIGEST_EXCLUDED,
    FORMAT_VERSION,
    BackboneRecord,
    EvalResult,
    OodResult,
    ProtocolResult,
    RunResult,
    config_digest,
    from_dict,
    read_result,
    write_result,
)
from vlprompt.core.version import __version__

DATA = Path(__file__).parent / "data"
V0, V1 = DATA / "results_v0", DATA / "results_v1"
RUN = Path("coop") / "world_shapes" / "2shots" / "seed1"
FILES = [  # (release folder, file, record, format written)
    *[(V0, path, cls, 0) for path, cls in [
        (RUN / "metrics.json", RunResult),
        (RUN / "eval_world_shapes_test.json", EvalResult),
        (Path("zeroshot_eval.json"), EvalResult),
        (Path("b2n") / "base2new_results.json", ProtocolResult),
        (Path("xd") / "xd_results.json", ProtocolResult),
        (RUN / "ood" / "ood_results.json", OodResult),
    ]],
    *[(V1, path, cls, 1) for path, cls in [
        (RUN / "metrics.json", RunResult),
        (RUN / "eval_world_shapes_test.json", EvalResult),
        (Path("zeroshot_eval.json"), EvalResult),
        (Path("b2n") / "base2new_results.json", ProtocolResult),
        (Path("xd") / "xd_results.json", ProtocolResult),
        (RUN / "ood" / "ood_results.json", OodResult),
        (Path("sweep") / "zeroshot" / "default" / "world_shapes" / "2shots" / "seed1" / "metrics.json", RunResult),
        (Path("hf") / RUN / "metrics.json", RunResult),
        (Path("hf") / "b2n" / "base2new_results.json", ProtocolResult),
        (Path("hf") / RUN / "ood" / "ood_results.json", OodResult),
    ]],
]
REPORT_FILES = ("report.md", "report.json", "report.csv", "report_protocols.csv", "report_ood.csv")


def _id(value: object) -> str:
    return str(value.relative_to(DATA)) if isinstance(value, Path) and value.is_absolute() else str(
        getattr(value, "__name__", value))


@pytest.mark.parametrize(("release", "path", "cls", "written"), FILES, ids=_id)
def test_earlier_release_files_load(release: Path, path: Path, cls: type, written: int) -> None:
    raw = json.loads((release / path).read_text())
    assert raw.get("format_version", 0) == written  # really written by that release
    record = read_result(release / path, cls)
    assert isinstance(record, cls)
    assert record.vlprompt_version is None and record.config_digest is None  # not recorded then
    for key, value in record.to_dict().items():  # every other field the file had is kept as written
        if key in raw and key not in ("backbone", "format_version"):
            assert value == raw[key], key
    bb = raw["backbone"]  # the backbone, whichever way it was spelled, as one record
    family, model = ("hf", "hf_tiny") if "hf" in path.parts else ("open_clip", "vlprompt-test-vit")
    assert record.backbone == BackboneRecord(family, model, bb["pretrained"])
    assert record.backbone.label == (model if family == "open_clip" else f"hf:{model}")
    again = from_dict(cls, json.loads(json.dumps(record.to_dict())))
    assert again == record  # and it round-trips in the current format


@pytest.mark.slow
@pytest.mark.parametrize("release", ["v0", "v1"])
def test_report_of_earlier_release_files_is_unchanged(release: str, tmp_path: Path, monkeypatch) -> None:
    """`vlprompt report` writes, byte for byte, the Markdown / CSV / JSON the release before issue 26 wrote for
    the same files (tests/data/report_golden; results_v1 without its hf/ folder, where the grouping was fixed)."""
    shutil.copytree(DATA / f"results_{release}", tmp_path / "runs", ignore=shutil.ignore_patterns("hf"))
    monkeypatch.chdir(tmp_path)
    assert main(["report", "runs", "--output", "report"]) == 0
    for name in REPORT_FILES:
        assert (tmp_path / "report" / name).read_text() == (DATA / "report_golden" / release / name).read_text(), name


def _backbones(report: Path) -> set[str]:
    """Every backbone named in the report's three CSV files."""
    out = set()
    for name in ("report.csv", "report_protocols.csv", "report_ood.csv"):
        out |= {row["backbone"] for row in csv.DictReader(io.StringIO((report / name).read_text()))}
    return out


@pytest.mark.slow
@pytest.mark.world
def test_one_backbone_is_one_backbone_in_every_result_kind(tmp_path: Path) -> None:
    """results_v1/hf: the run's metrics say {"family": "hf", "model": "hf_tiny"}, the protocol and OOD results
    {"model": "hf:hf_tiny"} (the release before issue 26 showed two backbones, "hf_tiny" and "hf:hf_tiny")."""
    shutil.copytree(V1, tmp_path / "runs")
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "report")]) == 0
    assert _backbones(tmp_path / "report") == {"vlprompt-test-vit", "hf:hf_tiny"}
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "coop|hf:hf_tiny" in summary["fewshot"]
    assert [r["backbone"] for r in summary["protocols"]["base2new"]] == ["hf:hf_tiny", "vlprompt-test-vit"]
    assert "coop|hf:hf_tiny|world_shapes|2shots" in summary["ood"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "### coop (hf:hf_tiny): test accuracy" in md and "(hf_tiny)" not in md


@pytest.mark.parametrize(("spelling", "expected"), [
    ({"family": "hf", "model": "/m/clip", "pretrained": None, "embed_dim": 32, "text_width": 32},
     BackboneRecord("hf", "/m/clip", None)),  # a run's metrics (format 1): the facts beyond identity dropped
    ({"model": "hf:/m/clip", "pretrained": None}, BackboneRecord("hf", "/m/clip", None)),  # protocol / OOD (1)
    ({"model": "ViT-B-16", "pretrained": "openai"}, BackboneRecord("open_clip", "ViT-B-16", "openai")),  # format 0
    ("hf:C:/models/clip", BackboneRecord("hf", "C:/models/clip")),  # a config's model string
    ("hf-hub:laion/CLIP-ViT-B-32", BackboneRecord("open_clip", "hf-hub:laion/CLIP-ViT-B-32")),  # open_clip's own
    ("toy:tiny:v2", BackboneRecord("toy", "tiny:v2")),  # a plugin family's model
])
def test_backbone_record_reads_every_spelling(spelling, expected: BackboneRecord) -> None:
    record = BackboneRecord.from_any(spelling)
    assert record == expected
    assert BackboneRecord.from_any(record.as_dict()) == record
    assert BackboneRecord.from_any(record.label) == BackboneRecord(record.family, record.model)  # label: no tag
    assert record.as_dict() == {"family": expected.family, "model": expected.model, "pretrained": expected.pretrained}


@pytest.mark.parametrize("bad", [["ViT-B-16"], {"family": "hf"}, {"model": ""}, {"model": "m", "pretrained": 3},
                                 {"family": 1, "model": "m"}])
def test_malformed_backbones_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="backbone"):
        BackboneRecord.from_any(bad)


def _resolved() -> dict:
    from vlprompt.config import config_from_dict

    return config_from_dict({"method": {"name": "coop"}, "backbone": {"model": "vlprompt-test-vit"},
                             "data": {"dataset": "world_shapes"}, "train": {"output_dir": "runs/a"}}).as_dict()


def test_config_digest_changes_with_what_is_computed_only() -> None:
    base = _resolved()
    digest = config_digest(base)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert config_digest(dict(reversed(list(base.items())))) == digest  # canonical: key order does not matter
    for option in DIGEST_EXCLUDED:  # where files go / how progress shows: the same experiment
        section, name = option.split(".")
        moved = _resolved()
        assert name in moved[section], option
        moved[section][name] = "elsewhere"
        assert config_digest(moved) == digest, option
    for section, name, value in [("optim", "lr", 0.5), ("train", "seed", 9), ("data", "shots", 2),
                                 ("method", "n_ctx", 2), ("backbone", "pretrained", "laion2b")]:
        changed = _resolved()
        changed[section][name] = value
        assert config_digest(changed) != digest, f"{section}.{name}"


def _record(**extra) -> RunResult:
    return RunResult(method="coop", dataset="d", shots=4, seed=2, backbone=BackboneRecord("open_clip", "m"),
                     test={"accuracy": 50.0, "macro_accuracy": 40.0, "n": 10, "per_class": {"a": 50.0}}, **extra)


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    rec = _record(config_digest=config_digest(_resolved()))
    written = write_result(tmp_path / "metrics.json", rec)
    assert written["format_version"] == FORMAT_VERSION and written["kind"] == "run"
    assert written["vlprompt_version"] == __version__ and written["config_digest"] == config_digest(_resolved())
    assert written["backbone"] == {"family": "open_clip", "model": "m", "pretrained": None}
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == written
    assert read_result(tmp_path / "metrics.json", RunResult) == rec


def test_a_result_is_never_written_without_its_config_digest_or_backbone_record(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config_digest"):
        write_result(tmp_path / "metrics.json", _record())
    spelled = _record(config_digest=config_digest(_resolved()))
    spelled.backbone = {"model": "hf:/m/clip"}  # a writer must build the record, not a spelling of it
    with pytest.raises(ValueError, match="BackboneRecord"):
        write_result(tmp_path / "metrics.json", spelled)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(backbone=["ViT-B-16"]), "backbone"),
    (lambda d: d["backbone"].pop("model"), "backbone.model"),
    (lambda d: d.pop("test"), "test"),
    (lambda d: d["test"].update(accuracy="high"), "test.accuracy"),
    (lambda d: d["test"].update(accuracy=float("nan")), "test.accuracy"),
    (lambda d: d.update(shots="two"), "shots"),
    (lambda d: d.update(config_digest="abc"), "config_digest"),
    (lambda d: d.update(vlprompt_version=1), "vlprompt_version"),
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "newer than this vlprompt reads"),
    (lambda d: d.update(kind="ood"), "holds a 'ood' result"),
])
def test_malformed_results_are_refused_naming_file_and_field(tmp_path: Path, mutate, message: str) -> None:
    data = json.loads((V1 / RUN / "metrics.json").read_text())
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


@pytest.mark.slow
@pytest.mark.world
def test_report_reads_previous_release_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(V0, runs)
    assert main(["report", str(runs), "--output", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["ignored"] == []
    few = summary["fewshot"]["coop|vlprompt-test-vit"]["world_shapes"]["2"]
    assert few["mean"] == pytest.approx(json.loads((V0 / RUN / "metrics.json").read_text())["test"]["accuracy"])
    assert summary["protocols"] and summary["ood"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "base2new" in md and "world_textures" in md and "world_ood_shapes" in md
