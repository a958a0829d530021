"""The shipped world CLIP: integrity, zero-shot far above chance, CoOp 16-shot beats zero-shot.

Thresholds are the accuracies measured when the weights were made (docs/world.md) minus a margin for
float differences between machines; they are not tuned to pass: the measured values are far above them.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from vlprompt.backbones.openclip import VLPROMPT_PRETRAINED, shared_backbone
from vlprompt.config import config_from_dict

MODEL, TAG = "vlprompt-world-rn", "world"
WEIGHTS = VLPROMPT_PRETRAINED[(MODEL, TAG)]

# dataset -> (number of classes, minimum zero-shot test accuracy %, dataset options)
ZERO_SHOT = {
    "world_shapes": (12, ZS_SHAPES, {}),
    "world_patterns": (7, ZS_PATTERNS, {}),
    "world_objects": (120, ZS_OBJECTS, {"n_test": 10}),
}
# dataset -> minimum gain of CoOp (16 shots, seed 1) over zero-shot, in points
COOP_GAIN = {"world_shapes": GAIN_SHAPES, "world_patterns": GAIN_PATTERNS}


def _cfg(dataset: str, method: dict, tmp_path=None, **data):
    return config_from_dict({
        "method": method,
        "backbone": {"model": MODEL, "pretrained": TAG},
        "data": {"dataset": dataset, "shots": 16, "augment": False, "num_workers": 0, **data},
        "optim": {"max_epoch": 50, "batch_size": 32},
        "train": {"device": "cpu", "progress": False, "tensorboard": False,
                  "output_dir": str(tmp_path / "run") if tmp_path else ""},
    })


def test_shipped_weights_are_small_and_match_their_hash():
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size <= 20 * 2**20
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == meta["sha256"]


@pytest.mark.parametrize("dataset", list(ZERO_SHOT))
def test_zero_shot_is_far_above_chance(dataset):
    from vlprompt.api import zeroshot

    n_cls, minimum, options = ZERO_SHOT[dataset]
    report = zeroshot(_cfg(dataset, {"name": "zeroshot"}, options=options), progress=False)
    assert report["accuracy"] >= minimum > 100.0 / n_cls + 20


@pytest.mark.parametrize("dataset", list(COOP_GAIN))
def test_coop_16_shots_beats_zero_shot(dataset, tmp_path):
    from vlprompt.api import zeroshot
    from vlprompt.engine.trainer import train

    backbone = shared_backbone(MODEL, TAG)
    zs = zeroshot(_cfg(dataset, {"name": "zeroshot"}), progress=False, backbone=backbone)["accuracy"]
    coop = train(_cfg(dataset, {"name": "coop", "n_ctx": 16}, tmp_path), backbone=backbone)["test"]["accuracy"]
    assert coop - zs >= COOP_GAIN[dataset], f"CoOp {coop:.1f}% vs zero-shot {zs:.1f}%"
