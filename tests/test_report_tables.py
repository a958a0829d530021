"""The report's one table model (Markdown / CSV / JSON from the same Table) and its reading of result files."""

from __future__ import annotations

import csv
import io
import json

from vlprompt.core.results import BackboneRecord, RunResult, config_digest, write_result
from vlprompt.core.tables import Table, markdown_table
from vlprompt.report.build import make_report
from vlprompt.report.collect import collect_fewshot, method_capabilities


def test_one_table_three_renderings():
    t = Table("accuracy", ["dataset", "mean", "note"], [["dtd", 61.256, None], ["eurosat, rgb", 80.0, "a|b"]])
    assert t.to_markdown() == "### accuracy\n\n" + markdown_table(t.columns, t.rows)
    assert "| dtd " in t.to_markdown() and "61.26" in t.to_markdown()  # Markdown: 2 decimals, None as '-'
    parsed = list(csv.reader(io.StringIO(t.to_csv())))
    assert parsed == [["dataset", "mean", "note"], ["dtd", "61.256", ""], ["eurosat, rgb", "80.0", "a|b"]]
    assert json.loads(json.dumps(t.to_json())) == {"title": "accuracy", "columns": t.columns, "rows": t.rows}


def test_unknown_methods_count_as_trainable_and_supervised():
    caps = method_capabilities("a-method-of-a-later-release")
    assert caps.trainable and not caps.unsupervised
    assert not method_capabilities("zeroshot").trainable and method_capabilities("upl").unsupervised


def test_current_and_format_0_run_files_are_read_and_tables_listed(tmp_path):
    backbone = {"model": "ViT-B-16", "pretrained": "openai"}
    for seed, acc in ((1, 50.0), (2, 54.0)):
        write_result(tmp_path / f"new{seed}" / "metrics.json", RunResult(
            method="newmethod", dataset="dtd", shots=4, seed=seed, backbone=BackboneRecord.from_any(backbone),
            test={"accuracy": acc, "macro_accuracy": acc, "n": 10}, config_digest=config_digest({"seed": seed})))
    old = tmp_path / "old" / "metrics.json"  # format 0: no format_version / kind
    old.parent.mkdir()
    old.write_text(json.dumps({"method": "coop", "dataset": "dtd", "shots": 4, "seed": 1, "backbone": backbone,
                               "test": {"accuracy": 60.0}}))
    assert json.loads((tmp_path / "new1" / "metrics.json").read_text())["format_version"] >= 1
    assert collect_fewshot(tmp_path) == {("coop", "ViT-B-16", "dtd", 4): [60.0],
                                         ("newmethod", "ViT-B-16", "dtd", 4): [50.0, 54.0]}
    result = make_report(tmp_path)
    js = json.loads((tmp_path / "report.json").read_text())
    assert js["tables"] == result["tables"]
    csv_table = next(t for t in js["tables"] if t.get("csv") == "report.csv")
    rows = list(csv.reader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert [csv_table["columns"], *[[str(c) for c in r] for r in csv_table["rows"]]] == rows
    shown = [t for t in js["tables"] if "csv" not in t]
    assert all(f"### {t['title']}" in result["markdown"] for t in shown)
    newmethod = next(t for t in shown if t["title"].startswith("newmethod (ViT-B-16)"))
    assert newmethod["rows"] == [["dtd", "52.00 ± 2.00"]]
