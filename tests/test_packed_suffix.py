"""Packed suffixes (:mod:`vlprompt.backbones.shared_prefix`): each prompt runs only its real suffix rows, and the
values and gradients equal the plain full-context (77-token) pass on names of mixed lengths (1 to 20 tokens),
both tiny towers, one group (CoOp) and several (CoCoOp), with deep prompts and a per-token ``after`` hook.
Tolerance: float rounding only."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vlprompt.backbones.deep_prompts import encode_text_deep
from vlprompt.backbones.shared_prefix import SuffixLayout, encode_shared_prefix

NAME_TOKENS = [1, 20, 3, 7, 3, 12, 1, 5]  # name lengths; each suffix is name + "." + EOT (3 to 22 rows)
P = 5  # SOS + 4 context tokens


def _prompts(backbone, groups: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``prefix [G, P, W]`` (grad), ``suffix [n, 77 - P, W]`` (pad after EOT: random junk that must not
    matter), ``eot_in_suffix [n]`` and the full prompts ``[G * n, 77, W]``."""
    gen = torch.Generator().manual_seed(seed)
    w, n, length = backbone.text_width, len(NAME_TOKENS), backbone.context_length
    prefix = torch.randn(groups, P, w, generator=gen).requires_grad_(True)
    suffix = torch.randn(n, length - P, w, generator=gen)
    eot = torch.tensor(NAME_TOKENS) + 1
    full = torch.cat([prefix.unsqueeze(1).expand(-1, n, -1, -1), suffix.unsqueeze(0).expand(groups, -1, -1, -1)], 2)
    return prefix, suffix, eot, full.flatten(0, 1)


def _hook(width: int) -> tuple[nn.Module, object]:
    """A per-token ``after`` hook with parameters (an MMA-like adapter on the normed block input)."""
    torch.manual_seed(1)
    adapter = nn.Linear(width, width)

    def after(layer: int, norm: nn.Module, x_in: Tensor, x_out: Tensor) -> Tensor:
        return x_out + 0.1 * layer * torch.tanh(adapter(norm(x_in)))

    return adapter, after


@pytest.mark.parametrize("groups", [1, 3])
def test_packed_pass_equals_the_full_context_pass(tiny_backbone, groups):
    prefix, suffix, eot, full = _prompts(tiny_backbone, groups)
    n = suffix.shape[0]
    ref = tiny_backbone.encode_text_embeddings(full, (eot + P).repeat(groups), truncate=False).view(groups, n, -1)
    weight = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad((ref * weight).sum(), prefix)
    for packed in (True, False):  # packed: the default; False: the padded layout of earlier versions
        out = encode_shared_prefix(tiny_backbone._tower, prefix, suffix, eot, packed=packed)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        (g_out,) = torch.autograd.grad((out * weight).sum(), prefix)
        torch.testing.assert_close(g_out, g_ref, rtol=1e-4, atol=1e-5)
    # the backbone's entry point (CoOp / CoCoOp) takes the packed pass
    torch.testing.assert_close(tiny_backbone.encode_text_shared_prefix(prefix, suffix, eot), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_packed_pass_with_deep_prompts_and_a_hook_equals_the_full_context_pass(tiny_backbone, groups):
    prefix, suffix, eot, full = _prompts(tiny_backbone, groups, seed=3)
    n, w = suffix.shape[0], tiny_backbone.text_width
    deep = [torch.randn(P - 1, w, generator=torch.Generator().manual_seed(4)).requires_grad_(True)]
    adapter, after = _hook(w)
    ref = encode_text_deep(tiny_backbone, full, (eot + P).repeat(groups), deep, n_ctx=P - 1, truncate=False,
                           after=after).view(groups, n, -1)
    out = encode_shared_prefix(tiny_backbone._tower, prefix, suffix, eot, deep, after)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(ref)
    wrt = [prefix, deep[0], adapter.weight]
    for a, b in zip(torch.autograd.grad((out * weight).sum(), wrt), torch.autograd.grad((ref * weight).sum(), wrt)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_one_block_tower_reads_the_shared_suffix_rows_at_its_last_block(vit_backbone):
    transformer = vit_backbone.model.transformer
    blocks = transformer.resblocks
    transformer.resblocks = nn.ModuleList(list(blocks)[:1])
    try:
        prefix, suffix, eot, full = _prompts(vit_backbone, 2)
        ref = vit_backbone.encode_text_embeddings(full, (eot + P).repeat(2), truncate=False).view(2, len(eot), -1)
        out = encode_shared_prefix(vit_backbone._tower, prefix, suffix, eot)
        weight = torch.randn_like(ref)
        (a,) = torch.autograd.grad((out * weight).sum(), prefix)
        (b,) = torch.autograd.grad((ref * weight).sum(), prefix)
    finally:
        transformer.resblocks = blocks
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_layout_packs_only_the_real_rows_in_length_buckets():
    eot = torch.tensor([2, 0, 2, 4])  # suffix lengths 3, 1, 3, 5
    lay = SuffixLayout.build(2, 6, eot)
    assert (lay.lengths, lay.counts) == ([1, 3, 5], [1, 2, 1])
    assert lay.gather.tolist() == [6, 0, 1, 2, 12, 13, 14, 18, 19, 20, 21, 22]  # class * S + t, t < length
    assert lay.spread is not None and lay.spread.shape[0] == 2 * 12
    padded = SuffixLayout.build(1, 6, eot, packed=False)
    assert (padded.lengths, padded.counts, padded.spread) == ([6], [4], None)
    with pytest.raises(ValueError, match="suffix of 6 tokens"):
        SuffixLayout.build(1, 6, torch.tensor([6]))
