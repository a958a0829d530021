"""End to end through the CLI: train -> eval -> predict -> interpret, and every bad input exits 2 cleanly."""

from __future__ import annotations

import json
import shutil

import pytest

from vlprompt.cli.main import main

from conftest import tiny_config, write_config


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_imagefolder):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = write_config(tmp / "cfg.yaml", **tiny_config(tmp, tiny_imagefolder, optim={"max_epoch": 8},
                                                        train={"tensorboard": True, "eval_every": 4}))
    assert main(["train", "-c", str(cfg)]) == 0
    return tmp, cfg


@pytest.mark.slow
def test_train_writes_the_run_folder_and_the_loss_falls(trained_run):
    tmp, _ = trained_run
    run = tmp / "run"
    for name in ("config.yaml", "log.txt", "metrics.json", "results.md", "prompt.safetensors", "prompt.json",
                 "fewshot.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    history = metrics["history"]
    assert len(history) == 8 and history[0]["lr"] == 1e-5
    assert history[-1]["loss"] < history[0]["loss"]
    assert metrics["test"]["n"] == 18 and 0 <= metrics["test"]["accuracy"] <= 100
    fewshot = json.loads((run / "fewshot.json").read_text())
    assert len(fewshot["train"]) == 3 * 4 and len(fewshot["val"]) == 3 * 4
    assert "val_accuracy" in history[3] and "val_accuracy" not in history[2]
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_every_result_file_records_the_version_and_the_config_digest(trained_run, capsys):
    """metrics.json and `vlprompt eval --run` of the same run: this release's version, the run's config digest."""
    from vlprompt.core.results import config_digest
    from vlprompt.core.version import __version__
    from vlprompt.engine.run_life import load_run_config

    tmp, _ = trained_run
    run = tmp / "run"
    digest = config_digest(load_run_config(run).as_dict())
    assert _run(capsys, "eval", "--run", run, "--split", "val", "--no-progress")[0] == 0
    for name in ("metrics.json", "eval_imagefolder_val.json"):
        written = json.loads((run / name).read_text())
        assert written["vlprompt_version"] == __version__ and written["config_digest"] == digest, name
        assert written["backbone"] == {"family": "open_clip", "model": "vlprompt-test-vit", "pretrained": None}
    assert _run(capsys, "eval", "--run", run, "--split", "val", "--no-progress", "--set", "data.shots=2")[0] == 0
    assert json.loads((run / "eval_imagefolder_val.json").read_text())["config_digest"] != digest


def test_a_saved_fewshot_file_is_reused(trained_run, tiny_imagefolder, tmp_path):
    from vlprompt.config import config_from_dict
    from vlprompt.core.results import RunResult, read_result
    from vlprompt.engine.trainer import train

    tmp, _ = trained_run
    raw = tiny_config(tmp_path, tiny_imagefolder, optim={"max_epoch": 1},
                      data={"fewshot_file": str(tmp / "run" / "fewshot.json")}, train={"seed": 7})
    result = train(config_from_dict(raw))
    assert result == read_result(tmp_path / "run" / "metrics.json", RunResult)  # train returns what it wrote
    old = json.loads((tmp / "run" / "fewshot.json").read_text())
    new = json.loads((tmp_path / "run" / "fewshot.json").read_text())
    assert new["train"] == old["train"] and new["val"] == old["val"]


def test_eval_reproduces_the_training_run_test_accuracy(trained_run, capsys):
    tmp, _ = trained_run
    code, out, _ = _run(capsys, "eval", "--run", tmp / "run", "--no-progress")
    assert code == 0 and "accuracy" in out
    report = json.loads((tmp / "run" / "eval_imagefolder_test.json").read_text())
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert report["per_class"] == metrics["test"]["per_class"]


def test_predict_and_interpret(trained_run, tiny_imagefolder, capsys):
    tmp, _ = trained_run
    out_json = tmp / "pred.json"
    code, out, _ = _run(capsys, "predict", "-p", tmp / "run" / "prompt.safetensors", tiny_imagefolder / "test",
                        "--topk", "2", "--json", out_json)
    assert code == 0
    preds = json.loads(out_json.read_text())
    assert len(preds) == 18 and all(len(p["top"]) == 2 for p in preds)
    assert all(abs(sum(prob for _, prob in p["top"])) <= 1.0 + 1e-6 for p in preds)
    code, out, _ = _run(capsys, "interpret", tmp / "run" / "prompt.safetensors", "--topk", "2")
    assert code == 0 and out.count("ctx") == 4


def test_zeroshot_command(tiny_imagefolder, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", **tiny_config(tmp_path, tiny_imagefolder))
    code, out, _ = _run(capsys, "zeroshot", "-c", cfg, "--templates", "imagenet_select", "--no-progress",
                        "--output", tmp_path / "zs.json")
    assert code == 0
    report = json.loads((tmp_path / "zs.json").read_text())
    assert len(report["templates"]) == 8 and report["n"] == 18


def test_rerun_into_a_finished_folder_is_refused_and_nothing_is_lost(trained_run, capsys):
    tmp, cfg = trained_run
    before = {p.name: p.read_bytes() for p in (tmp / "run").iterdir() if p.is_file()}
    code, _, err = _run(capsys, "train", "-c", cfg)
    assert code == 2 and "already holds a finished run" in err and "Traceback" not in err
    after = {p.name: p.read_bytes() for p in (tmp / "run").iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "log.txt"} == {k: v for k, v in before.items() if k != "log.txt"}


def test_checkpoint_for_another_backbone_exits_2(trained_run, capsys):
    tmp, _ = trained_run
    code, _, err = _run(capsys, "eval", "--run", tmp / "run", "--model", "vlprompt-test-rn", "--no-progress")
    assert code == 2 and "another backbone" in err


@pytest.mark.parametrize("case,match", [
    ("missing_root", "does not exist"),
    ("unknown_model", "unknown model 'vlprompt-test-vitt'"),
    ("unknown_tag", "unknown pretrained tag 'laion9000'"),
    ("too_many_shots", "data.shots"),
    ("unknown_key", "unknown option 'optim.learning_rate'"),
    ("bad_image", "Remove or replace it"),
    ("bad_image_in_worker", "Remove or replace it"),
])
def test_bad_input_gives_one_clear_error(case, match, tmp_path, tiny_imagefolder, capsys):
    cfg = tiny_config(tmp_path, tiny_imagefolder)
    if case == "missing_root":
        cfg["data"]["root"] = str(tmp_path / "nowhere")
    elif case == "unknown_model":
        cfg["backbone"]["model"] = "vlprompt-test-vitt"
    elif case == "unknown_tag":
        cfg["backbone"]["pretrained"] = "laion9000"
    elif case == "too_many_shots":
        cfg["data"]["shots"] = 50
    elif case == "unknown_key":
        cfg["optim"]["learning_rate"] = 0.1
    elif case.startswith("bad_image"):
        root = tmp_path / "data"
        shutil.copytree(tiny_imagefolder, root)
        for img in (root / "train").rglob("*.png"):
            img.write_bytes(b"not an image at all")
        cfg["data"]["root"] = str(root)
        cfg["data"]["num_workers"] = 2 if case.endswith("worker") else 0
    path = write_config(tmp_path / "cfg.yaml", **cfg)
    code, _, err = _run(capsys, "train", "-c", path)
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0]
    assert "Traceback" not in err


@pytest.mark.slow
def test_mixed_precision_training_runs_and_keeps_fp32_parameters(tmp_path, tiny_imagefolder):
    from vlprompt.config import config_from_dict
    from vlprompt.engine.checkpoint import read_prompt
    from vlprompt.engine.trainer import train

    raw = tiny_config(tmp_path, tiny_imagefolder, optim={"max_epoch": 2}, train={"precision": "amp"})
    metrics = train(config_from_dict(raw))
    tensors, _ = read_prompt(tmp_path / "run" / "prompt.safetensors")
    assert tensors["prompt_learner.ctx"].dtype.is_floating_point
    assert str(tensors["prompt_learner.ctx"].dtype) == "torch.float32"
    assert all(h["loss"] == h["loss"] for h in metrics.history)  # finite, not NaN


@pytest.mark.slow
def test_an_iteration_budget_becomes_whole_epochs(tmp_path, tiny_imagefolder):
    """optim.iterations (CLIP-LoRA's 500 x K): 12 training images, batch 4 -> 3 steps per epoch, so 5 steps
    are rounded up to 2 epochs."""
    from vlprompt.config import config_from_dict
    from vlprompt.engine.trainer import train

    raw = tiny_config(tmp_path, tiny_imagefolder, optim={"iterations": 5, "batch_size": 4})
    raw["optim"].pop("max_epoch", None)
    metrics = train(config_from_dict(raw))
    assert len(metrics.history) == 2 and metrics.epochs == 2
