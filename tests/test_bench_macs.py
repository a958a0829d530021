"""The training-step benchmark's inputs: its class names and the multiply-add bound written next to each ratio
(benchmarks/step_macs.py, benchmarks/timing.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.utils.flop_counter as flop_counter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import published_step as published  # noqa: E402
import step_macs  # noqa: E402
from timing import class_names  # noqa: E402

CLASSES = ["dog", "golden_retriever", "traffic light", "cat", "class number 7"]


def test_published_text_count_equals_flop_counter(vit_backbone):
    """The analytic count is what torch's flop counter sees on the published text pass, forward + backward."""
    clip = published.from_backbone(vit_backbone)
    ref = published.CoOpCustomCLIP(vit_backbone, clip, CLASSES, n_ctx=4)
    step_macs._register_cpu_attention_flops()
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
        ref.text_encoder(ref.prompt_learner(), ref.tokenized_prompts).sum().backward()
    shape = step_macs.text_shape(vit_backbone)
    assert shape.context == 77
    assert counter.get_total_flops() / 2 == step_macs.published_text_macs(shape, len(CLASSES))
    # the real suffix rows are the published prompts' tokens after the prefix, up to and including EOT
    p, lengths = step_macs.suffix_lengths(vit_backbone, CLASSES, "X X X X")
    assert p == 5 and lengths == (ref.tokenized_prompts.argmax(-1) + 1 - p).tolist()
    assert len(set(lengths)) > 1  # names of different lengths


def test_vlprompt_text_count_by_hand():
    """W 2, 2 layers, E 1; one prefix row and one class of one suffix row (its EOT), one group."""
    shape = step_macs.TextShape(width=2, layers=2, embed=1, context=77)
    # layer 0: 2 rows x 12 W^2 fwd+bwd = 192, 3 causal pairs x 2W x 3.5 = 42; last layer: K/V on 2 rows + 10 W^2 at
    # the EOT row, fwd+bwd = 112, 2 pairs at the EOT row = 28; the projection of the EOT row fwd+bwd = 4
    assert step_macs.vlprompt_text_macs(shape, 1, [1]) == 192 + 42 + 112 + 28 + 4
    # two groups: layer 0's suffix QKV (3 W^2 per row, fwd + bwd) runs once for both
    assert step_macs.vlprompt_text_macs(shape, 1, [1], groups=2) == 2 * 378 - 2 * 3 * 4


def test_class_name_sets():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert class_names("imagenet", 50) == list(IMAGENET_CLASSNAMES[:50])
    dtd = class_names("dtd", 5)
    assert len(dtd) == 47 and dtd == sorted(dtd) and dtd[0] == "banded" and "polka-dotted" in dtd
    assert class_names("numbered", 2) == ["class number 0", "class number 1"]
    with pytest.raises(SystemExit, match="error: --classes"):
        class_names("imagenet", 1001)
