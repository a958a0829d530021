"""Shared fixtures: tiny random-init backbones (deterministic) and tiny on-disk datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

TINY_MODELS = ["vlprompt-test-vit", "vlprompt-test-rn"]


@pytest.fixture(scope="session", autouse=True)
def _private_cache_folder(tmp_path_factory):
    """vlprompt's disk cache (NegLabel's mined labels, ...) in a folder of the test session, never the user's
    ``~/.cache/vlprompt``; subprocesses inherit it."""
    old = os.environ.get("VLPROMPT_CACHE_DIR")
    os.environ["VLPROMPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("vlprompt_cache"))
    yield
    if old is None:
        os.environ.pop("VLPROMPT_CACHE_DIR", None)
    else:
        os.environ["VLPROMPT_CACHE_DIR"] = old


@pytest.fixture(scope="session", params=TINY_MODELS)
def tiny_backbone(request):
    """Each tiny backbone (ViT and ModifiedResNet towers), random init, seeded."""
    from vlprompt.backbones.openclip import load_backbone

    return load_backbone(request.param)


@pytest.fixture(scope="session")
def vit_backbone():
    from vlprompt.backbones.openclip import load_backbone

    return load_backbone("vlprompt-test-vit")


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory):
    """An ImageFolder tree with 3 colour-coded classes: 8 train, 4 val, 6 test images each."""
    from data_trees import make_imagefolder

    root = tmp_path_factory.mktemp("imagefolder")
    return make_imagefolder(root, classes=("red thing", "green thing", "blue thing"), per_class=8,
                            test_per_class=6, val_per_class=4, size=32)


def write_config(path: Path, **sections) -> Path:
    """Write a YAML config with the given sections (dicts) and return its path."""
    import yaml

    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def tiny_config(tmp_path: Path, root: Path, **overrides) -> dict:
    """A config dict training CoOp on the tiny imagefolder with the tiny ViT, a few epochs, on CPU."""
    cfg = {
        "method": {"name": "coop", "n_ctx": 4},
        "backbone": {"model": "vlprompt-test-vit", "pretrained": None},
        "data": {"dataset": "imagefolder", "root": str(root), "shots": 4, "num_workers": 0},
        "optim": {"max_epoch": 4, "batch_size": 4, "lr": 0.01},
        "train": {"output_dir": str(tmp_path / "run"), "device": "cpu", "progress": False, "tensorboard": False},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg
