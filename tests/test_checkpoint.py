"""Prompt files: safetensors + JSON, round trip, and refusal of mismatched / corrupted / unsafe files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from vlprompt.backbones.openclip import load_backbone
from vlprompt.core.errors import CheckpointError
from vlprompt.engine.checkpoint import (
    list_checkpoints,
    load_latest_training_state,
    load_prompt,
    read_prompt,
    save_prompt,
    save_training_state,
    write_safetensors,
)
from vlprompt.methods.registry import build_method

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture()
def trained(vit_backbone):
    torch.manual_seed(0)
    return build_method("coop", vit_backbone, CLASSES, n_ctx=4)


def test_round_trip_restores_the_same_predictions(tmp_path, trained, vit_backbone):
    path = save_prompt(tmp_path / "prompt.safetensors", trained)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["method"] == "coop" and sidecar["classnames"] == CLASSES
    assert sidecar["backbone"]["model"] == "vlprompt-test-vit"
    tensors, meta = read_prompt(path)
    assert set(tensors) == {"prompt_learner.ctx"} and meta == sidecar
    loaded = load_prompt(path)  # backbone rebuilt from the metadata
    torch.testing.assert_close(loaded.ctx, trained.ctx)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(images), trained(images))


def test_another_backbone_is_refused(tmp_path, trained):
    path = save_prompt(tmp_path / "p.safetensors", trained)
    other = load_backbone("vlprompt-test-rn")
    with pytest.raises(CheckpointError, match=r"another backbone.*model: file has 'vlprompt-test-vit'"):
        load_prompt(path, other)


def test_another_class_list_is_refused_unless_transfer_is_allowed(tmp_path, trained, vit_backbone):
    path = save_prompt(tmp_path / "p.safetensors", trained)
    with pytest.raises(CheckpointError, match=r"another class list.*index 1: 'dog' vs 'wolf'.*--allow-new-classes"):
        load_prompt(path, vit_backbone, ["cat", "wolf", "bird"])
    moved = load_prompt(path, vit_backbone, ["wolf", "fox"], allow_new_classes=True)
    torch.testing.assert_close(moved.ctx, trained.ctx)
    assert moved.classnames == ["wolf", "fox"]


def test_class_specific_prompt_cannot_move_to_new_classes(tmp_path, vit_backbone):
    csc = build_method("coop", vit_backbone, CLASSES, n_ctx=2, csc=True)
    path = save_prompt(tmp_path / "p.safetensors", csc)
    with pytest.raises(CheckpointError, match="class-specific"):
        load_prompt(path, vit_backbone, ["a", "b", "c"], allow_new_classes=True)


def test_newer_format_and_foreign_files_are_refused(tmp_path, trained):
    path = tmp_path / "future.safetensors"
    write_safetensors(path, trained.learned_state(), {"format": "vlprompt-prompt", "version": 99})
    with pytest.raises(CheckpointError, match="newer vlprompt"):
        read_prompt(path)
    other = tmp_path / "other.safetensors"
    write_safetensors(other, {"x": torch.zeros(1)}, {})
    with pytest.raises(CheckpointError, match="not a vlprompt prompt file"):
        read_prompt(other)


def test_truncated_file_is_reported(tmp_path, trained):
    path = save_prompt(tmp_path / "p.safetensors", trained)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        read_prompt(path)


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_a_malicious_pickle_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"ctx": _Boom()}))
    with pytest.raises(CheckpointError):
        read_prompt(path)
    assert not (tmp_path / "PWNED").exists()


def test_training_checkpoints_rotate_and_fall_back_past_corruption(tmp_path, trained):
    opt = torch.optim.SGD(list(p for _, p in trained.learned_parameters()), lr=0.1, momentum=0.9)
    trained.loss(trained(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    opt.step()
    for epoch in range(3):
        save_training_state(tmp_path, epoch, trained, opt, extra={"history": [epoch]}, keep=2)
    files = list_checkpoints(tmp_path)
    assert [f.name for f in files] == ["epoch-0002.safetensors", "epoch-0003.safetensors"]
    files[-1].write_bytes(files[-1].read_bytes()[:100])
    warnings = []
    tensors, meta = load_latest_training_state(tmp_path, log=warnings.append)
    assert meta["epoch"] == 1 and "optim.0.momentum_buffer" in tensors
    assert warnings and "epoch-0003" in warnings[0]
