"""Local (patch) features of open_clip image towers, for LoCoOp, GL-MCM and GalLoP.

See :meth:`vlprompt.backbones.openclip.OpenClipBackbone.local_features` for the definition.
:func:`packed_unprojected_global_local` gives the same features *before* the image tower's output projection
(``visual.proj``, :func:`image_projection`), for a method that learns a map there (GalLoP's ``local_proj``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.core.errors import ModelError

#: Feature-cache kind of :func:`packed_global_local` (LoCoOp training and GL-MCM scoring share the cache).
GLOBAL_LOCAL = "global+local"
#: Feature-cache kind of :func:`packed_unprojected_global_local` (GalLoP).
GLOBAL_LOCAL_UNPROJECTED = "global+local|unprojected"


def packed_global_local(backbone: Any, images: Tensor) -> Tensor:
    """Global and local features packed as one tensor ``[B, 1 + P, E]`` (global first, then the patches),
    so that they can be cached and batched like ordinary image features."""
    g, loc = backbone.local_features(images)
    return torch.cat([g.unsqueeze(1), loc], dim=1)


def packed_unprojected_global_local(backbone: Any, images: Tensor) -> Tensor:
    """:func:`packed_global_local` before the image tower's output projection: ``[B, 1 + P, W]``.

    ViT: ``ln_post`` of the class token (global) and of each patch's value path (local), ``W`` the tower's width,
    so that ``packed @ image_projection(backbone)`` is :func:`packed_global_local`. ModifiedResNet: its features are
    projected inside the attention pool (no separate projection): the same as :func:`packed_global_local`.
    Raises ModelError for a tower without local features (see :func:`local_features_unsupported`).
    """
    model = getattr(backbone, "model", None)
    if model is None or not hasattr(model, "visual"):
        why = backbone.local_features_unsupported() or "this backbone has no open_clip image tower"
        raise ModelError(why)
    visual_dtype = next(model.visual.parameters()).dtype
    with torch.no_grad():
        g, loc = capture_and_encode(model, images.to(backbone.device, visual_dtype), project=False)
    return torch.cat([g.unsqueeze(1), loc], dim=1)


def image_projection(backbone: Any) -> Tensor | None:
    """The image tower's output projection ``[W, E]`` (open_clip ViT ``visual.proj``), or None when its features
    need none (ModifiedResNet: projected in the attention pool)."""
    model = getattr(backbone, "model", None)
    visual = getattr(model, "visual", None)
    if visual is None:
        raise ModelError(backbone.local_features_unsupported() or "this backbone has no open_clip image tower")
    return getattr(visual, "proj", None) if _is_vit(visual) else None


def vit_value_path(block: Any, tokens: Tensor) -> Tensor:
    """A ``ResidualAttentionBlock`` with each token attending only to itself: ``[B, N, W] -> [B, N, W]``.

    ``x + ls_1(out_proj(W_v ln_1(x) + b_v))``, then the block's MLP residual.
    """
    attn: nn.MultiheadAttention = block.attn
    width = tokens.shape[-1]
    w_v = attn.in_proj_weight[2 * width :]
    b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(tokens), w_v, b_v)
    x = tokens + block.ls_1(attn.out_proj(v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def resnet_value_path(attnpool: Any, fmap: Tensor) -> Tensor:
    """Attention-pool value + output projections at every position: ``[B, C, H, W] -> [B, H*W, E]``."""
    x = fmap.flatten(2).transpose(1, 2)  # [B, HW, C]
    return attnpool.c_proj(attnpool.v_proj(x))


def _is_vit(visual: nn.Module) -> bool:
    return hasattr(visual, "transformer") and hasattr(visual, "class_embedding")


def local_features_unsupported(model: Any) -> str | None:
    """Why ``model``'s image tower has no local features, or None when it has them (see module doc)."""
    visual = model.visual
    if _is_vit(visual):
        block = visual.transformer.resblocks[-1]
        if not (hasattr(block, "attn") and isinstance(block.attn, nn.MultiheadAttention)):
            return "local features need a standard CLIP ViT block (nn.MultiheadAttention)"
        if getattr(visual, "attn_pool", None) is not None:
            return "local features are not defined for ViTs with an attention pool (CoCa)"
        return None
    if hasattr(visual, "attnpool"):
        return None
    return (f"local features are not defined for the image tower {type(visual).__name__} (timm towers: SigLIP, "
            "EVA, ConvNeXt, MobileCLIP's FastViT); use an open_clip ViT or ModifiedResNet model")


def capture_and_encode(model: Any, images: Tensor, *, project: bool = True) -> tuple[Tensor, Tensor]:
    """Run ``model.encode_image`` once, capturing the last block's input (ViT) or the feature map (ResNet).

    ``project=False`` (ViT): both features before ``visual.proj`` (open_clip applies it last, to the pooled
    token; it is set aside for this one forward), ``[B, W]`` and ``[B, P, W]``.
    """
    visual = model.visual
    captured: dict[str, Any] = {}

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["x"] = args[0] if args else kwargs.get("q_x", kwargs.get("x"))

    why = local_features_unsupported(model)
    if why is not None:
        raise ModelError(why)
    target = visual.transformer.resblocks[-1] if _is_vit(visual) else visual.attnpool
    handle = target.register_forward_pre_hook(grab, with_kwargs=True)
    proj = getattr(visual, "proj", None) if _is_vit(visual) else None
    if not project and proj is not None:
        visual.proj = None
    try:
        global_features = model.encode_image(images)
    finally:
        handle.remove()
        if not project and proj is not None:
            visual.proj = proj
    x = captured["x"]
    if _is_vit(visual):
        if not visual.transformer.batch_first:
            x = x.transpose(0, 1)
        n_prefix = x.shape[1] - visual.grid_size[0] * visual.grid_size[1]
        local = visual.ln_post(vit_value_path(target, x[:, n_prefix:]))
        if project and visual.proj is not None:
            local = local @ visual.proj
    else:
        local = resnet_value_path(target, x)
    return global_features, local

