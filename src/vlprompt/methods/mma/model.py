"""MMA: Multi-Modal Adapter for vision-language models (Yang, Zhang, Wang, Xie; CVPR 2024).

Both towers stay frozen; at each adapted layer ``l`` (1-based block index, ``l = start .. end``: the higher blocks)
a bottleneck adapter whose middle projection is shared by the two towers adds to the block's output::

    a_l^T(h) = U_l^T S_l(D_l^T h),   a_l^V(h) = U_l^V S_l(D_l^V h)       # D: Linear(D|W -> r) + ReLU
                                                                         # S_l: Linear(r -> r) + ReLU, shared
                                                                         # U: Linear(r -> D|W)
    x_l = block_l(x_{l-1}) + alpha * a_l(ln_1^l(x_{l-1}))                # every token, both towers

with the block's own ``ln_1`` (ZjjConan/Multi-Modal-Adapter @ 547ee34, clip/model.py
``ModifiedResidualAttentionBlock.forward`` l.188-215). The adapter branch runs between two gradient-scale layers
(clip/gsl.py l.3-16: identity forward, gradient times a factor): its input's gradient is multiplied by ``alpha``
and its output's by ``1 / alpha`` (l.196, l.202), so the adapter's own parameters get the gradient of an unscaled
adapter while the forward pass adds ``alpha * a``. Layer ``0`` (only when ``adapter_start`` is 0) adapts the
inputs without gradient scaling: the text token embeddings, ``e + alpha * a_0^T(e)`` (trainers/mmadapter.py
l.139-146), and the image tokens after ``ln_pre``, ``ln_pre(x) + alpha * a_0^V(ln_pre(x))`` (clip/model.py
l.271-281).

The text side is the fixed prompt ``"{text_ctx_init} {class}."`` (mmadapter.py l.98-110, "a photo of a" for every
dataset), re-encoded through the adapted text tower at every training step; the classifier is CLIP's

    logits[b, c] = logit_scale * cos(f(x_b; a^V, S), g(t_c; a^T, S))      # [B, n_cls]

trained with cross-entropy (mmadapter.py l.184-207, l.265-279). Adapter weights start as Kaiming-normal
(fan_out, ReLU) with zero biases (l.113-137). The towers run block by block
(:mod:`vlprompt.backbones.deep_prompts`, with a per-block hook); the classes' prompts share their first tokens
("[SOS] a photo of a"), so the text pass is the exact shared-prefix one cut after the longest EOT
(:mod:`vlprompt.backbones.shared_prefix`: the adapters act on each token alone).

Differences from the reference: the reference builds a tower-specific adapter without ``down`` / ``up`` when the
tower's width equals ``adapter_dim`` and then fails on it (l.117-121 vs. clip/model.py l.198); here every tower
adapter is ``down`` + ``up``. Layer indices past a tower's depth are clamped to its last block (the reference
indexes past its list); a ResNet image tower is refused (:func:`~vlprompt.backbones.deep_prompts.check_vision_deep`).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import (
    check_vision_deep,
    encode_image_deep,
    encode_text_deep,
    encode_text_deep_shared,
    text_depth,
    vision_depth,
    vision_width,
)
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.mma.config import MMAConfig


class _GradientScale(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``scale`` backward (clip/gsl.py l.3-16)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def gradient_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` whose gradient is multiplied by ``scale`` on the way back."""
    return _GradientScale.apply(x, scale)


def adapted_layers(start: int, end: int, depth: int) -> list[int]:
    """Layers ``start .. end`` (1-based blocks; 0 = the input) of a tower of ``depth`` blocks, both clamped to it."""
    return list(range(min(start, depth), min(end, depth) + 1))


def _adapters(width: int, layers: list[int], dim: int, *, shared: bool = False) -> nn.ModuleDict:
    """One adapter per layer (named by the layer, as the reference's lists): ``down`` (Linear ``width -> dim`` +
    ReLU) and ``up`` (Linear ``dim -> width``), or for ``shared`` one Linear ``dim -> dim`` + ReLU; Kaiming-normal
    (fan_out, ReLU) weights, zero biases (mmadapter.py ``_build_adapter`` l.113-137)."""
    mods: dict[str, nn.Module] = {}
    for layer in layers:
        if shared:
            mods[str(layer)] = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        else:
            mods[str(layer)] = nn.Sequential(OrderedDict([
                ("down", nn.Sequential(nn.Linear(width, dim), nn.ReLU())), ("up", nn.Linear(dim, width))]))
    out = nn.ModuleDict(mods)
    for m in out.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0.0)
    return out


