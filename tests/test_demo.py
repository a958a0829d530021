"""`vlprompt demo` plumbing (tiny random backbone, tiny settings): table, JSON, plot, run folders."""

from __future__ import annotations

import json

from vlprompt.cli.main import main


def test_demo_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "-o", str(out), "--model", "vlprompt-test-rn", "--pretrained", "none",
                 "--datasets", "world_patterns", "--shots", "1,2", "--epochs", "2", "--device", "cpu"])
    stdout = capsys.readouterr().out
    assert code == 0
    results = json.loads((out / "demo_results.json").read_text())
    row = results["rows"][0]
    assert row["dataset"] == "world_patterns" and row["classes"] == 7
    assert set(row["coop"]) == {"1", "2"}
    assert (out / "demo_plot.png").stat().st_size > 1000
    assert "CoOp 2-shot" in (out / "demo_results.md").read_text() and "CoOp 2-shot" in stdout
    for k in (1, 2):
        assert (out / f"coop_world_patterns_{k}shots_seed1" / "prompt.safetensors").is_file()
    # a second demo into the same folder is refused, not overwritten
    assert main(["demo", "-o", str(out), "--model", "vlprompt-test-rn", "--pretrained", "none"]) == 2
