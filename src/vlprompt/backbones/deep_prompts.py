"""Deep prompts inside open_clip towers (VPT-deep / IVLP / MaPLe scheme).

Learnable tokens enter a transformer tower at layer 0 and, at every block ``1 .. J-1``, the hidden
states those tokens produced are *replaced* by fresh learnable tokens (Jia et al., VPT-deep, ECCV 2022;
Khattak et al., MaPLe, CVPR 2023). From block J on, the tokens are carried through
like any other token. This module runs open_clip's towers block by block to do that, computing what
the authors' ``ResidualAttentionBlock_IVLP`` / ``ResidualAttentionBlock_MaPLe`` compute
(muzairkhattak/multimodal-prompt-learning, ``clip/model.py`` lines 191-331):

Text tower (``[P, L, D]``, causal mask, EOT pooling)::

    x_0 = [SOS, p_0 (n tokens), rest of the prompt, EOT, ...] + positional embedding
    x_i = block_i([x_{i-1}[:, :1], p_i, x_{i-1}[:, 1+n:]])    for i = 1 .. J-1   (no positional embedding
    x_i = block_i(x_{i-1})                                    otherwise          is added to p_i)
    feature = ln_final(x_last)[EOT] @ text_projection

The prompt tokens sit right after SOS, so the causal mask and the EOT position are unchanged, and
sequences can still be cut after the longest EOT (exact).

Image tower (ViT only; ``[B, 1 + N, W]`` class token + N patches)::

    x_0 = ln_pre([class + pos_0, patches + pos, v_0 (n tokens)])     # prompts appended after the patches,
    x_i = block_i([x_{i-1}[:, :-n], v_i])  for i = 1 .. J-1          # before ln_pre (clip/model.py 456-463)
    feature = ln_post(x_last[:, 0]) @ proj                           # class-token pooling

Every function below also takes ``after``, a per-block hook
(:data:`~vlprompt.backbones.shared_prefix.BlockHook`, called after each block and after the image stem; MMA's
adapters, :mod:`vlprompt.methods.mma`); without it they compute what they did before.

Towers without a token sequence (ModifiedResNet, ConvNeXt / timm towers), attention-pooled (CoCa)
or average-pooled ViTs cannot take such tokens: :func:`check_vision_deep` refuses them with a
:class:`~vlprompt.core.errors.ModelError`. The reference casts prompts to fp16 (``.half()``); here they
are cast to the tower's compute dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.openclip_towers import TransformerTextView
from vlprompt.backbones.shared_prefix import BlockHook
from vlprompt.core.errors import ModelError


def _blocks(transformer: Any) -> nn.ModuleList:
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise ModelError("this tower's transformer has no list of blocks ('resblocks'); deep prompts need "
                         "an open_clip Transformer.")
    return blocks


def _text_tower(backbone: Backbone) -> TransformerTextView:
    """The backbone's open_clip ``TextTransformer`` view (deep text prompts run its blocks one by one)."""
    tower = getattr(backbone, "_tower", None)  # OpenClipBackbone's text tower view
    if not isinstance(tower, TransformerTextView):
        raise ModelError(f"model '{backbone.name}': deep text prompts need an open_clip TextTransformer text tower, "
                         "not a Hugging Face text encoder.")
    return tower


def _run_blocks(transformer: Any, x: Tensor, attn_mask: Tensor | None,
                replace: Sequence[Tensor], splice: Callable[[Tensor, Tensor], Tensor],
                after: BlockHook | None = None) -> Tensor:
    """Run ``transformer``'s blocks on ``x [B, T, W]`` (batch first), calling ``splice(x, p)`` before
    block ``i`` (i = 1 .. len(replace)) with ``p = replace[i - 1]`` ``[n, W]``, and ``after(i + 1, block.ln_1,
    input, output)`` after block ``i`` (0-based) when given."""
    blocks = _blocks(transformer)
    if len(replace) > len(blocks) - 1:
        raise ModelError(f"{len(replace)} deep prompt layers given for a tower of {len(blocks)} blocks "
                         f"(at most {len(blocks) - 1}: layer 0 takes the input prompts).")
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(blocks):
        if 1 <= i <= len(replace):
            x = splice(x, replace[i - 1].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1))
        x_in = x
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:  # open_clip towers built with batch_first=False take [T, B, W]
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        if after is not None:
            x = after(i + 1, cast(nn.Module, block.ln_1), x_in, x)
    return x


# ---------------------------------------------------------------------------------------------- text
def text_depth(backbone: Backbone) -> int:
    """Number of blocks of the text transformer."""
    return len(_blocks(_text_tower(backbone).transformer))


