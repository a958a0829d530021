"""MMA (methods/mma) against an independent re-implementation of what the authors' code computes.

ZjjConan/Multi-Modal-Adapter @ 547ee34, written for this test from reading:

* clip/model.py ``ModifiedResidualAttentionBlock.forward`` l.188-215: at an adapted layer (1-based block index)
  ``y = up(shared(down(ln_1(gsl(x, s))))) * s``, ``y = gsl(y, 1 / s)``, then ``x + attn(ln_1 x)`` and
  ``x + mlp(ln_2 x) + y``; clip/gsl.py l.3-16: identity forward, gradient times the factor backward (written here
  as a gradient hook on a copy, not as an autograd Function);
* clip/model.py ``VisionTransformer.forward`` l.254-298: layer 0 = ``ln_pre(x) + s * up(shared(down(ln_pre x)))``;
* trainers/mmadapter.py ``AdapterLearner`` l.98-147 (prompt "a photo of a {name}." over CLIP's 77 tokens, layer-0
  text adapter on the token embeddings), ``TextEncoder.forward`` l.35-47 (EOT = argmax of the ids),
  ``CustomCLIP.forward`` l.184-207 (logit_scale.exp() * cosine), ``forward_backward`` l.265-279 (cross-entropy).

The attention + MLP part of a block is test_deep_prompts.ref_block (open_clip's block written out by hand).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_deep_prompts import ref_block
from vlprompt.core.errors import ConfigError
from vlprompt.methods.mma.model import adapted_layers
from vlprompt.methods.registry import build_method, make_method_config

CLASSES = ["circle", "red star", "big_square"]


# ------------------------------------------------------------------------------------------- reference
def ref_gsl(x: torch.Tensor, factor: float) -> torch.Tensor:
    """clip/gsl.py: same values, gradient multiplied by ``factor``."""
    if not x.requires_grad:  # the frozen tower's states before the first adapted layer
        return x
    y = x.clone()
    y.register_hook(lambda g: g * factor)
    return y


def ref_adapter(tower, shared, layer, h, s):
    """``seq_adapter.up(shared_adapter(seq_adapter.down(h))) * s`` (clip/model.py l.198-201)."""
    a, sh = tower[str(layer)], shared[str(layer)]
    down = F.relu(h @ a.down[0].weight.t() + a.down[0].bias)
    mid = F.relu(down @ sh[0].weight.t() + sh[0].bias)
    return (mid @ a.up.weight.t() + a.up.bias) * s


def ref_blocks(blocks, x, mask, tower, shared, s):
    """Transformer over ``x [L, N, D]`` with the adapter_func of layer_index = i + 1 (l.188-215, l.224)."""
    for i, blk in enumerate(blocks):
        if str(i + 1) in tower:
            y = ref_adapter(tower, shared, i + 1, blk.ln_1(ref_gsl(x, s)), s)
            x = ref_block(blk, x, mask) + ref_gsl(y, 1.0 / s)
        else:
            x = ref_block(blk, x, mask)
    return x


def ref_text(model, tokenizer, m, s):
    names = [c.replace("_", " ") for c in CLASSES]
    tokenized = tokenizer([f"a photo of a {n}." for n in names])  # mmadapter.py l.102-104
    emb = model.token_embedding(tokenized)
    if "0" in m.text_adapter:  # AdapterLearner.forward l.139-146
        emb = emb + ref_adapter(m.text_adapter, m.shared_adapter, 0, emb, s)
    x = (emb + model.positional_embedding).permute(1, 0, 2)
    mask = torch.full((x.shape[0], x.shape[0]), float("-inf")).triu_(1)
    x = ref_blocks(model.transformer.resblocks, x, mask, m.text_adapter, m.shared_adapter, s)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection


def ref_image(visual, images, m, s):
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = x + visual.positional_embedding
    if "0" in m.visual_adapter:
        x = visual.ln_pre(x) + ref_adapter(m.visual_adapter, m.shared_adapter, 0, visual.ln_pre(x), s)
    else:
        x = visual.ln_pre(x)
    x = ref_blocks(visual.transformer.resblocks, x.permute(1, 0, 2), None, m.visual_adapter, m.shared_adapter, s)
    return visual.ln_post(x.permute(1, 0, 2)[:, 0, :]) @ visual.proj


def ref_logits(vit, m, images, s):
    model = vit.model
    img = F.normalize(ref_image(model.visual, images, m, s), dim=-1)
    txt = F.normalize(ref_text(model, vit.tokenizer, m, s), dim=-1)
    return model.logit_scale.exp() * img @ txt.t()


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vit(vit_backbone):
    """The session's tiny ViT backbone (tests/conftest.py), loaded once for the whole suite."""
    return vit_backbone


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _randomise(method, seed=0):
    """Non-zero biases and perturbed weights (the initial biases are 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in method.learned_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("start", "scale"), [(0, 0.5), (5, 0.001)])
def test_logits_loss_and_gradients_match_the_reference(vit, images, start, scale):
    """start 0: every layer of the 2-block towers incl. both inputs; start 5 (the authors'): clamped to block 2,
    at the authors' scale 0.001, where the gradient-scale layers make the adapters' gradients O(1)."""
    m = build_method("mma", vit, CLASSES, adapter_start=start, adapter_dim=8, adapter_scale=scale).train()
    _randomise(m)
    labels = torch.tensor([0, 2, 1, 2])
    got = m(images)
    loss = F.cross_entropy(got, labels)
    params = [p for _, p in m.learned_parameters()]
    grads = torch.autograd.grad(loss, params)
    expected = ref_logits(vit, m, images, scale)
    ref_loss = F.cross_entropy(expected, labels)
    ref_grads = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for (name, _), a, b in zip(m.learned_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3, msg=name)
    if start == 5:  # the adapters matter at 0.5 ...; at 0.001 their gradients are not shrunk by the scale
        assert min(float(g.abs().max()) for g in grads) > 1e-4


def test_layers_names_and_initialisation(vit):
    assert adapted_layers(5, 12, 12) == list(range(5, 13))  # the authors' 8 higher blocks of ViT-B/16
    assert adapted_layers(5, 12, 4) == [4] and adapted_layers(0, 12, 2) == [0, 1, 2]
    torch.manual_seed(0)
    m = build_method("mma", vit, CLASSES)  # defaults: layers 5..12 -> block 2 of the 2-block towers, r = 32
    names = {n: p.detach() for n, p in m.learned_parameters()}
    assert set(names) == {f"{t}_adapter.2.{p}" for t in ("text", "visual") for p in
                          ("down.0.weight", "down.0.bias", "up.weight", "up.bias")} | {
        "shared_adapter.2.0.weight", "shared_adapter.2.0.bias"}
    assert names["text_adapter.2.down.0.weight"].shape == (32, vit.text_width)
    assert names["visual_adapter.2.up.weight"].shape == (64, 32)
    assert all(float(p.abs().max()) == 0 for n, p in names.items() if n.endswith("bias"))
    w = names["visual_adapter.2.down.0.weight"]  # Kaiming normal, fan_out = 32 rows: std sqrt(2 / 32)
    assert abs(float(w.std()) - (2 / 32) ** 0.5) < 0.05
    assert m.n_prefix == 5  # [SOS] a photo of a: encoded once for every class


def test_prompts_without_a_shared_prefix_take_the_plain_path(vit):
    m = build_method("mma", vit, CLASSES, adapter_start=1, adapter_scale=0.5)
    _randomise(m, seed=3)
    with torch.no_grad():
        shared = m.text_features()
        m.token_suffix = torch.cat([m.token_prefix.expand(len(CLASSES), -1, -1), m.token_suffix], dim=1)
        m.n_prefix = 0
        torch.testing.assert_close(m.text_features(), shared, atol=1e-5, rtol=1e-5)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="adapter_end"):
        make_method_config("mma", {"adapter_start": 6, "adapter_end": 5})
    with pytest.raises(ConfigError, match="adapter_scale"):
        make_method_config("mma", {"adapter_scale": 0})
    with pytest.raises(ConfigError, match="adapter_dim"):
        make_method_config("mma", {"adapter_dim": 0})
