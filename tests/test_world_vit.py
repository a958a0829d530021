"""The world ViT: a distilled image tower on the world ResNet's text tower (vlprompt.world.distill), and
weights assembled from parts (backbones/configs.py ``load_parts``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlprompt.backbones.configs import load_parts, pretrained_weights, register_model_configs


def _model(name: str, seed: int) -> torch.nn.Module:
    import open_clip

    register_model_configs()
    torch.manual_seed(seed)
    return open_clip.create_model(name)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.world
def test_parts_fill_each_tensor_from_the_longest_matching_prefix(tmp_path):
    a, b, c = (_model("vlprompt-test-vit", s) for s in (1, 2, 3))
    vis = _save({k: v for k, v in a.state_dict().items() if k.startswith("visual.")}, tmp_path / "v.safetensors")
    rest = _save(dict(b.state_dict()), tmp_path / "all.safetensors")  # has visual.* too: the longer prefix wins
    load_parts(c, {"visual.": vis, "": rest})
    for k, v in c.state_dict().items():
        torch.testing.assert_close(v, (a if k.startswith("visual.") else b).state_dict()[k], rtol=0, atol=0)


@pytest.mark.world
def test_parts_missing_or_misshapen_tensors_are_refused(tmp_path):
    a = _model("vlprompt-test-vit", 1)
    only_visual = _save({k: v for k, v in a.state_dict().items() if k.startswith("visual.")}, tmp_path / "v.st")
    with pytest.raises(ValueError, match="not in the weights file"):
        load_parts(a, {"": only_visual})
    other = _model("vlprompt-test-rn", 1)
    rn_all = _save(dict(other.state_dict()), tmp_path / "rn.st")
    with pytest.raises(ValueError, match="tensor '.*' (has shape|is not in)"):
        load_parts(a, {"": rn_all})


@pytest.mark.world
def test_registered_parts_load_through_the_backbone_factory(tmp_path):
    from vlprompt.backbones.configs import VLPROMPT_PRETRAINED, register_pretrained
    from vlprompt.backbones.openclip import load_backbone
    from vlprompt.core.errors import ModelError

    a, b = _model("vlprompt-test-vit", 5), _model("vlprompt-test-vit", 6)
    vis = _save({k: v for k, v in a.state_dict().items() if k.startswith("visual.")}, tmp_path / "v.st")
    rest = _save({k: v for k, v in b.state_dict().items() if not k.startswith("visual.")}, tmp_path / "t.st")
    key = ("vlprompt-test-vit", "parts-test")
    try:
        register_pretrained(*key, {"visual.": vis, "": rest})
        bb = load_backbone("vlprompt-test-vit", "parts-test")
        for k, v in bb.model.state_dict().items():
            torch.testing.assert_close(v, (a if k.startswith("visual.") else b).state_dict()[k], rtol=0, atol=0)
        rest.unlink()
        with pytest.raises(ModelError, match="missing"):
            load_backbone("vlprompt-test-vit", "parts-test")
    finally:
        VLPROMPT_PRETRAINED.pop(key, None)


@pytest.mark.slow
@pytest.mark.world
def test_distillation_trains_only_the_image_tower_on_the_teachers_text_tower(tmp_path):
    from vlprompt.world.distill import parse_args, run_distillation

    cfg = parse_args(["--out", str(tmp_path), "--steps", "2", "--batch", "8", "--eval-per-class", "1",
                      "--no-progress"])
    lines: list[str] = []
    meta = run_distillation(cfg, lines.append)
    weights = tmp_path / "vlprompt-world-vit-visual.safetensors"
    state = load_file(str(weights))
    assert state and all(k.startswith("visual.") for k in state)
    assert meta["steps"] == 2 and meta["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    teacher_file = pretrained_weights()[("vlprompt-world-rn", "world")]
    assert meta["text_tower_from"]["sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "vlprompt-world-vit.json").read_text())["distill_weight"] == 10.0
    assert any(line.startswith("teacher:") for line in lines) and lines[-1].startswith("final:")
    # the saved tower + the teacher's file make a complete model
    student = _model("vlprompt-world-vit", 0)
    load_parts(student, {"visual.": weights, "": teacher_file})


@pytest.mark.world
def test_distillation_refuses_a_student_with_another_text_tower(tmp_path):
    from vlprompt.core.errors import ModelError
    from vlprompt.world.distill import adopt_text_tower

    with pytest.raises(ModelError, match="text towers differ"):
        adopt_text_tower(_model("vlprompt-test-vit", 0), _model("vlprompt-world-rn", 0))


# -- the shipped world ViT -------------------------------------------------------------------------------
VIT, TAG = "vlprompt-world-vit", "world"


@pytest.mark.world
def test_the_shipped_world_vit_is_small_and_matches_its_hash():
    from vlprompt.world.plugin import SHIPPED, WEIGHTS_DIR

    parts = SHIPPED[VIT]
    visual = parts["visual."]
    assert visual.is_file() and visual.stat().st_size <= 3 * 2**20
    assert sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors")) <= 20 * 2**20  # all shipped weights
    meta = json.loads((WEIGHTS_DIR / f"{VIT}.json").read_text())
    assert hashlib.sha256(visual.read_bytes()).hexdigest() == meta["sha256"]
    assert meta["text_tower_from"]["sha256"] == hashlib.sha256(parts[""].read_bytes()).hexdigest()
    assert pretrained_weights()[(VIT, TAG)] == parts


@pytest.mark.world
def test_the_world_vit_reads_text_exactly_as_the_world_resnet():
    from vlprompt.backbones.build import build_backbone
    from vlprompt.config import BackboneConfig

    vit, rn = build_backbone(BackboneConfig(VIT, TAG)), build_backbone(BackboneConfig("vlprompt-world-rn", TAG))
    ids = vit.tokenize(["a photo of a red circle.", "grass"])
    with torch.no_grad():
        torch.testing.assert_close(vit.model.encode_text(ids), rn.model.encode_text(ids), rtol=0, atol=0)
    assert type(vit.model.visual).__name__ == "VisionTransformer"


# zero-shot test accuracy of the shipped world ViT (seed 1, measured when it was made: shapes 22.5, patterns
# 33.4, scenes 86.9, positions 27.1, textures 77.0; chance 8.3 / 14.3 / 14.3 / 11.1 / 10): the thresholds sit
# under the measurements and well above chance. Shapes and positions are weak: docs/world.md says why.
VIT_ZERO_SHOT = {"world_shapes": 15.0, "world_patterns": 25.0, "world_scenes": 75.0, "world_positions": 20.0,
                 "world_textures": 65.0}


def _vit_cfg(dataset: str, method: dict, tmp_path=None, optim=None):
    from vlprompt.config import config_from_dict

    return config_from_dict({
        "method": method,
        "backbone": {"model": VIT, "pretrained": TAG},
        "data": {"dataset": dataset, "shots": 16, "augment": False, "num_workers": 0},
        "optim": optim or {"max_epoch": 50, "batch_size": 32},
        "train": {"device": "cpu", "progress": False, "tensorboard": False,
                  "output_dir": str(tmp_path / "run") if tmp_path else ""},
    })


@pytest.mark.slow
@pytest.mark.world
@pytest.mark.parametrize("dataset", list(VIT_ZERO_SHOT))
def test_the_world_vit_is_far_above_chance_zero_shot(dataset):
    from vlprompt.tasks.api import zeroshot

    report = zeroshot(_vit_cfg(dataset, {"name": "zeroshot"}), progress=False)
    assert report["accuracy"] >= VIT_ZERO_SHOT[dataset]


@pytest.mark.slow
@pytest.mark.world
def test_maple_on_the_world_vit_learns_what_its_frozen_features_miss(tmp_path):
    """MaPLe with its authors' recipe (SGD 0.0035, batch 4, 5 epochs) on the base classes of world_positions,
    where the frozen world ViT is weak: measured in docs/world_results.md (seeds 1-3), base accuracy 73.7 ±
    0.7 vs zero-shot 47.6 (CoOp, text only: 68.4). Asserted with a wide margin: +15 points (seed 1)."""
    from vlprompt.config import config_from_dict
    from vlprompt.engine.trainer import train
    from vlprompt.tasks.api import zeroshot

    def cfg(method, out):
        return config_from_dict({
            "method": {"name": method},
            "backbone": {"model": VIT, "pretrained": TAG},
            "data": {"dataset": "world_positions", "shots": 16, "augment": False, "num_workers": 0,
                     "subsample_classes": "base"},
            "optim": {"name": "sgd", "lr": 0.0035, "max_epoch": 5, "batch_size": 4, "warmup_epoch": 1,
                      "warmup_lr": 1e-5},
            "train": {"device": "cpu", "progress": False, "tensorboard": False, "seed": 1, "output_dir": out},
        })

    zs = zeroshot(cfg("zeroshot", ""), progress=False)["accuracy"]
    learned = train(cfg("maple", str(tmp_path / "maple"))).accuracy
    assert learned >= zs + 15.0, (learned, zs)
