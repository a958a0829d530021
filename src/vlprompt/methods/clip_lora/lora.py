"""Low-rank adapters on the attention projections of ``nn.MultiheadAttention`` (CLIP-LoRA's layers).

For an enabled projection ``P`` (query, key, value or output) with frozen weight ``W_P`` and bias
``b_P`` (LoRA, Hu et al. 2022, Eq. 3, with CLIP-LoRA's scaling)::

    P(x) = W_P x + b_P + s * B_P A_P dropout(x),      s = alpha / sqrt(r)

``A_P [r, E]`` starts as ``nn.Linear``'s default (Kaiming-uniform, a = sqrt(5)) and ``B_P [E, r]`` at
zero, so an adapted model starts equal to the frozen one; dropout (independent per projection, training
only) acts on the low-rank branch alone (CLIP-LoRA ``loralib/layers.py``: scaling l.42, initialisation
l.63-68, forward with dropout l.197-208; split q/k/v/out projections l.340-423).

Why not ``peft``: open_clip's blocks use ``nn.MultiheadAttention`` with one fused ``in_proj_weight``.
peft's ``MultiheadAttention`` LoRA layer adapts the fused in-projection with a single A/B pair (q, k and
v share A) *and* always the output projection, and merges the delta into the weight for every forward,
so neither CLIP-LoRA's separate q/k/v adapters nor its dropout on the low-rank branch can be expressed.
:class:`LoRAMultiheadAttention` wraps the frozen module instead and computes attention itself with
``F.scaled_dot_product_attention`` (attention dropout 0, as in CLIP-LoRA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROJECTIONS = ("q", "k", "v", "o")


class LoRAMultiheadAttention(nn.Module):
    """Drop-in replacement of a frozen ``nn.MultiheadAttention`` (``_qkv_same_embed_dim``) with LoRA.

    Args:
        base: the frozen attention module (kept as ``base``; its weights are never changed).
        projections: which of ``q``, ``k``, ``v``, ``o`` get an adapter.
        r: rank; ``alpha``: scaling numerator (scaling ``alpha / sqrt(r)``); ``dropout``: on the branch input.
    """

    def __init__(self, base: nn.MultiheadAttention, projections: Sequence[str], r: int, alpha: float,
                 dropout: float) -> None:
        super().__init__()
        if not base._qkv_same_embed_dim or base.bias_k is not None or base.add_zero_attn:
            raise ValueError("LoRA supports self-attention modules with one fused in-projection only")
        self.base = base
        self.embed_dim, self.num_heads, self.batch_first = base.embed_dim, base.num_heads, base.batch_first
        self.r, self.scaling = r, alpha / math.sqrt(r)
        self.projections = tuple(projections)
        weight = base.in_proj_weight
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in self.projections:
            a = torch.empty(r, self.embed_dim, device=weight.device, dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a)
            self.lora_B[name] = nn.Parameter(torch.zeros(self.embed_dim, r, device=weight.device))
        self.dropout = nn.ModuleDict({n: nn.Dropout(dropout) for n in self.projections})

    def _project(self, name: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = F.linear(x, weight, bias)
        if name in self.lora_A:
            branch = self.dropout[name](x)
            delta = (branch.to(self.lora_A[name].dtype) @ self.lora_A[name].t()) @ self.lora_B[name].t()
            out = out + (self.scaling * delta).to(out.dtype)
        return out

    def delta_weight(self, name: str) -> Tensor:
        """``s * B A``: ``[E, E]`` change of projection ``name`` (zero for a projection without adapter)."""
        if name not in self.lora_A:
            return torch.zeros(self.embed_dim, self.embed_dim, device=self.base.in_proj_weight.device)
        return self.scaling * self.lora_B[name] @ self.lora_A[name]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = False, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, None]:
        """Same call as ``nn.MultiheadAttention`` (``need_weights`` must be False): ``(output, None)``."""
        if need_weights:
            raise ValueError("LoRAMultiheadAttention does not return attention weights")
        if not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        e, h = self.embed_dim, self.num_heads
        w, b = self.base.in_proj_weight, self.base.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e:2 * e], b[2 * e:])
        q = self._project("q", query, w[:e], bq)
        k = self._project("k", key, w[e:2 * e], bk)
        v = self._project("v", value, w[2 * e:], bv)
        n, lq, lk = q.shape[0], q.shape[1], k.shape[1]
        q = q.view(n, lq, h, e // h).transpose(1, 2)  # [N, H, Lq, d]
        k = k.view(n, lk, h, e // h).transpose(1, 2)
        v = v.view(n, lk, h, e // h).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, q.dtype, n, h, lq, lk)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        out = out.transpose(1, 2).reshape(n, lq, e)
        out = self._project("o", out, self.base.out_proj.weight, self.base.out_proj.bias)
        return (out if self.batch_first else out.transpose(0, 1)), None


def _additive_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None, dtype: torch.dtype, n: int, h: int,
                   lq: int, lk: int) -> Tensor | None:
    """``nn.MultiheadAttention``'s masks (bool: True = masked; float: added) as one additive mask."""
    def additive(m: Tensor) -> Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        mask = mask.view(1, 1, lq, lk) if mask.dim() == 2 else mask.view(n, h, lq, lk)
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).view(n, 1, 1, lk)
        mask = pad if mask is None else mask + pad
    return mask


def attention_modules(blocks: Sequence[nn.Module]) -> list[tuple[int, nn.Module, str]]:
    """``(block index, block, attribute)`` of every ``nn.MultiheadAttention`` directly inside a tower's
    residual ``blocks`` (:meth:`~vlprompt.backbones.base.Backbone.transformer_blocks`; open_clip's; a
    Hugging Face layer's attention has separate projections and is not found)."""
    found = []
    for i, block in enumerate(blocks):
        for name, child in block.named_children():
            if isinstance(child, nn.MultiheadAttention | LoRAMultiheadAttention):
                found.append((i, block, name))
    return found
