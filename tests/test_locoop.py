"""LoCoOp: the OOD regulariser (selection rule, entropy, zero when empty), training through the CLI, `vlprompt ood`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.core.errors import ConfigError
from vlprompt.methods.locoop.model import entropy_of_selected
from vlprompt.methods.registry import build_method


def test_selection_rule_and_entropy_by_hand():
    # 1 image, 3 patches, 4 classes, label 0, K = 2
    logits = torch.tensor([[[5.0, 4.0, 0.0, 0.0],    # top-2 = {0, 1}: contains label -> not selected
                            [0.0, 5.0, 4.0, 0.0],    # top-2 = {1, 2}: selected
                            [0.0, 0.0, 1.0, 1.0]]])  # top-2 = {2, 3}: selected
    got = entropy_of_selected(logits, torch.tensor([0]), top_k=2)
    ent = [-(p * torch.log(p + 1e-5)).sum() for p in F.softmax(logits[0, 1:], dim=-1)]
    assert float(got) == pytest.approx(float(sum(ent) / 2), rel=1e-6)


def test_no_selected_patch_gives_zero():
    logits = torch.randn(2, 5, 3)
    assert float(entropy_of_selected(logits, torch.tensor([0, 1]), top_k=3)) == 0.0


def test_loss_is_ce_minus_lambda_entropy(tiny_backbone):
    torch.manual_seed(0)
    m = build_method("locoop", tiny_backbone, ["a", "b", "c", "d", "e"], n_ctx=4, top_k=2, lambda_value=0.5)
    images = torch.randn(3, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    labels = torch.tensor([0, 3, 4])
    feats = m.encode_images(images)
    assert feats.shape[1] > 1
    out = m.training_loss(feats, labels)
    loss, logits = out.total(), out.logits
    assert set(out.terms) == {"ce", "ood"} and out.terms["ce"][1] == 3  # the ood count: selected patches
    text = m.text_features()
    ce = F.cross_entropy(m.logits(feats, text), labels)
    local = tiny_backbone.logit_scale * F.normalize(feats[:, 1:], dim=-1) @ text.t()
    expected = ce - 0.5 * entropy_of_selected(local, labels, 2)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert m.ctx.grad is not None and all(p.grad is None for p in tiny_backbone.parameters())
    # inference is CoOp's on the global feature
    torch.testing.assert_close(logits, m.forward(images))


def test_default_top_k_scales_with_classes_and_is_checked(vit_backbone):
    names = [f"c{i}" for i in range(50)]
    assert build_method("locoop", vit_backbone, names).top_k == 10
    with pytest.raises(ConfigError, match="top_k"):
        build_method("locoop", vit_backbone, ["a", "b"], top_k=3)
    with pytest.raises(ConfigError, match="lambda_value"):
        build_method("locoop", vit_backbone, ["a", "b"], lambda_value=-1.0)


@pytest.mark.slow
@pytest.mark.world
def test_locoop_trains_then_ood_reports_table_json_and_plot(tmp_path, capsys):
    from vlprompt.cli.main import main

    from conftest import write_config

    cfg = write_config(
        tmp_path / "cfg.yaml",
        method={"name": "locoop", "n_ctx": 4, "top_k": 3},
        backbone={"model": "vlprompt-test-vit", "pretrained": None},
        data={"dataset": "world_shapes", "shots": 2, "num_workers": 0, "augment": True,
              "options": {"n_train": 2, "n_val": 1, "n_test": 2, "image_size": 32}},
        optim={"max_epoch": 2, "batch_size": 8},
        train={"device": "cpu", "progress": False, "tensorboard": False, "output_dir": str(tmp_path / "run")},
    )
    assert main(["train", "-c", str(cfg)]) == 0
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert main(["ood", "--run", str(tmp_path / "run"), "--ood-sets", "world_ood_novel,world_ood_textures",
                 "--scores", "mcm,glmcm,energy"]) == 0
    out = capsys.readouterr().out
    assert "glmcm FPR95" in out and "average" in out
    result = json.loads((tmp_path / "run" / "ood" / "ood_results.json").read_text())
    assert set(result["per_set"]) == {"world_ood_novel", "world_ood_textures"}
    assert result["shots"] == 2  # the learned prompt's training shots, for the report's grouping
    for s in ("mcm", "glmcm", "energy"):
        assert 0 <= result["average"][s]["auroc"] <= 100
    assert (tmp_path / "run" / "ood" / "ood_scores.png").stat().st_size > 1000


@pytest.mark.slow
def test_zero_shot_ood_against_an_image_folder(tmp_path, tiny_imagefolder, capsys):
    from vlprompt.cli.main import main

    from conftest import tiny_config, write_config
    from data_trees import make_imagefolder

    ood_root = make_imagefolder(tmp_path / "oodimgs", classes=("x", "y"), per_class=3, size=32)
    cfg = write_config(tmp_path / "c.yaml", **tiny_config(tmp_path, tiny_imagefolder))
    assert main(["ood", "-c", str(cfg), "--ood-sets", str(ood_root / "train"), "--scores", "mcm,maxlogit",
                 "-o", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "ood_results.json").read_text())
    assert result["method"] == "zeroshot" and list(result["per_set"]) == ["train"]
    assert result["shots"] is None  # zero-shot CLIP saw no training shots
    assert main(["ood", "-c", str(cfg), "--ood-sets", str(tmp_path / "nothing")]) == 2
    assert "neither a folder nor a known dataset" in capsys.readouterr().err


def test_a_relative_ood_folder_is_found_under_data_root_and_named_as_given(tmp_path, monkeypatch):
    from vlprompt.config import config_from_dict
    from vlprompt.tasks.ood import resolve_ood_set

    from data_trees import make_imagefolder

    make_imagefolder(tmp_path / "data" / "dtd", classes=("x",), per_class=2, size=16)
    monkeypatch.chdir(tmp_path)  # the working directory has no dtd/ folder
    cfg = config_from_dict({"method": {"name": "zeroshot"}, "data": {"dataset": "imagefolder",
                                                                     "root": str(tmp_path / "data")}})
    name, items, _ = resolve_ood_set("dtd/train", cfg)
    assert name == "dtd/train" and len(items) == 2 and all(d.label == -1 for d in items)
