"""The shipped world CLIP: integrity, zero-shot far above chance, prompt learning that really learns.

Measured when the weights were made (docs/world.md, seed 1, 2-core CPU): zero-shot test accuracy
world_shapes 92.8%, world_patterns 41.4%, world_objects 91.4% (10 test images / class), world_scenes
83.1%, world_positions 48.4%, world_textures 82.4%; chance 8.3 / 14.3 / 0.8 / 14.3 / 11.1 / 10%. The
thresholds below sit well under the measurements (float differences between machines) and well above
chance. CoOp 16-shot (M = 16, random init, 50 epochs, train seeds 1/2/3) beats zero-shot clearly where
"a photo of a {}." is a poor match for the label (like DTD / EuroSAT for real CLIP): world_scenes
+16.3..+16.9, world_positions +17.2..+20.3, world_textures +6.0..+6.6, world_objects_painting +4.7
points. On world_shapes / world_objects (zero-shot already ~92%) it matches zero-shot (+0.3 / +0.4), and
on world_patterns (image features carry little pattern information) it does not help (-1.1); those are
documented in docs/world.md, not asserted.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from vlprompt.backbones.build import build_backbone
from vlprompt.backbones.configs import pretrained_weights
from vlprompt.config import BackboneConfig, config_from_dict

MODEL, TAG = "vlprompt-world-rn", "world"
WEIGHTS = pretrained_weights()[(MODEL, TAG)]

# dataset -> (number of classes, minimum zero-shot test accuracy %, dataset options)
ZERO_SHOT = {
    "world_shapes": (12, 80.0, {}),
    "world_patterns": (7, 35.0, {}),
    "world_objects": (120, 80.0, {"n_test": 10}),
    "world_scenes": (7, 70.0, {}),
    "world_positions": (9, 38.0, {}),
    "world_textures": (10, 70.0, {}),
}
# dataset -> (dataset options, minimum gain of CoOp 16-shot (seed 1) over zero-shot in points, epochs). Measured
# with these options: scenes +16.6 at 50 epochs and at 20, positions +20.9 at 50 and +19.8 at 20, textures +7.8 at
# 50 and +7.4 at 20 (20 epochs: a third of the time, the same margins over the thresholds); objects_painting +4.7
# with 50 epochs, +4.3 with 20, +4.25 with 12 and +4.4 with 8 (zero-shot 76.4%: the gain has plateaued by epoch
# 8; its 120-class text pass every step dominated the suite, 151 s at 50 epochs, 41 s at 20, so it runs 8).
_SMALL = {"n_train": 16, "n_val": 4}
COOP_GAIN = {
    "world_scenes": (_SMALL, 10.0, 20),
    "world_positions": (_SMALL, 10.0, 20),
    "world_textures": (_SMALL, 3.0, 20),
    "world_objects_painting": ({**_SMALL, "n_test": 10}, 2.0, 8),
}


def _cfg(dataset: str, method: dict, tmp_path=None, epochs: int = 50, **data):
    return config_from_dict({
        "method": method,
        "backbone": {"model": MODEL, "pretrained": TAG},
        "data": {"dataset": dataset, "shots": 16, "augment": False, "num_workers": 0, **data},
        "optim": {"max_epoch": epochs, "batch_size": 32},
        "train": {"device": "cpu", "progress": False, "tensorboard": False,
                  "output_dir": str(tmp_path / "run") if tmp_path else ""},
    })


@pytest.mark.world
def test_shipped_weights_are_small_and_match_their_hash():
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size <= 20 * 2**20
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == meta["sha256"]


@pytest.mark.slow
@pytest.mark.world
@pytest.mark.parametrize("dataset", list(ZERO_SHOT))
def test_zero_shot_is_far_above_chance(dataset):
    from vlprompt.tasks.api import zeroshot

    n_cls, minimum, options = ZERO_SHOT[dataset]
    report = zeroshot(_cfg(dataset, {"name": "zeroshot"}, options=options), progress=False)
    assert report["accuracy"] >= minimum > 100.0 / n_cls + 20


@pytest.mark.slow
@pytest.mark.world
@pytest.mark.parametrize("dataset", list(COOP_GAIN))
def test_coop_16_shots_beats_zero_shot(dataset, tmp_path):
    from vlprompt.engine.trainer import train
    from vlprompt.tasks.api import zeroshot

    options, gain, epochs = COOP_GAIN[dataset]
    backbone = build_backbone(BackboneConfig(MODEL, TAG))
    zs = zeroshot(_cfg(dataset, {"name": "zeroshot"}, options=options), progress=False, backbone=backbone)
    run = train(_cfg(dataset, {"name": "coop", "n_ctx": 16}, tmp_path, epochs, options=options), backbone=backbone)
    coop = run.test["accuracy"]
    assert coop - zs["accuracy"] >= gain, f"CoOp {coop:.1f}% vs zero-shot {zs['accuracy']:.1f}%"
    assert run.history[-1]["loss"] < run.history[0]["loss"]
