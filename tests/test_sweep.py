"""`vlprompt sweep` + `vlprompt report` end to end on the world (tiny settings), with stop-and-resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlprompt.cli.main import main


def _sweep(tmp_path, **extra):
    base = {
        "method": {"name": "coop", "n_ctx": 2},
        "backbone": {"model": "vlprompt-test-rn", "pretrained": None},
        "data": {"dataset": "world_patterns", "augment": False, "num_workers": 0,
                 "options": {"n_train": 2, "n_val": 1, "n_test": 2}},
        "optim": {"max_epoch": 1, "batch_size": 8},
        "train": {"device": "cpu", "tensorboard": False},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"name": "tiny", "protocol": "fewshot", "config": str(tmp_path / "base.yaml"),
             "methods": ["zeroshot", "coop"], "datasets": ["world_patterns"], "shots": [1, 2], "seeds": [1, 2],
             "output_dir": str(tmp_path / "out"), **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.slow
@pytest.mark.world
def test_sweep_runs_resumes_and_reports(tmp_path, capsys):
    path = _sweep(tmp_path)
    assert main(["sweep", str(path), "--no-progress"]) == 0
    runs = sorted((tmp_path / "out").rglob("metrics.json"))
    assert len(runs) == 2 * 2 * 2  # methods x shots x seeds
    mtimes = {p: p.stat().st_mtime_ns for p in runs}
    victim = tmp_path / "out" / "coop" / "default" / "world_patterns" / "2shots" / "seed2" / "metrics.json"
    victim.unlink()  # as if the sweep had been killed during this run
    assert main(["sweep", str(path), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "sweep_summary.json").read_text())
    assert summary["done"] == 1 and summary["skipped"] == 7
    for p, t in mtimes.items():
        if p != victim:
            assert p.stat().st_mtime_ns == t  # finished runs were not redone
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "### coop" in out and "± " in out and "### zeroshot" in out
    for name in ("report.md", "report.csv", "report.json", "report_fewshot.png", "report_fewshot.svg"):
        assert (tmp_path / "out" / name).is_file()
    js = json.loads((tmp_path / "out" / "report.json").read_text())
    cell = js["fewshot"]["coop|vlprompt-test-rn"]["world_patterns"]["2"]
    accs = [json.loads(p.read_text())["test"]["accuracy"] for p in
            (tmp_path / "out" / "coop" / "default" / "world_patterns" / "2shots").rglob("metrics.json")]
    assert cell["seeds"] == 2 and abs(cell["mean"] - sum(accs) / 2) < 1e-9


@pytest.mark.world
def test_a_failing_run_is_reported_without_stopping_the_others(tmp_path, capsys):
    path = _sweep(tmp_path, datasets=["world_patterns", "no_such_dataset"], methods=["coop"], shots=[1], seeds=[1])
    assert main(["sweep", str(path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "1 runs done" in out and "failed: coop no_such_dataset" in out
    assert (tmp_path / "out" / "coop" / "default" / "world_patterns" / "1shots" / "seed1" / "metrics.json").exists()


@pytest.mark.slow
def test_sweep_protocol_base2new(tmp_path):
    path = _sweep(tmp_path, protocol="base2new", methods=["coop"], shots=[1], seeds=[1, 2])
    assert main(["sweep", str(path), "--no-progress"]) == 0
    assert main(["report", str(tmp_path / "out"), "--paper", "cocoop"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "### base2new" in text and "paper H" in text and "No published numbers match these runs" in text
    for name in ("report_protocols.csv", "report_base2new.png", "report_base2new.svg"):
        assert (tmp_path / "out" / name).is_file()
    record = json.loads((tmp_path / "out" / "report.json").read_text())["protocols"]["base2new"][0]
    assert record["seeds"] == [1, 2] and record["paper"] is None


@pytest.mark.slow
@pytest.mark.world
def test_sweep_protocol_ood_trains_scores_and_reports(tmp_path):
    path = _sweep(tmp_path, protocol="ood", methods=["zeroshot", "locoop"], shots=[1], seeds=[1, 2],
                  targets=["world_ood_novel"])
    assert main(["sweep", str(path), "--no-progress"]) == 0
    results = sorted((tmp_path / "out").rglob("ood_results.json"))
    assert len(results) == 2 * 2  # methods x seeds
    assert (tmp_path / "out" / "locoop" / "default" / "world_patterns" / "1shots" / "seed2" / "prompt.safetensors"
            ).is_file()
    assert main(["sweep", str(path), "--no-progress"]) == 0  # resumed: nothing redone
    summary = json.loads((tmp_path / "out" / "sweep_summary.json").read_text())
    assert summary["done"] == 0 and summary["skipped"] == 4
    assert main(["report", str(tmp_path / "out")]) == 0
    ood = json.loads((tmp_path / "out" / "report.json").read_text())["ood"]
    assert any("locoop" in json.dumps(entry) for entry in (ood if isinstance(ood, list) else [ood]))
    assert "FPR95" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.world
def test_sweep_protocol_unsupervised_pseudo_labels_once_for_all_seeds(tmp_path):
    path = _sweep(tmp_path, protocol="unsupervised", methods=["upl"], shots=[2], seeds=[1, 2])
    assert main(["sweep", str(path), "--no-progress"]) == 0
    folder = tmp_path / "out" / "upl" / "default" / "world_patterns" / "2shots"
    pseudo = json.loads((folder / "pseudo_labels.json").read_text())
    for seed in (1, 2):
        cfg = yaml.safe_load((folder / f"seed{seed}" / "config.yaml").read_text())
        assert cfg["data"]["fewshot_file"] == str(folder / "pseudo_labels.json")
        assert json.loads((folder / f"seed{seed}" / "metrics.json").read_text())["method"] == "upl"
    assert pseudo  # the shared split file (top-2 per class of the unlabeled train split)


@pytest.mark.world
def test_sweep_progress_shows_the_overall_bar_and_each_runs_bar_without_log_lines(tmp_path, capsys):
    path = _sweep(tmp_path, methods=["coop"], shots=[1], seeds=[1, 2])
    assert main(["sweep", str(path)]) == 0
    err = capsys.readouterr().err
    assert "sweep tiny" in err and "2/2" in err  # overall bar: runs done / total
    assert "epochs" in err  # each run's own bar
    log = (tmp_path / "out" / "coop" / "default" / "world_patterns" / "1shots" / "seed1" / "log.txt").read_text()
    assert "epoch=1 " in log and "epoch=1 " not in err  # log lines go to the run's log, not the console


@pytest.mark.world
def test_sweep_config_per_method_mapping(tmp_path):
    path = _sweep(tmp_path, methods=["coop", "cocoop"], shots=[1], seeds=[1])
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    (tmp_path / "cocoop.yaml").write_text(yaml.safe_dump({**base, "method": {"name": "cocoop", "n_ctx": 3}}))
    sweep = yaml.safe_load(path.read_text())
    sweep["config"] = {"cocoop": str(tmp_path / "{method}.yaml"), "default": str(tmp_path / "base.yaml")}
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--no-progress"]) == 0
    run = tmp_path / "out" / "{}" / "default" / "world_patterns" / "1shots" / "seed1" / "config.yaml"
    coop = yaml.safe_load(Path(str(run).format("coop")).read_text())["method"]
    cocoop = yaml.safe_load(Path(str(run).format("cocoop")).read_text())["method"]
    assert (coop["name"], coop["n_ctx"]) == ("coop", 2) and (cocoop["name"], cocoop["n_ctx"]) == ("cocoop", 3)
    sweep["config"] = {"cocoop": str(tmp_path / "cocoop.yaml")}  # no entry for coop and no default
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--no-progress"]) == 2


def test_sweep_option_orders_is_for_tta_and_a_whole_number(tmp_path):
    """``orders: N`` reaches protocol tta (an online method's stream orders); elsewhere, or not a whole number >= 1,
    it is one clear error naming the file and the option."""
    from vlprompt.core.errors import ConfigError
    from vlprompt.tasks.sweep import load_sweep

    def sweep(**raw):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "datasets": ["d"], **raw}))
        return path

    assert load_sweep(sweep(protocol="tta", targets=["d"], orders=5)).orders == 5
    assert load_sweep(sweep(protocol="tta", targets=["d"])).orders == 1
    for raw in ({"protocol": "fewshot", "orders": 3}, {"protocol": "tta", "targets": ["d"], "orders": 0},
                {"protocol": "tta", "targets": ["d"], "orders": "5"}, {"protocol": "tta", "targets": ["d"],
                                                                        "orders": True}):
        with pytest.raises(ConfigError, match="sweep option 'orders' in .*s.yaml"):
            load_sweep(sweep(**raw))
