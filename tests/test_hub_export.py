"""`vlprompt export --format hub` writes a folder to upload to the Hugging Face Hub as it is, and `hf://owner/name`
loads it back from the local Hugging Face cache (never the network): same logits as the run's own prompt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vlprompt.cli.main import main
from vlprompt.engine.checkpoint import load_prompt
from vlprompt.tasks.hub_export import base_model_id, dataset_id

from conftest import tiny_config, write_config

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_imagefolder) -> tuple[Path, Path]:
    """A tiny CoOp run (1 epoch, 2 shots) and its config file."""
    tmp = tmp_path_factory.mktemp("hub_run")
    cfg = tiny_config(tmp, tiny_imagefolder, data={"shots": 2}, optim={"max_epoch": 1})
    config = write_config(tmp / "cfg.yaml", **cfg)
    assert main(["train", "-c", str(config)]) == 0
    return tmp / "run", config


def _to_cache(folder: Path, cache: Path, repo: str, sha: str = SHA) -> Path:
    """Place ``folder`` into the hub cache layout as ``hf download`` leaves it: snapshots/<sha>/..., refs/main."""
    base = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, base / "snapshots" / sha)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(sha)
    return base / "snapshots" / sha


@pytest.mark.slow
def test_hub_folder_round_trip(run, tmp_path, monkeypatch, capsys):
    run_dir, config = run
    out = tmp_path / "hub"
    assert main(["export", str(run_dir), "--format", "hub", "-o", str(out), "--repo-id", "me/tiny-coop"]) == 0
    assert "hf upload me/tiny-coop" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "metrics.json", "prompt.safetensors",
                                                     "train_config.yaml"]
    assert (out / "prompt.safetensors").read_bytes() == (run_dir / "prompt.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hub.")]  # the staging folder is gone

    cfg = json.loads((out / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert cfg["library_name"] == "vlprompt" and cfg["method"] == "coop" and cfg["method_config"]["n_ctx"] == 4
    assert cfg["classnames"] == ["blue thing", "green thing", "red thing"] and cfg["templates"] == ["a photo of a {}."]
    assert cfg["backbone"]["model"] == "vlprompt-test-vit" and cfg["base_model"] is None  # random init: no Hub repo
    assert cfg["preprocessing"]["size"] == 32 and len(cfg["preprocessing"]["mean"]) == 3
    assert (cfg["dataset"], cfg["shots"], cfg["seed"]) == ("imagefolder", 2, 1)
    assert cfg["command"] == f"vlprompt train -c {config}"  # the command line `vlprompt train` recorded
    assert (out / "train_config.yaml").read_text() == (run_dir / "config.yaml").read_text()

    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")  # the Hub's parser of the metadata block
    assert card.data.library_name == "vlprompt" and "coop" in card.data.tags
    test = next(r for r in card.data.eval_results if r.dataset_split == "test")
    assert test.metric_type == "accuracy" and test.metric_value == round(metrics["test"]["accuracy"], 2)
    assert f"vlprompt train -c {config}" in card.text and "vlprompt train -c train_config.yaml" in card.text
    assert "hf download me/tiny-coop" in card.text

    cache = tmp_path / "hf_cache"
    _to_cache(out, cache, "me/tiny-coop")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    local = load_prompt(run_dir / "prompt.safetensors")
    hub = load_prompt("hf://me/tiny-coop")
    pinned = load_prompt(Path(f"hf://me/tiny-coop@{SHA}"))  # Path folds "//"; a revision picks the snapshot
    feats = torch.randn(5, local.backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = local.logits(feats, local.text_features())
        assert torch.equal(hub.logits(feats, hub.text_features()), want)
        assert torch.equal(pinned.logits(feats, pinned.text_features()), want)

    # --prompt hf://... through the CLI: the same accuracy as the run's own prompt, the reference in the record
    mine, theirs = tmp_path / "own.json", tmp_path / "hub.json"
    own = str(run_dir / "prompt.safetensors")
    assert main(["eval", "-c", str(config), "--prompt", own, "--output", str(mine)]) == 0
    assert main(["eval", "-c", str(config), "--prompt", "hf://me/tiny-coop", "--output", str(theirs)]) == 0
    a, b = json.loads(mine.read_text()), json.loads(theirs.read_text())
    assert b["prompt"] == "hf://me/tiny-coop" and a["accuracy"] == b["accuracy"] and a["n"] == b["n"] > 0

    monkeypatch.delenv("HF_HUB_CACHE")  # HF_HOME/hub is the cache without HF_HUB_CACHE
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    shutil.copytree(cache, tmp_path / "home" / "hub")
    assert load_prompt("hf://me/tiny-coop").classnames == local.classnames


def test_uncached_prompt_is_one_error_line_naming_the_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    assert main(["predict", str(tmp_path / "x.png"), "--prompt", "hf://someone/prompt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: hf://someone/prompt is not in the local Hugging Face cache ({tmp_path / 'empty'}); "
                   "fetch it with: hf download someone/prompt"]
    assert main(["interpret", "hf://not a repo"]) == 2
    assert "owner/name" in capsys.readouterr().err


def test_cached_repo_without_a_prompt_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    _to_cache(folder, tmp_path / "cache", "me/other")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(Exception, match="holds no prompt file 'prompt.safetensors'"):
        load_prompt("hf://me/other")


def test_export_hub_refusals(run, tmp_path, capsys):
    run_dir, _ = run
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir), "--format", "hub", "-o", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "mine"
    assert main(["export", "--format", "hub", "-o", str(tmp_path / "z"), "--model", "vlprompt-test-vit"]) == 2
    assert "needs a run folder or prompt file" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "hub", "-o", str(tmp_path / "y"), "--repo-id", "bad id"]) == 2
    assert not (tmp_path / "y").exists()


def test_base_model_and_dataset_ids():
    assert base_model_id({"family": "open_clip", "model": "ViT-B-16", "pretrained": "openai"}) == \
        "timm/vit_base_patch16_clip_224.openai"
    assert base_model_id({"family": "hf", "model": "openai/clip-vit-base-patch16"}) == "openai/clip-vit-base-patch16"
    assert base_model_id({"family": "open_clip", "model": "ViT-B-16", "pretrained": "/weights/my.pt"}) is None
    assert base_model_id({"family": "open_clip", "model": "vlprompt-test-vit", "pretrained": None}) is None
    assert dataset_id("hf:someone/flowers") == "someone/flowers"
    assert dataset_id("oxford_pets") is None and dataset_id("hf:/data/local") is None
