"""Training batches encoded every step (on-the-fly augmentation, ``engine.features.encode_batch``): the frozen image
tower records no autograd graph, and the channels-last layout of ResNet towers on CPU gives the same features."""

from __future__ import annotations

import torch

from vlprompt.engine.features import channels_last_helps, encode_batch
from vlprompt.methods.registry import build_method

CLASSES = ["dog", "golden_retriever", "traffic light"]


def _augmented_batch(backbone, n: int = 2) -> torch.Tensor:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    size = backbone.image_size * 2
    tf = backbone.train_transform()  # CoOp's recipe: random resized crop + flip + normalise
    pixels = torch.randint(0, 256, (n, size, size, 3), generator=gen, dtype=torch.uint8).numpy()
    return torch.stack([tf(Image.fromarray(p)) for p in pixels])


def test_frozen_tower_records_no_graph(tiny_backbone):
    """What engine/loop.py runs with grad mode on: no graph through the frozen tower, the prompt still learns."""
    method = build_method("coop", tiny_backbone, CLASSES, n_ctx=4)
    method.train()
    images = _augmented_batch(tiny_backbone)
    assert torch.is_grad_enabled()
    feats = encode_batch(method, images)
    assert feats.grad_fn is None and not feats.requires_grad
    method.training_loss(feats, torch.tensor([0, 2])).total().backward()
    assert method.ctx.grad is not None and all(p.grad is None for p in tiny_backbone.parameters())


def test_channels_last_only_for_resnet_towers_on_cpu_and_exact(tiny_backbone):
    method = build_method("coop", tiny_backbone, CLASSES, n_ctx=4)
    images = _augmented_batch(tiny_backbone)
    resnet = hasattr(tiny_backbone.model.visual, "attnpool")
    assert channels_last_helps(tiny_backbone, images) is resnet
    assert not channels_last_helps(tiny_backbone, images[0])  # not a batch
    seen = []
    encode = method.encode_images
    method.encode_images = lambda x: seen.append(x.is_contiguous(memory_format=torch.channels_last)) or encode(x)
    feats = encode_batch(method, images)
    assert seen == [resnet]
    torch.testing.assert_close(feats, tiny_backbone.encode_image(images), rtol=1e-5, atol=1e-6)  # float rounding
