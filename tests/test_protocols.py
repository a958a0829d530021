"""Protocols end to end on tiny settings: base-to-new, domain generalisation, cross-dataset; resumable."""

from __future__ import annotations

import json

import pytest

from vlprompt.cli.main import main
from vlprompt.core.version import __version__
from vlprompt.data.registry import build_dataset
from vlprompt.data.subsample import subsample_classes
from vlprompt.tasks.protocols import harmonic_mean


def _world_cfg(tmp_path, method: dict, dataset="world_patterns"):
    from conftest import write_config

    return write_config(
        tmp_path / "cfg.yaml",
        method=method,
        backbone={"model": "vlprompt-test-rn", "pretrained": None},
        data={"dataset": dataset, "shots": 1, "augment": False, "num_workers": 0,
              "options": {"n_train": 2, "n_val": 1, "n_test": 3}},
        optim={"max_epoch": 2, "batch_size": 4},
        train={"device": "cpu", "progress": False, "tensorboard": False},
    )


@pytest.mark.world
def test_subsample_classes_follows_coop():
    splits = build_dataset("world_patterns", None, n_train=2, n_val=1, n_test=2)  # 7 classes
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    assert base.classnames == splits.classnames[:4] and new.classnames == splits.classnames[4:]
    assert {d.label for d in new.test} == {0, 1, 2} and all(d.classname in new.classnames for d in new.test)
    assert len(base.train) + len(new.train) == len(splits.train)
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140) and harmonic_mean(0, 0) == 0


@pytest.mark.slow
@pytest.mark.world
@pytest.mark.parametrize("method", [{"name": "coop", "n_ctx": 2}, {"name": "cocoop"}, {"name": "zeroshot"}])
def test_base_to_new_over_seeds(tmp_path, capsys, method):
    cfg = _world_cfg(tmp_path, method)
    out = tmp_path / "b2n"
    assert main(["protocol", "base2new", "-c", str(cfg), "--seeds", "1,2", "-o", str(out)]) == 0
    result = json.loads((out / "base2new_results.json").read_text())
    rows = result["per_seed"]
    assert len(rows) == (1 if method["name"] == "zeroshot" else 2)
    for r in rows:
        assert r["H"] == pytest.approx(harmonic_mean(r["base"], r["new"]))
    assert "±" in capsys.readouterr().out
    assert result["vlprompt_version"] == __version__ and len(result["config_digest"]) == 64
    assert result["backbone"] == {"family": "open_clip", "model": "vlprompt-test-rn", "pretrained": None}
    if method["name"] != "zeroshot":
        run = json.loads((out / "seed1" / "metrics.json").read_text())
        assert run["test"]["n"] == 4 * 3  # 4 base classes x 3 test images
        assert run["backbone"] == result["backbone"]  # one backbone record in every result kind
        # a second invocation reuses the finished runs (no retraining) and gives the same numbers
        mtime = (out / "seed1" / "metrics.json").stat().st_mtime
        assert main(["protocol", "base2new", "-c", str(cfg), "--seeds", "1,2", "-o", str(out)]) == 0
        assert (out / "seed1" / "metrics.json").stat().st_mtime == mtime
        assert json.loads((out / "base2new_results.json").read_text())["per_seed"] == rows


@pytest.mark.slow
@pytest.mark.world
def test_domain_generalisation_and_cross_dataset(tmp_path):
    cfg = _world_cfg(tmp_path, {"name": "coop", "n_ctx": 2}, dataset="world_shapes")
    out = tmp_path / "dg"
    assert main(["protocol", "dg", "-c", str(cfg), "--seeds", "1", "--targets",
                 "world_shapes_sketch,world_shapes_noisy", "-o", str(out)]) == 0
    result = json.loads((out / "dg_results.json").read_text())
    assert result["columns"] == ["world_shapes", "world_shapes_sketch", "world_shapes_noisy", "target average"]
    out = tmp_path / "xd"
    assert main(["protocol", "xd", "-c", str(cfg), "--seeds", "1", "--targets", "world_patterns",
                 "-o", str(out)]) == 0
    assert "world_patterns" in json.loads((out / "xd_results.json").read_text())["summary"]


@pytest.mark.world
def test_transfer_without_targets_is_a_clear_error(tmp_path, capsys):
    cfg = _world_cfg(tmp_path, {"name": "coop"})
    assert main(["protocol", "dg", "-c", str(cfg), "--seeds", "1", "-o", str(tmp_path / "x")]) == 2
    assert "--targets" in capsys.readouterr().err
