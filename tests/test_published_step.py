"""The benchmark's reference (benchmarks/published_step.py: the published CoOp / CoCoOp model code,
re-implemented) computes what vlprompt computes on the same weights: towers, logits, loss, gradients.

This is what makes the training-step benchmark's ratio a pure speed-up: both sides of it are the same
function of the same parameters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlprompt.methods.registry import build_method

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import published_step as published  # noqa: E402

CLASSES = ["dog", "golden_retriever", "traffic light", "cat", "class number 7"]


@pytest.fixture(scope="module")
def pair(tiny_backbone):
    """A tiny vlprompt backbone and the published CLIP code on the same (shared) weights."""
    return tiny_backbone, published.from_backbone(tiny_backbone)


def _batch(backbone, b: int = 3):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, backbone.image_size, backbone.image_size, generator=gen)
    return images, torch.randint(0, len(CLASSES), (b,), generator=gen)


def _close_grads(ours, ref):
    """Equal up to fp32 rounding: the two paths sum in different orders (77 vs cut sequences)."""
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


def test_reference_towers_equal_open_clip(pair):
    backbone, clip = pair
    images, _ = _batch(backbone)
    assert clip.visual.training is False  # build_model returns model.eval(): BatchNorm uses running stats
    torch.testing.assert_close(clip.encode_image(images), backbone.encode_image(images), rtol=1e-5, atol=1e-5)
    ids = published.tokenize(backbone, ["a photo of a dog.", "x"])
    assert ids.shape == (2, 77) and torch.equal(ids[:, :6], backbone.tokenize(["a photo of a dog.", "x"])[:, :6])
    ref = published.TextEncoder(clip)(clip.token_embedding(ids), ids)
    torch.testing.assert_close(ref, backbone.encode_text(ids), rtol=1e-5, atol=1e-5)
    # the weights are shared, not copied
    assert clip.token_embedding.weight.data_ptr() == backbone.model.token_embedding.weight.data_ptr()


def test_coop_step_equals_published(pair):
    backbone, clip = pair
    images, labels = _batch(backbone)
    ours = build_method("coop", backbone, CLASSES, n_ctx=4)
    ref = published.CoOpCustomCLIP(backbone, clip, CLASSES, n_ctx=4)
    assert ref.prompt_learner.token_suffix.shape[1] == 77 - 5  # the published prompts run at 77 tokens
    with torch.no_grad():
        ref.prompt_learner.ctx.copy_(ours.ctx)
    loss_ref = F.cross_entropy(ref(images), labels)
    out = ours.training_loss(backbone.encode_image(images), labels)
    loss_ours, logits = out.total(), out.logits
    torch.testing.assert_close(logits, ref(images), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-5, atol=1e-5)
    (g_ref,) = torch.autograd.grad(loss_ref, ref.prompt_learner.ctx)
    (g_ours,) = torch.autograd.grad(loss_ours, ours.ctx)
    _close_grads(g_ours, g_ref)


def test_cocoop_step_equals_published(pair):
    backbone, clip = pair
    images, labels = _batch(backbone)
    ours = build_method("cocoop", backbone, CLASSES)
    with torch.no_grad():
        for p in ours.meta_net.parameters():
            p.normal_(std=0.1)  # a Meta-Net that really shifts each image's context
    ref = published.CoCoOpCustomCLIP(backbone, clip, CLASSES)
    ref.prompt_learner.meta_net.load_state_dict(ours.meta_net.state_dict())
    with torch.no_grad():
        ref.prompt_learner.ctx.copy_(ours.ctx)
    ref.prompt_learner.train()
    loss_ref = ref(images, labels)  # training mode: the published forward returns the loss
    loss_ours = ours.training_loss(backbone.encode_image(images), labels).total()
    torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-5, atol=1e-5)
    ref.prompt_learner.eval()
    torch.testing.assert_close(ours.forward_features(backbone.encode_image(images)), ref(images),
                               rtol=1e-5, atol=1e-4)
    ref_params = [ref.prompt_learner.ctx, *ref.prompt_learner.meta_net.parameters()]
    our_params = [ours.ctx, *ours.meta_net.parameters()]
    for g_ref, g_ours in zip(torch.autograd.grad(loss_ref, ref_params), torch.autograd.grad(loss_ours, our_params)):
        _close_grads(g_ours, g_ref)


def test_published_steps_update_only_the_prompt_learner(pair):
    backbone, clip = pair
    images, labels = _batch(backbone, 2)
    ref = published.CoCoOpCustomCLIP(backbone, clip, CLASSES)
    ref.prompt_learner.train()
    before = ref.prompt_learner.ctx.detach().clone()
    loss = published.cocoop_step(ref, published.sgd(ref.prompt_learner.parameters()), images, labels)
    assert torch.isfinite(loss) and not torch.equal(before, ref.prompt_learner.ctx)
    assert all(p.grad is None for p in backbone.parameters())
    coop = published.CoOpCustomCLIP(backbone, clip, CLASSES, n_ctx=4)
    loss = published.coop_step(coop, published.sgd(coop.prompt_learner.parameters()), images, labels)
    assert torch.isfinite(loss) and all(p.grad is None for p in backbone.parameters())
