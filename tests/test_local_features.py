"""Local features (LoCoOp / GL-MCM): shapes, captured tensors reproduce encode_image, value path is right."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlprompt.backbones.local import resnet_value_path, vit_value_path


def _images(backbone, n=2):
    torch.manual_seed(0)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size)


def _capture(backbone, images):
    """The input of the last ViT block / of the ResNet attention pool, via an independent hook."""
    visual = backbone.model.visual
    target = visual.transformer.resblocks[-1] if hasattr(visual, "transformer") else visual.attnpool
    got = {}
    h = target.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0]))
    backbone.model.encode_image(images)
    h.remove()
    return got["x"]


def test_shapes_and_global_equals_encode_image(tiny_backbone):
    images = _images(tiny_backbone)
    g, loc = tiny_backbone.local_features(images)
    torch.testing.assert_close(g, tiny_backbone.encode_image(images))
    visual = tiny_backbone.model.visual
    n = visual.grid_size[0] * visual.grid_size[1] if hasattr(visual, "grid_size") else (
        tiny_backbone.image_size // 32) ** 2
    assert loc.shape == (2, n, tiny_backbone.embed_dim)


def test_captured_tokens_through_the_ordinary_block_reproduce_encode_image(tiny_backbone):
    images = _images(tiny_backbone)
    x = _capture(tiny_backbone, images)
    visual = tiny_backbone.model.visual
    with torch.no_grad():
        if hasattr(visual, "transformer"):
            out = visual.transformer.resblocks[-1](x)
            pooled = visual.ln_post(out)[:, 0] @ visual.proj
        else:
            pooled = visual.attnpool(x)
        torch.testing.assert_close(pooled, tiny_backbone.encode_image(images), rtol=1e-5, atol=1e-5)


def test_value_path_equals_direct_computation(tiny_backbone):
    images = _images(tiny_backbone)
    x = _capture(tiny_backbone, images)
    visual = tiny_backbone.model.visual
    with torch.no_grad():
        if hasattr(visual, "transformer"):
            block = visual.transformer.resblocks[-1]
            # attention restricted to the diagonal (each token sees itself only) == value path
            n = x.shape[1]
            mask = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
            torch.testing.assert_close(vit_value_path(block, x), block(x, attn_mask=mask), rtol=1e-5, atol=1e-5)
        else:
            ap = visual.attnpool
            flat = x.flatten(2).transpose(1, 2)
            direct = (flat @ ap.v_proj.weight.t() + ap.v_proj.bias) @ ap.c_proj.weight.t() + ap.c_proj.bias
            torch.testing.assert_close(resnet_value_path(ap, x), direct, rtol=1e-5, atol=1e-5)


def test_local_features_align_with_text_space(tiny_backbone):
    _, loc = tiny_backbone.local_features(_images(tiny_backbone))
    text = tiny_backbone.encode_text(tiny_backbone.tokenize(["a photo of a dog."]))
    sims = F.normalize(loc, dim=-1) @ F.normalize(text, dim=-1).t()
    assert torch.isfinite(sims).all() and sims.abs().max() <= 1 + 1e-5