def encode_text_deep(backbone: Backbone, embeds: Tensor, eot_index: Tensor, deep: Sequence[Tensor], *,
                     n_ctx: int, truncate: bool = True, after: BlockHook | None = None) -> Tensor:
    """Text features of prompts whose tokens ``1 .. n_ctx`` are deep prompts.

    Args:
        backbone: an :class:`~vlprompt.backbones.openclip.OpenClipBackbone`.
        embeds: ``[P, L, D]`` token embeddings with the layer-0 prompt tokens already at positions
            ``1 .. n_ctx`` (right after SOS).
        eot_index: ``[P]`` EOT position of each prompt.
        deep: the replacement tokens of blocks 1, 2, ...: each ``[n_ctx, D]`` (empty = shallow).
        n_ctx: number of prompt tokens.
        truncate: cut the sequences after ``max(eot_index)`` (exact: causal mask, prompts before EOT).
        after: per-block hook (see :func:`_run_blocks`), None for none.

    Returns:
        ``[P, E]`` unnormalised text features.
    """
    t = _text_tower(backbone)
    if deep and int(eot_index.min()) <= n_ctx:
        raise ModelError("deep text prompts must sit before every EOT token")
    length = int(eot_index.max().item()) + 1 if truncate else embeds.shape[1]
    cast = backbone.dtype
    x = embeds[:, :length].to(cast) + t.positional_embedding[:length].to(cast)
    mask = t.attn_mask[:length, :length].to(x.device) if t.attn_mask is not None else None

    def splice(h: Tensor, p: Tensor) -> Tensor:
        return torch.cat([h[:, :1], p, h[:, 1 + n_ctx:]], dim=1)

    x = _run_blocks(t.transformer, x, mask, deep, splice, after)
    x = t.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)]
    proj = t.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


def encode_text_deep_shared(backbone: Backbone, ctx: Tensor, sos: Tensor, suffix: Tensor,
                            eot_in_suffix: Tensor, deep: Sequence[Tensor], after: BlockHook | None = None) -> Tensor:
    """:func:`encode_text_deep` for prompts ``[SOS, ctx, suffix_c]`` whose SOS + deep prompts are the same for
    every class: exact shared-prefix pass (:mod:`vlprompt.backbones.shared_prefix`) where the tower allows it.

    Args:
        ctx: ``[n, D]`` layer-0 prompt; ``sos``: ``[1, D]`` SOS embedding; ``suffix``: ``[C, S, D]`` each class's
            remaining tokens (cut after the longest EOT); ``eot_in_suffix``: ``[C]``; ``deep`` and ``after`` (a
            per-token hook): as in :func:`encode_text_deep`.

    Returns:
        ``[C, E]`` unnormalised text features.
    """
    from vlprompt.backbones.shared_prefix import encode_shared_prefix, supports_shared_prefix

    n = ctx.shape[0]
    prefix = torch.cat([sos.to(ctx.dtype), ctx], dim=0).unsqueeze(0)  # [1, 1 + n, D]
    tower = _text_tower(backbone)
    if supports_shared_prefix(tower.transformer):
        return encode_shared_prefix(tower, prefix, suffix.to(ctx.dtype), eot_in_suffix, deep, after)[0]
    full = torch.cat([prefix.expand(suffix.shape[0], -1, -1), suffix.to(ctx.dtype)], dim=1)
    return encode_text_deep(backbone, full, eot_in_suffix + 1 + n, deep, n_ctx=n, after=after)


