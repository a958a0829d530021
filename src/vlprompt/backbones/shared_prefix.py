"""Exact shared-prefix text encoding for prompts that start with the same tokens, suffixes packed.

With unified context and the class token at the end, every prompt is
``[SOS] [V]1 .. [V]M | name_c . [EOT] (pad)``. The text tower's mask is causal, so at every layer
the hidden states of the first P = M + 1 positions are the same for all classes. They are computed
once per group (G groups: one for CoOp, one per image for CoCoOp); each class then runs only its
own ``l_c = eot_c + 1`` suffix tokens (name, period, EOT: no padding rows), attending to its group's
prefix keys / values plus its own earlier tokens. The result equals the plain path (up to float
rounding), and the backward pass flows through each shared prefix once.

Layout: every layer works on one packed row matrix ``[G*P + G*sum_c l_c, W]`` (all prefixes, then
every prompt's real suffix rows), so the per-token parts of a block (layer norms, QKV projection,
output projection, MLP, a per-token ``after`` hook) are one matrix product each over the real rows
only. For attention the prompts are sorted into length buckets (:class:`SuffixLayout`): the rows
of the prompts of one suffix length are contiguous, ``[G, n_l, l]``, so each bucket is one batched
``scaled_dot_product_attention`` call with no padding (about 10 distinct lengths on ImageNet's names).
Two more exact savings:

* layer 0: the suffix rows are the same for every group (token + position embeddings only), so
  its layer norm and QKV projection run on ``sum_c l_c`` rows, not ``G * sum_c l_c``;
* last layer: only each prompt's EOT row is read out, so the queries, the output projection and
  the MLP of the last block run on the ``G*n`` EOT rows only (keys / values still on all rows).

Why length buckets: measured on CPU, 1 thread, open_clip's ViT-B-16 text tower (width 512, 12 layers, random
init), prompts ``"X X X X {name}."`` over open_clip's ImageNet class names (suffix = name + period + EOT:
mean 4.4 rows, max 9 over the first 50; mean 4.2, max 13 over all 1000), forward + backward to the prefix,
rounds interleaved, medians; a loaded 2-core machine (load 3.8-6), so the ratios are the message, not the
seconds. Every candidate packs the per-token work; they differ only in the attention of the suffix rows:

===========================  =============  ======  ==============  ================  ==============
case                         suffix rows    padded  length buckets  padded attention  block-diagonal
===========================  =============  ======  ==============  ================  ==============
CoOp, 50 names               450 -> 219     2.38 s  1.31 s (1.81x)  1.39 s (1.71x)    1.39 s (1.71x)
CoCoOp, 4 images x 50 names  450 -> 219     8.52 s  4.62 s (1.85x)  5.02 s (1.70x)    6.65 s (1.28x)
CoOp, 1000 names             13000 -> 4165  67.1 s  17.7 s (3.79x)  25.9 s (2.59x)    not run
===========================  =============  ======  ==============  ================  ==============

``padded``: the pass of earlier versions (every prompt runs the longest suffix; ``packed=False`` here, same
cost within 6 %). ``padded attention``: packed rows scattered into the ``[G*n, S]`` grid for one attention
call and gathered back (the scatter / gather and the padded attention cost more than the bucket loop).
``block-diagonal``: one attention call over all ``R`` packed rows with an ``[R, G*P + R]`` mask (quadratic in
R: already behind at 4 x 50 prompts; at 1000 names R = 4165 per group). Nested (jagged) tensors: torch
2.14's jagged ``scaled_dot_product_attention`` takes no ``attn_mask`` ("Masks are not yet supported!"), and
the suffix queries need one (every prefix key + their own earlier keys: causal, but not square). Length
buckets run about 10 attention calls per block on ImageNet's names, with no padding and no mask beyond
``[l, P + l]``. Rerun: ``python benchmarks/bench_packed_text.py`` (padded vs packed, the same three cases;
on this machine 1.71x, 2.02x and 3.43x).

Only open_clip's standard ``ResidualAttentionBlock`` (``nn.MultiheadAttention``) is supported; other
blocks fall back to the plain path (:func:`supports_shared_prefix`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``after(layer, norm, x_in, x_out) -> x_out``: called after each block of a tower run block by block (MMA's
#: adapters, :mod:`vlprompt.methods.mma`); ``layer`` = 1 .. depth is the block's 1-based index (0: the image tower's
#: stem, after ``ln_pre``), ``norm`` the layer norm the block applies first to its input (``ln_1``; ``ln_pre``
#: for the stem), ``x_in`` / ``x_out`` its input and output ``[..., W]`` row for row. It must act on each token
#: alone (a per-token function): the shared-prefix pass hands it the rows it computes (packed: no padding rows),
#: and of the last block only the EOT rows.
BlockHook = Callable[[int, nn.Module, Tensor, Tensor], Tensor]


def supports_shared_prefix(transformer: nn.Module) -> bool:
    """True when every block is a standard pre-LN block with ``nn.MultiheadAttention``."""
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        return False
    return all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and hasattr(b, "ln_1")
               and hasattr(b, "mlp") and not hasattr(b, "ln_1_kv") for b in blocks)


@dataclass(frozen=True)
class SuffixLayout:
    """Where each prompt's suffix rows sit in the packed row matrix (length buckets, bucket-major).

    Prompts are sorted by suffix length ``l_c`` (stable) and grouped into buckets of equal length; bucket ``b``
    (length ``lengths[b]``, ``counts[b]`` prompts) owns the contiguous rows ``[G, counts[b], lengths[b]]`` of the
    per-group suffix rows, so its attention is one batched call without padding.

    Attributes:
        lengths / counts: per bucket, the suffix length and the number of prompts (Python ints).
        classes: ``[n]`` the prompts in bucket order.
        gather: ``[R0]`` row of ``suffix.reshape(n * S, D)`` for each shared (layer-0) packed row,
            ``R0 = sum_c l_c``.
        spread: ``[G * R0]`` shared packed row for each per-group packed row (None when G = 1: identical).
        eot_rows: ``[G * n]`` each prompt's EOT row among the per-group packed rows, bucket-major ``(b, g, j)``.
        eot_last: per bucket, ``[G * counts[b]]`` the EOT position within the suffix when some EOT is not the
            bucket's last row (padded layout only), else None.
        to_group_class: ``[G * n]`` permutation: bucket-major EOT features -> ``(g, c)`` order.
    """

    lengths: list[int]
    counts: list[int]
    classes: Tensor
    gather: Tensor
    spread: Tensor | None
    eot_rows: Tensor
    eot_last: list[Tensor | None]
    to_group_class: Tensor

    @staticmethod
    def build(groups: int, suffix_len: int, eot_in_suffix: Tensor, *, packed: bool = True,
              device: torch.device | None = None) -> SuffixLayout:
        """Layout of ``G = groups`` groups of ``n`` prompts with suffixes ``[n, S]`` and EOTs ``eot_in_suffix [n]``.

        ``packed``: each prompt keeps its ``eot_c + 1`` real rows; ``packed=False`` keeps all ``S`` rows of every
        prompt (the padded layout of earlier versions: one bucket; exact too, as padding after EOT is never read).
        """
        g, s = groups, suffix_len
        eot = eot_in_suffix.detach().to("cpu", torch.long)
        n = eot.shape[0]
        if not packed:  # one bucket of every prompt's S rows: no value of `eot` decides the layout (traceable)
            rows, e = torch.arange(n * s), eot.repeat(g)
            return SuffixLayout([s], [n], torch.arange(n, device=device), rows.to(device),
                                rows.repeat(g).to(device) if g > 1 else None, (torch.arange(g * n) * s + e).to(device),
                                [e.to(device)], torch.arange(g * n, device=device))
        if n == 0 or int(eot.min()) < 0 or int(eot.max()) >= s:
            raise ValueError(f"EOT positions must lie in the suffix of {s} tokens")
        length = eot + 1 if packed else torch.full_like(eot, s)
        lens, classes = torch.sort(length, stable=True)
        lengths, counts = (t.tolist() for t in torch.unique_consecutive(lens, return_counts=True))
        starts = torch.cumsum(lens, 0) - lens  # first shared row of each sorted prompt
        within = torch.arange(int(lens.sum())) - starts.repeat_interleave(lens)
        gather = classes.repeat_interleave(lens) * s + within
        spread, eot_rows, eot_last, dest = [], [], [], []
        shared = per_group = first = 0
        for ln, c in zip(lengths, counts):
            cls = classes[first : first + c]
            spread.append((shared + torch.arange(c * ln)).repeat(g))
            k = torch.arange(g * c)  # (g, j) of the bucket
            e = eot[cls].repeat(g)
            eot_rows.append(per_group + k * ln + e)
            eot_last.append(None if bool((e == ln - 1).all()) else e.to(device))
            dest.append((torch.arange(g).unsqueeze(1) * n + cls).reshape(-1))
            shared, per_group, first = shared + c * ln, per_group + g * c * ln, first + c

        def cat(parts: list[Tensor]) -> Tensor:
            return torch.cat(parts).to(device)

        return SuffixLayout(lengths, counts, classes.to(device), gather.to(device), cat(spread) if g > 1 else None,
                            cat(eot_rows), eot_last, torch.argsort(cat(dest)))


def _split_heads(rows: Tensor, batch: int, length: int, parts: int, heads: int) -> tuple[Tensor, ...]:
    """``[batch*length, parts*W]`` projection rows -> ``parts`` tensors ``[batch, heads, length, W/heads]``."""
    d = rows.shape[-1] // (parts * heads)
    return rows.reshape(batch, length, parts, heads, d).permute(2, 0, 3, 1, 4).unbind(0)


def _per_prompt(t: Tensor, n: int) -> Tensor:
    """``[G, h, P, d] -> [G * n, h, P, d]`` (group g's prefix keys/values for each of its n prompts)."""
    g = t.shape[0]
    return t.unsqueeze(1).expand(g, n, *t.shape[1:]).reshape(g * n, *t.shape[1:])


def encode_shared_prefix(text: Any, prefix: Tensor, suffix: Tensor, eot_in_suffix: Tensor,
                         deep: Sequence[Tensor] = (), after: BlockHook | None = None, *, packed: bool = True) -> Tensor:
    """Text features of ``G`` groups of ``n`` prompts, each group sharing one prefix.

    Args:
        text: the backbone's text tower view (positional embedding, transformer, ln_final,
            text_projection), i.e. ``OpenClipBackbone._tower``.
        prefix: ``[G, P, D]`` embeddings of each group's shared first P tokens (SOS + context);
            G = 1 for CoOp, G = images for CoCoOp.
        suffix: ``[n, S, D]`` embeddings of each prompt's remaining tokens (cut after the last EOT),
            the same for every group; rows after a prompt's EOT are never read.
        eot_in_suffix: ``[n]`` EOT position within the suffix (prompt c has ``eot_c + 1`` real suffix rows).
        deep: deep prompts (:mod:`vlprompt.backbones.deep_prompts`): before block ``i = 1 .. len(deep)``
            the prefix tokens after SOS are replaced by ``deep[i - 1]`` ``[P - 1, D]`` (the same for every
            group and class, so the prefix stays shared and the result stays exact).
        after: a per-token :data:`BlockHook` applied after every block (None: none).
        packed: run only each prompt's real suffix rows (default); False: every prompt's S rows (the padded
            pass of earlier versions, for comparison; same result).

    Returns:
        ``[G, n, E]`` unnormalised text features, equal to running each full prompt.
    """
    cast = text.transformer.get_cast_dtype()
    g, p, w = prefix.shape
    n, s = suffix.shape[0], suffix.shape[1]
    device = prefix.device
    if any(d.shape[0] != p - 1 for d in deep):
        raise ValueError(f"deep prompts must replace the {p - 1} prefix tokens after SOS")
    # torch.export (ONNX) treats the EOT positions as data, so the packed layout (built from their values) cannot be
    # traced: the padded layout is exact too and speed does not matter there
    lay = SuffixLayout.build(g, s, eot_in_suffix, packed=packed and not torch.compiler.is_exporting(), device=device)
    pos = text.positional_embedding.to(cast)
    hp = (prefix.to(cast) + pos[:p]).reshape(g * p, w)
    hs = (suffix.to(cast) + pos[p : p + s]).reshape(n * s, w).index_select(0, lay.gather)
    x = torch.cat([hp, hs])  # [G*P + R0, W]: before the first block the suffix rows are shared by all groups
    shared = lay.spread is not None
    longest = max(lay.lengths)
    # a suffix query sees every prefix key and its own earlier suffix keys (bucket of length l: [:l, :P + l])
    allowed = torch.ones(longest, p + longest, dtype=torch.bool, device=device)
    allowed[:, p:] = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    blocks = list(text.transformer.resblocks)
    for i, block in enumerate(blocks[:-1]):
        x = _replace_deep(x, deep, i, g, p)
        attn: nn.MultiheadAttention = block.attn
        heads = attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [rows, 3W]
        qp, kp, vp = _split_heads(qkv[: g * p], g, p, 3, heads)  # [G, h, P, d]
        op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
        qkv_s = qkv[g * p :]  # [G*R0, 3W] per group
        if shared and lay.spread is not None:
            qkv_s = qkv_s.index_select(0, lay.spread)
        out, start = [op.transpose(1, 2).reshape(g * p, w)], 0
        for length, count in zip(lay.lengths, lay.counts):  # one attention call per suffix length
            m = g * count
            qs, ks, vs = _split_heads(qkv_s[start : start + m * length], m, length, 3, heads)  # [m, h, l, d]
            o = F.scaled_dot_product_attention(qs, torch.cat([_per_prompt(kp, count), ks], dim=2),
                                               torch.cat([_per_prompt(vp, count), vs], dim=2),
                                               attn_mask=allowed[:length, : p + length])
            out.append(o.transpose(1, 2).reshape(m * length, w))
            start += m * length
        if shared:  # the residual stream becomes per group here
            assert lay.spread is not None
            x = torch.cat([x[: g * p], x[g * p :].index_select(0, lay.spread)])
            shared = False
        x_in = x
        x = x + block.ls_1(F.linear(torch.cat(out), attn.out_proj.weight, attn.out_proj.bias))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if after is not None:
            x = after(i + 1, block.ln_1, x_in, x)
    if shared:  # a one-block tower
        assert lay.spread is not None
        x = torch.cat([x[: g * p], x[g * p :].index_select(0, lay.spread)])
    x = _replace_deep(x, deep, len(blocks) - 1, g, p)
    y = _last_block(blocks[-1], x, g, p, lay, after, len(blocks))  # [G*n, W], bucket-major
    y = text.ln_final(y.index_select(0, lay.to_group_class))
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


def _last_block(block: Any, x: Tensor, g: int, p: int, lay: SuffixLayout, after: BlockHook | None = None,
                layer: int = 0) -> Tensor:
    """The last block, evaluated only where it is read: each prompt's EOT row -> ``[G*n, W]`` in bucket-major
    order (then ``after(layer, ...)`` on those rows when given); ``x``: ``[G*P + G*R0, W]`` per-group rows.

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
    rows = g * p + lay.eot_rows
    q = F.linear(h.index_select(0, rows), wq, bq)  # [G*n, W]
    out, start, first = [], g * p, 0
    for length, count, eot in zip(lay.lengths, lay.counts, lay.eot_last):
        m = g * count
        ks, vs = _split_heads(kv[start : start + m * length], m, length, 2, heads)  # [m, h, l, d]
        # the EOT query sees the P prefix keys and its suffix keys up to EOT (all of them when packed)
        mask = None if eot is None else (torch.arange(p + length, device=x.device) <= (p + eot).unsqueeze(1))
        o = F.scaled_dot_product_attention(
            q[first : first + m].view(m, 1, heads, w // heads).transpose(1, 2),
            torch.cat([_per_prompt(kp, count), ks], dim=2), torch.cat([_per_prompt(vp, count), vs], dim=2),
            attn_mask=None if mask is None else mask[:, None, None, :],
        )  # [m, h, 1, d]
        out.append(o.reshape(m, w))
        start, first = start + m * length, first + m
    x_eot = x.index_select(0, rows)
    y = x_eot + block.ls_1(F.linear(torch.cat(out), attn.out_proj.weight, attn.out_proj.bias))
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y if after is None else after(layer, block.ln_1, x_eot, y)
