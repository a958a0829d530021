"""Exact shared-prefix text encoding: values and gradients equal the plain path (both towers)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vlprompt.methods.registry import build_method


@pytest.mark.parametrize("groups", [1, 3])
def test_shared_prefix_equals_plain_values_and_gradients(tiny_backbone, groups):
    _check_against_plain(tiny_backbone, groups)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 3])
def test_shared_prefix_any_depth(vit_backbone, depth):
    """One block (the first block is also the last, read only at EOT rows) and three blocks."""
    backbone = copy.deepcopy(vit_backbone)
    blocks = list(backbone.model.transformer.resblocks)
    backbone.model.transformer.resblocks = nn.ModuleList([blocks[i % len(blocks)] for i in range(depth)])
    for groups in (1, 2):
        _check_against_plain(backbone, groups)


def _check_against_plain(tiny_backbone, groups):
    torch.manual_seed(0)
    p, n, s = 17, 5, 6
    prefix = torch.randn(groups, p, tiny_backbone.text_width, requires_grad=True)
    suffix = torch.randn(n, s, tiny_backbone.text_width)
    eot = torch.tensor([5, 3, 4, 5, 2])
    out = tiny_backbone.encode_text_shared_prefix(prefix, suffix, eot)
    full = torch.cat([prefix.unsqueeze(1).expand(-1, n, -1, -1), suffix.unsqueeze(0).expand(groups, -1, -1, -1)], 2)
    ref = tiny_backbone.encode_text_embeddings(full.flatten(0, 1), (eot + p).repeat(groups)).view(groups, n, -1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(out)
    (g1,) = torch.autograd.grad((out * w).sum(), prefix)
    (g2,) = torch.autograd.grad((ref * w).sum(), prefix)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_coop_shared_prefix_matches_the_full_prompts_and_their_gradient(tiny_backbone):
    torch.manual_seed(0)
    model = build_method("coop", tiny_backbone, ["dog", "golden retriever", "x"], n_ctx=8)
    assert model.prompt_learner.shares_prefix
    fast = model.text_features()
    (g_fast,) = torch.autograd.grad(fast.pow(2).sum() + fast[:, 0].sum(), model.ctx)
    pl = model.prompt_learner
    plain = torch.nn.functional.normalize(tiny_backbone.encode_text_embeddings(pl(), pl.eot_index), dim=-1)
    (g_plain,) = torch.autograd.grad(plain.pow(2).sum() + plain[:, 0].sum(), model.ctx)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-5)