def encode_text_class_tokens(backbone: Backbone, embeds: Tensor, eot_index: Tensor, tokens: Tensor, *,
                             layer: int, weight: float = 1.0) -> Tensor:
    """Text features of prompts whose tokens ``1 .. n`` are overwritten, at the input of text block ``layer``, by
    per-prompt tokens (TCP's class-aware prompts, Yao et al., CVPR 2024)::

        h[:, 1:1+n] = weight * tokens + (1 - weight) * h[:, 1:1+n]     before block ``layer`` (0 = the input,
                                                                       after the positional embedding)

    as ``ResidualAttentionBlock_MaPLe.forward`` of htyao89/Textual-based_Class-aware_prompt_tuning
    (``trainers/clip_text/model.py`` l.262-282) does; every other block runs as usual. A forward pre-hook on that
    block does the replacement inside :func:`encode_text_deep`'s pass (removed afterwards).

    Args:
        embeds: ``[P, L, D]`` prompt embeddings (tokens ``1 .. n`` sit before every EOT).
        eot_index: ``[P]`` EOT positions.
        tokens: ``[P, n, D]`` one set of tokens per prompt.
        layer: the block (0-based) whose input takes them: ``0 .. depth - 1``.
        weight: the blend with the hidden states they replace (1 = replace).

    Returns:
        ``[P, E]`` unnormalised text features (differentiable w.r.t. ``embeds`` and ``tokens``).
    """
    transformer = _text_tower(backbone).transformer
    blocks = _blocks(transformer)
    n = tokens.shape[1]
    if not 0 <= layer < len(blocks):
        raise ModelError(f"class-aware tokens at text block {layer}: the tower has blocks 0 .. {len(blocks) - 1}")
    if int(eot_index.min()) <= n:
        raise ModelError("class-aware text tokens must sit before every EOT token")
    batch_first = getattr(transformer, "batch_first", True)

    def splice(_block: nn.Module, args: tuple) -> tuple:
        h = args[0] if batch_first else args[0].transpose(0, 1)  # [P, T, D]
        mid = weight * tokens.to(h.dtype) + (1.0 - weight) * h[:, 1:1 + n]
        h = torch.cat([h[:, :1], mid, h[:, 1 + n:]], dim=1)
        return (h if batch_first else h.transpose(0, 1), *args[1:])

    handle = blocks[layer].register_forward_pre_hook(splice)
    try:
        return encode_text_deep(backbone, embeds, eot_index, [], n_ctx=n)
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------- image
def check_vision_deep(backbone: Backbone) -> Any:
    """The ViT image tower of ``backbone``, or :class:`ModelError` if it cannot take prompt tokens."""
    visual: Any = getattr(getattr(backbone, "model", None), "visual", None)  # an open_clip model's image tower
    name = backbone.name
    kind = type(visual).__name__
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
    if not all(hasattr(visual, a) for a in needed) or not hasattr(visual.transformer, "resblocks"):
        raise ModelError(
            f"model '{name}': its image tower ({kind}) is not a vision transformer, so it cannot take "
            "learnable prompt tokens (vision / multi-modal deep prompts need a ViT image tower: e.g. "
            "ViT-B-16, not RN50 or ConvNeXt); use a ViT model, or a text-only method (coop, "
            "deep_language).")
    if getattr(visual, "attn_pool", None) is not None:
        raise ModelError(f"model '{name}': its ViT pools with attention (CoCa-style); deep vision prompts "
                         "need class-token pooling.")
    if getattr(visual, "pool_type", "tok") != "tok":
        raise ModelError(f"model '{name}': its ViT pools with '{visual.pool_type}'; deep vision prompts need "
                         "class-token pooling ('tok'), as in CLIP.")
    return visual


def vision_width(backbone: Backbone) -> int:
    """W: width of the ViT image tower's tokens (ModelError for other towers)."""
    return int(check_vision_deep(backbone).class_embedding.shape[-1])


def vision_depth(backbone: Backbone) -> int:
    """Number of blocks of the ViT image tower (ModelError for other towers)."""
    return len(_blocks(check_vision_deep(backbone).transformer))


def encode_image_deep(backbone: Backbone, images: Tensor, first: Tensor | None,
                      deep: Sequence[Tensor], after: BlockHook | None = None) -> Tensor:
    """Image features of a ViT with prompt tokens appended after the patch tokens.

    Args:
        backbone: an :class:`~vlprompt.backbones.openclip.OpenClipBackbone` with a ViT image tower.
        images: ``[B, 3, H, W]`` preprocessed images.
        first: ``[n, W]`` tokens appended at the input (before ``ln_pre``), or None (no prompts: the
            plain image feature).
        deep: replacement tokens of blocks 1, 2, ...: each ``[n, W]``.
        after: per-block hook (see :func:`_run_blocks`), also called as ``after(0, ln_pre, stem, ln_pre(stem))``
            after ``ln_pre``; None for none.

    Returns:
        ``[B, E]`` unnormalised image features (differentiable w.r.t. the prompts).
    """
    visual = check_vision_deep(backbone)
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(images.to(backbone.device, dtype))  # [B, W, g, g]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, N, W]
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # [B, 1 + N, W]
    x = visual.patch_dropout(x)  # identity: the frozen tower is always in eval mode
    n = 0
    if first is not None:
        n = first.shape[0]
        x = torch.cat([x, first.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
    elif deep:
        raise ValueError("deep vision prompts need input prompts (first)")
    x = visual.ln_pre(x) if after is None else after(0, visual.ln_pre, x, visual.ln_pre(x))

    def splice(h: Tensor, p: Tensor) -> Tensor:
        return torch.cat([h[:, : h.shape[1] - n], p], dim=1)

    x = _run_blocks(visual.transformer, x, None, deep, splice, after)
    pooled, _ = visual._pool(x)  # ln_post + class token (pool_type 'tok')
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled
