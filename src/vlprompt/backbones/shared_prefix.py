"""Exact shared-prefix text encoding for prompts that start with the same tokens.

With unified context and the class token at the end, every prompt is
``[SOS] [V]1 .. [V]M | name_c . [EOT] (pad)``. The text tower's mask is causal, so at every layer
the hidden states of the first P = M + 1 positions are the same for all classes. They are computed
once per group (G groups: one for CoOp, one per image for CoCoOp); each class then runs only its
own S suffix tokens, attending to its group's prefix keys / values plus its own earlier tokens.
The result equals the plain path (up to float rounding), and the backward pass flows through each
shared prefix once.

Layout: every layer works on one row matrix ``[G*P + G*n*S, W]`` (all prefixes, then all
suffixes), so the per-token parts of a block (layer norms, QKV projection, output projection, MLP)
are one matrix product each over all rows; the rows are split only for attention. Two more exact
savings:

* layer 0: the suffix rows are the same for every group (token + position embeddings only), so
  its layer norm and QKV projection run on ``n*S`` rows, not ``G*n*S``;
* last layer: only each prompt's EOT row is read out, so the queries, the output projection and
  the MLP of the last block run on the ``G*n`` EOT rows only (keys / values still on all rows).

Only open_clip's standard ``ResidualAttentionBlock`` (``nn.MultiheadAttention``) is supported; other
blocks fall back to the plain path (:func:`supports_shared_prefix`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``after(layer, norm, x_in, x_out) -> x_out``: called after each block of a tower run block by block (MMA's
#: adapters, :mod:`vlprompt.methods.mma`); ``layer`` = 1 .. depth is the block's 1-based index (0: the image tower's
#: stem, after ``ln_pre``), ``norm`` the layer norm the block applies first to its input (``ln_1``; ``ln_pre``
#: for the stem), ``x_in`` / ``x_out`` its input and output ``[..., W]`` row for row. It must act on each token
#: alone (a per-token function): the shared-prefix pass hands it the rows it computes, and of the last block only
#: the EOT rows.
BlockHook = Callable[[int, nn.Module, Tensor, Tensor], Tensor]


def supports_shared_prefix(transformer: nn.Module) -> bool:
    """True when every block is a standard pre-LN block with ``nn.MultiheadAttention``."""
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        return False
    return all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and hasattr(b, "ln_1")
               and hasattr(b, "mlp") and not hasattr(b, "ln_1_kv") for b in blocks)


def _split_heads(rows: Tensor, batch: int, length: int, parts: int, heads: int) -> tuple[Tensor, ...]:
    """``[batch*length, parts*W]`` projection rows -> ``parts`` tensors ``[batch, heads, length, W/heads]``."""
    d = rows.shape[-1] // (parts * heads)
    return rows.reshape(batch, length, parts, heads, d).permute(2, 0, 3, 1, 4).unbind(0)


def _per_prompt(t: Tensor, n: int) -> Tensor:
    """``[G, h, P, d] -> [G * n, h, P, d]`` (group g's prefix keys/values for each of its n prompts)."""
    g = t.shape[0]
    return t.unsqueeze(1).expand(g, n, *t.shape[1:]).reshape(g * n, *t.shape[1:])


def _suffix_rows(rows: Tensor, g: int, shared: bool) -> Tensor:
    """Suffix rows per group: shared ``[n*S, C]`` rows are repeated for each of the ``g`` groups."""
    return rows.unsqueeze(0).expand(g, -1, -1).reshape(-1, rows.shape[-1]) if shared and g > 1 else rows


def encode_shared_prefix(text: Any, prefix: Tensor, suffix: Tensor, eot_in_suffix: Tensor,
                         deep: Sequence[Tensor] = (), after: BlockHook | None = None) -> Tensor:
    """Text features of ``G`` groups of ``n`` prompts, each group sharing one prefix.

    Args:
        text: the backbone's text tower view (positional embedding, transformer, ln_final,
            text_projection), i.e. ``OpenClipBackbone._tower``.
        prefix: ``[G, P, D]`` embeddings of each group's shared first P tokens (SOS + context);
            G = 1 for CoOp, G = images for CoCoOp.
        suffix: ``[n, S, D]`` embeddings of each prompt's remaining tokens (cut after the last EOT),
            the same for every group.
        eot_in_suffix: ``[n]`` EOT position within the suffix.
        deep: deep prompts (:mod:`vlprompt.backbones.deep_prompts`): before block ``i = 1 .. len(deep)``
            the prefix tokens after SOS are replaced by ``deep[i - 1]`` ``[P - 1, D]`` (the same for every
            group and class, so the prefix stays shared and the result stays exact).
        after: a per-token :data:`BlockHook` applied after every block (None: none).

    Returns:
        ``[G, n, E]`` unnormalised text features, equal to running each full prompt.
    """
    cast = text.transformer.get_cast_dtype()
    g, p, w = prefix.shape
    n, s = suffix.shape[0], suffix.shape[1]
    device = prefix.device
    pos = text.positional_embedding.to(cast)
    hp = (prefix.to(cast) + pos[:p]).reshape(g * p, w)
    hs = (suffix.to(cast) + pos[p : p + s]).reshape(n * s, w)
    x = torch.cat([hp, hs])  # [G*P + n*S, W]: before the first block the suffix rows are shared by all groups
    shared = True
    eot = eot_in_suffix.to(device)
    # suffix queries see every prefix key and their own earlier suffix keys
    allowed = torch.ones(s, p + s, dtype=torch.bool, device=device)
    allowed[:, p:] = torch.ones(s, s, dtype=torch.bool, device=device).tril()
    if any(d.shape[0] != p - 1 for d in deep):
        raise ValueError(f"deep prompts must replace the {p - 1} prefix tokens after SOS")
    blocks = list(text.transformer.resblocks)
    for i, block in enumerate(blocks[:-1]):
        x = _replace_deep(x, deep, i, g, p)
        attn: nn.MultiheadAttention = block.attn
        heads = attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [rows, 3W]
        qp, kp, vp = _split_heads(qkv[: g * p], g, p, 3, heads)  # [G, h, P, d]
        qs, ks, vs = _split_heads(_suffix_rows(qkv[g * p :], g, shared), g * n, s, 3, heads)  # [G*n, h, S, d]
        op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
        os_ = F.scaled_dot_product_attention(qs, torch.cat([_per_prompt(kp, n), ks], dim=2),
                                             torch.cat([_per_prompt(vp, n), vs], dim=2), attn_mask=allowed)
        o = torch.cat([op.transpose(1, 2).reshape(g * p, w), os_.transpose(1, 2).reshape(g * n * s, w)])
        if shared:  # the residual stream becomes per group here
            x = torch.cat([x[: g * p], _suffix_rows(x[g * p :], g, True)])
            shared = False
        x_in = x
        x = x + block.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if after is not None:
            x = after(i + 1, block.ln_1, x_in, x)
    x = _replace_deep(x, deep, len(blocks) - 1, g, p)
    y = _last_block(blocks[-1], x, g, p, n, s, eot, shared, after, len(blocks))  # [G*n, W]
    y = text.ln_final(y)
    proj = text.text_projection
    if proj is not None:
        y = proj(y) if isinstance(proj, nn.Linear) else y @ proj
    return y.view(g, n, -1)


def _replace_deep(x: Tensor, deep: Sequence[Tensor], i: int, g: int, p: int) -> Tensor:
    """Before block ``i`` (1 <= i <= len(deep)): the prefix tokens after SOS of every group become the deep
    prompts ``deep[i - 1]`` ``[P - 1, W]`` (MaPLe / VPT-deep replacement); other blocks: ``x`` unchanged."""
    if not 1 <= i <= len(deep):
        return x
    w = x.shape[1]
    pre = x[: g * p].view(g, p, w)
    pre = torch.cat([pre[:, :1], deep[i - 1].to(x.dtype).unsqueeze(0).expand(g, -1, -1)], dim=1)
    return torch.cat([pre.reshape(g * p, w), x[g * p :]])


def _last_block(block: nn.Module, x: Tensor, g: int, p: int, n: int, s: int, eot: Tensor, shared: bool,
                after: BlockHook | None = None, layer: int = 0) -> Tensor:
    """The last block, evaluated only where it is read: each prompt's EOT row -> ``[G*n, W]`` (then
    ``after(layer, ...)`` on those rows when given).

    Keys and values are needed for every row (the EOT query attends to them); the query, the
    output projection and the MLP only for the EOT rows.
    """
    attn: nn.MultiheadAttention = block.attn
    heads, w = attn.num_heads, x.shape[1]
    wq, wkv = attn.in_proj_weight[:w], attn.in_proj_weight[w:]
    bias = attn.in_proj_bias
    bq, bkv = (None, None) if bias is None else (bias[:w], bias[w:])
    h = block.ln_1(x)
    kv = F.linear(h, wkv, bkv)  # [rows, 2W]
    kp, vp = _split_heads(kv[: g * p], g, p, 2, heads)  # [G, h, P, d]
    ks, vs = _split_heads(_suffix_rows(kv[g * p :], g, shared), g * n, s, 2, heads)  # [G*n, h, S, d]
    in_suffix = torch.arange(n, device=x.device) * s + eot  # EOT row of each prompt within a group's suffix
    if shared:
        rows = (g * p + in_suffix).repeat(g)
    else:
        rows = g * p + (torch.arange(g, device=x.device).unsqueeze(1) * (n * s) + in_suffix).reshape(-1)
    q = F.linear(h[rows], wq, bq)  # [G*n, W]
    # the EOT query of prompt c sees the P prefix keys and suffix keys 0..eot_c
    visible = torch.arange(p + s, device=x.device) <= (p + eot).repeat(g).unsqueeze(1)  # [G*n, P+S]
    o = F.scaled_dot_product_attention(
        q.view(g * n, 1, heads, w // heads).transpose(1, 2),
        torch.cat([_per_prompt(kp, n), ks], dim=2), torch.cat([_per_prompt(vp, n), vs], dim=2),
        attn_mask=visible[:, None, None, :],
    )  # [G*n, h, 1, d]
    y = x[rows] + block.ls_1(F.linear(o.reshape(g * n, w), attn.out_proj.weight, attn.out_proj.bias))
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y if after is None else after(layer, block.ln_1, x[rows], y)