class MMA(PromptMethod):
    """Multi-modal adapters (``text_adapter``, ``visual_adapter``, ``shared_adapter``) in both towers (ViT only)."""

    token_prefix: Tensor  # buffers (register_buffer)
    token_suffix: Tensor
    eot_index: Tensor

    def __init__(self, backbone: Backbone, classnames: list[str], config: MMAConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        check_vision_deep(backbone)
        start, end, r = config.adapter_start, config.adapter_end, config.adapter_dim
        text_layers = adapted_layers(start, end, text_depth(backbone))
        vision_layers = adapted_layers(start, end, vision_depth(backbone))
        dev = backbone.device
        self.text_adapter = _adapters(backbone.text_width, text_layers, r).to(dev)
        self.visual_adapter = _adapters(vision_width(backbone), vision_layers, r).to(dev)
        self.shared_adapter = _adapters(r, sorted(set(text_layers) | set(vision_layers)), r, shared=True).to(dev)
        self.scale = float(config.adapter_scale)

        names = [name.replace("_", " ") for name in self.classnames]
        ids = backbone.tokenize([f"{config.text_ctx_init} {name}." for name in names], what="the prompt")
        eot = backbone.eot_index(ids)
        ids = ids[:, : int(eot.max()) + 1]  # cut after the longest EOT: exact under the causal mask
        same = (ids == ids[:1]).all(dim=0).long()
        prefix = min(int(same.cumprod(0).sum()), int(eot.min()))  # tokens shared by every prompt, before any EOT
        with torch.no_grad():
            emb = backbone.token_embedding(ids).float()
        self.n_prefix = prefix
        self.register_buffer("token_prefix", emb[:1, :prefix].clone(), persistent=False)  # [1, P, D]: SOS a photo..
        self.register_buffer("token_suffix", emb[:, prefix:].clone(), persistent=False)  # [C, S, D]: name . EOT
        self.register_buffer("eot_index", eot, persistent=False)

    # ------------------------------------------------------------------ adapters
    def _residual(self, adapter: Any, layer: int, h: Tensor) -> Tensor:
        """``alpha * U S_l D h`` (``h`` already normalised) for adapter ``adapter`` of layer ``layer``."""
        shared = self.shared_adapter[str(layer)]
        w = adapter.up.weight
        return adapter.up(shared(adapter.down(h.to(w.dtype)))) * self.scale

    def _after(self, adapters: nn.ModuleDict, layer: int, norm: nn.Module, x_in: Tensor, x_out: Tensor) -> Tensor:
        """The per-block hook: ``x_out + alpha * a_l(norm(x_in))`` at adapted layers (clip/model.py l.194-206;
        layer 0 = the image stem, l.271-281, without gradient scaling)."""
        key = str(layer)
        if key not in adapters:
            return x_out
        if layer == 0:
            return x_out + self._residual(adapters[key], 0, norm(x_in)).to(x_out.dtype)
        y = self._residual(adapters[key], layer, norm(gradient_scale(x_in, self.scale)))
        return x_out + gradient_scale(y, 1.0 / self.scale).to(x_out.dtype)

    def _text_input(self, emb: Tensor) -> Tensor:
        """Token embeddings ``[..., D]`` with the layer-0 text adapter, ``e + alpha * a_0^T(e)`` (mmadapter.py
        l.139-146), when layer 0 is adapted."""
        if "0" not in self.text_adapter:
            return emb
        return emb + self._residual(self.text_adapter["0"], 0, emb).to(emb.dtype)

    # ------------------------------------------------------------------ towers
    def text_features(self) -> Tensor:
        """``[n_cls, E]`` normalised features of the fixed prompts through the adapted text tower."""
        after = partial(self._after, self.text_adapter)
        prefix, suffix = self._text_input(self.token_prefix), self._text_input(self.token_suffix)
        p = self.n_prefix
        if p == 0:  # no token shared by every prompt (a tokenizer without SOS and an empty text_ctx_init)
            feats = encode_text_deep(self.backbone, suffix, self.eot_index, [], n_ctx=0, after=after)
        else:
            feats = encode_text_deep_shared(self.backbone, prefix[0, 1:], prefix[0, :1], suffix, self.eot_index - p,
                                            [], after)
        return F.normalize(feats.float(), dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, E]`` image features through the adapted ViT."""
        return encode_image_deep(self.backbone, images, None, [], after=partial(self._after, self.visual_adapter))
