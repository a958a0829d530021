"""`vlprompt demo` plumbing (tiny random backbone, tiny settings): table, JSON, plot, run folders."""

from __future__ import annotations

import json

import pytest

from vlprompt.cli.main import main


@pytest.mark.slow
@pytest.mark.world
@pytest.mark.subprocess
def test_demo_writes_table_json_and_plot(tmp_path, capsys):
    """Two worker processes (--jobs 2, one thread each), and the numbers of a row computed in this process."""
    from vlprompt.cli.demo import dataset_row

    out = tmp_path / "demo"
    code = main(["demo", "-o", str(out), "--model", "vlprompt-test-rn", "--pretrained", "none",
                 "--datasets", "world_patterns,world_scenes", "--shots", "1,2", "--epochs", "2", "--device", "cpu",
                 "--coop-only", "--jobs", "2"])
    stdout = capsys.readouterr().out
    assert code == 0
    results = json.loads((out / "demo_results.json").read_text())
    assert [r["dataset"] for r in results["rows"]] == ["world_patterns", "world_scenes"]
    here = dataset_row("world_scenes", tmp_path / "here", shots=[1, 2], seed=1, epochs=2, max_steps=600,
                       model="vlprompt-test-rn", pretrained=None, device="cpu", log=lambda _msg: None)
    assert json.loads(json.dumps(here)) == results["rows"][1]  # the workers' numbers, digit for digit
    row = results["rows"][0]
    assert row["dataset"] == "world_patterns" and row["classes"] == 7
    assert set(row["coop"]) == {"1", "2"}
    assert results["methods"] is None
    assert (out / "demo_plot.png").stat().st_size > 1000
    assert "CoOp 2-shot" in (out / "demo_results.md").read_text() and "CoOp 2-shot" in stdout
    for k in (1, 2):
        assert (out / f"coop_world_patterns_{k}shots_seed1" / "prompt.safetensors").is_file()
    # a second demo into the same folder is refused, not overwritten
    assert main(["demo", "-o", str(out), "--model", "vlprompt-test-rn", "--pretrained", "none"]) == 2


@pytest.mark.slow
def test_demo_methods_section_runs_cocoop_upl_locoop(tmp_path):
    from vlprompt.cli.demo_methods import method_tables, run_method_demo
    from vlprompt.tasks.protocols import harmonic_mean

    res = run_method_demo(tmp_path, model="vlprompt-test-vit", pretrained=None, seed=1, device="cpu",
                          log=lambda _msg: None)
    assert [r["method"] for r in res["base2new"]["rows"]] == ["zeroshot", "coop", "cocoop"]
    for r in res["base2new"]["rows"]:
        assert 0 <= r["base"] <= 100 and 0 <= r["new"] <= 100
        assert abs(r["H"] - harmonic_mean(r["base"], r["new"])) < 1e-6
    assert [r["method"] for r in res["upl"]["rows"]] == ["zeroshot", "upl"]
    assert (tmp_path / "upl" / "pseudo_labels.json").is_file()
    assert (tmp_path / "upl" / "run" / "prompt.safetensors").is_file()
    assert [r["method"] for r in res["ood"]["rows"]] == ["zeroshot", "coop", "locoop"]
    for r in res["ood"]["rows"]:
        assert 0 <= r["glmcm_fpr95"] <= 100 and 0 <= r["mcm_auroc"] <= 100
    text = method_tables(res)
    assert "GL-MCM AUROC" in text and "cocoop" in text and "top-16 pseudo" in text


@pytest.mark.slow
@pytest.mark.world
def test_quick_demo_is_the_small_default(tmp_path, monkeypatch):
    import vlprompt.cli.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.update(kw) or {"model": "m", "pretrained": "p",
                                                                              "seed": 1, "seconds": 1.0, "rows": [],
                                                                              "shots": [1], "methods": None})
    monkeypatch.setattr(demo, "results_table", lambda results: "")
    assert main(["demo", "--quick", "-o", str(tmp_path / "q"), "--jobs", "1"]) == 0
    assert seen["datasets"] == ("world_shapes", "world_scenes") and seen["shots"] == (1, 4)
    assert seen["methods"] is False and seen["jobs"] == 1
    assert main(["demo", "--quick", "--shots", "2", "-o", str(tmp_path / "r"), "--jobs", "1"]) == 0
    assert seen["shots"] == [2]
    assert main(["demo", "--jobs", "0", "-o", str(tmp_path / "s")]) == 2
