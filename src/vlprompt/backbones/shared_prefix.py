"""Exact shared-prefix text encoding for prompts that start with the same tokens.

With unified context and the class token at the end, every prompt is
``[SOS] [V]1 .. [V]M | name_c . [EOT] (pad)``. The text tower's mask is causal, so at every layer
the hidden states of the first M + 1 positions are the same for all classes. They are computed
once (one sequence of M + 1 tokens); each class then runs only its own suffix tokens, attending to
the shared prefix keys / values plus its own earlier tokens. The result equals the plain path (up to
float rounding), and the backward pass flows through the shared prefix once.

Only open_clip's standard ``ResidualAttentionBlock`` (``nn.MultiheadAttention``) is supported; other
blocks fall back to the plain path (:func:`supports_shared_prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def supports_shared_prefix(transformer: nn.Module) -> bool:
    """True when every block is a standard pre-LN block with ``nn.MultiheadAttention``."""
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        return False
    return all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and hasattr(b, "ln_1")
               and hasattr(b, "mlp") and not hasattr(b, "ln_1_kv") for b in blocks)


def _heads(attn: nn.MultiheadAttention, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as ``[B, heads, T, head_dim]``."""
    b, t, w = x.shape
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [B, T, 3W]
    q, k, v = qkv.split(w, dim=-1)
    h = attn.num_heads

    def split(z: Tensor) -> Tensor:
        return z.view(b, t, h, w // h).transpose(1, 2)

    return split(q), split(k), split(v)


def _merge(attn: nn.MultiheadAttention, o: Tensor) -> Tensor:
    b, h, t, d = o.shape
    return attn.out_proj(o.transpose(1, 2).reshape(b, t, h * d))


def encode_shared_prefix(text: Any, prefix: Tensor, suffix: Tensor, eot_in_suffix: Tensor,
                         deep: Sequence[Tensor] = ()) -> Tensor:
    """Text features of ``G`` groups of ``n`` prompts, each group sharing one prefix.

    Args:
        text: the backbone's text tower view (positional embedding, transformer, ln_final,
            text_projection), i.e. ``OpenClipBackbone._text``.
        prefix: ``[G, P, D]`` embeddings of each group's shared first P tokens (SOS + context);
            G = 1 for CoOp, G = images for CoCoOp.
        suffix: ``[n, S, D]`` embeddings of each prompt's remaining tokens (cut after the last EOT),
            the same for every group.
        eot_in_suffix: ``[n]`` EOT position within the suffix.
        deep: deep prompts (:mod:`vlprompt.backbones.deep_prompts`): before block ``i = 1 .. len(deep)``
            the prefix tokens after SOS are replaced by ``deep[i - 1]`` ``[P - 1, D]`` (the same for every
            group and class, so the prefix stays shared and the result stays exact).

    Returns:
        ``[G, n, E]`` unnormalised text features, equal to running each full prompt.
    """
    cast = text.transformer.get_cast_dtype()
    g, p = prefix.shape[0], prefix.shape[1]
    n, s = suffix.shape[0], suffix.shape[1]
    pos = text.positional_embedding.to(cast)
    hp = prefix.to(cast) + pos[:p]  # [G, P, W]
    hs = (suffix.to(cast) + pos[p : p + s]).unsqueeze(0).expand(g, -1, -1, -1).reshape(g * n, s, -1)
    # suffix queries see every prefix key and their own earlier suffix keys
    allowed = torch.ones(s, p + s, dtype=torch.bool, device=hs.device)
    allowed[:, p:] = torch.ones(s, s, dtype=torch.bool, device=hs.device).tril()
    if any(d.shape[0] != p - 1 for d in deep):
        raise ValueError(f"deep prompts must replace the {p - 1} prefix tokens after SOS")
    for i, block in enumerate(text.transformer.resblocks):
        if 1 <= i <= len(deep):
            hp = torch.cat([hp[:, :1], deep[i - 1].to(hp.dtype).unsqueeze(0).expand(g, -1, -1)], dim=1)
        attn: nn.MultiheadAttention = block.attn
        qp, kp, vp = _heads(attn, block.ln_1(hp))  # [G, h, P, d]
        op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
        qs, ks, vs = _heads(attn, block.ln_1(hs))  # [G*n, h, S, d]
        k = torch.cat([_per_prompt(kp, n), ks], dim=2)
        v = torch.cat([_per_prompt(vp, n), vs], dim=2)
        os_ = F.scaled_dot_product_attention(qs, k, v, attn_mask=allowed)
        hp = hp + block.ls_1(_merge(attn, op))
        hs = hs + block.ls_1(_merge(attn, os_))
        hp = hp + block.ls_2(block.mlp(block.ln_2(hp)))
        hs = hs + block.ls_2(block.mlp(block.ln_2(hs)))
    eot = eot_in_suffix.to(hs.device).repeat(g)
    x = text.ln_final(hs[torch.arange(g * n, device=hs.device), eot])
    proj = text.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x.view(g, n, -1)


def _per_prompt(t: Tensor, n: int) -> Tensor:
    """``[G, h, P, d] -> [G * n, h, P, d]`` (group g's prefix keys/values for each of its n prompts)."""
    g = t.shape[0]
    return t.unsqueeze(1).expand(g, n, *t.shape[1:]).reshape(g * n, *t.shape[1:])
