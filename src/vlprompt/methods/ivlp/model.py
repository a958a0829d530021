"""IVLP: independent vision-language deep prompts (the baseline of Khattak et al., MaPLe, CVPR 2023),
with its two one-tower cases, VPT-deep (Jia et al., ECCV 2022; vision only) and deep language prompting.

Language prompts ``P_i [n_t, D]`` and vision prompts ``V_i [n_v, W]`` are learned independently for the
blocks ``i = 0 .. J-1`` of each tower (:mod:`vlprompt.backbones.deep_prompts`); the classifier is CLIP's

    logits[b, c] = logit_scale * cos(f(x_b; V), g(t_c; P))                  # [B, n_cls]

trained with cross-entropy. As in the reference (muzairkhattak/multimodal-prompt-learning,
clip/model.py ``ResidualAttentionBlock_IVLP`` lines 191-256, ``VisionTransformer`` lines 362-422), the
layer-0 tokens go into the input sequence and blocks 1 .. J-1 each own a fresh set of N(0, 0.02) tokens.
Without language prompts the text side is the fixed prompt "a photo of a {class}." (VPT,
trainers/vpt.py lines 67-86); without vision prompts the image tower is the frozen one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import (
    check_vision_deep,
    encode_image_deep,
    text_depth,
    vision_depth,
    vision_width,
)
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.ivlp.config import IVLPConfig
from vlprompt.methods.ivlp.prompt import DeepTextPrompt

#: The fixed text prompt of VPT (trainers/vpt.py line 73: prompt_prefix = "a photo of a").
VPT_TEXT_PREFIX = "a photo of a"


def _normal_list(count: int, n: int, dim: int, std: float, device: torch.device) -> nn.ParameterList:
    params = []
    for _ in range(count):
        p = torch.empty(n, dim)
        nn.init.normal_(p, std=std)
        params.append(nn.Parameter(p.to(device)))
    return nn.ParameterList(params)


def deep_vision_prompts(backbone: Backbone, n_ctx: int, depth: int, std: float
                        ) -> tuple[nn.Parameter, nn.ParameterList]:
    """IVLP's vision prompts of a ViT image tower: the layer-0 tokens ``[n_ctx, W]`` and one fresh set per block
    ``1 .. J-1`` (``J = min(depth, tower depth)``), all N(0, std) (clip/model.py lines 362-422), drawn in that
    order. A tower that cannot take them raises the documented ModelError (:func:`check_vision_deep`)."""
    check_vision_deep(backbone)
    width = vision_width(backbone)
    depth = min(depth, vision_depth(backbone))
    first = torch.empty(n_ctx, width)
    nn.init.normal_(first, std=std)
    return nn.Parameter(first.to(backbone.device)), _normal_list(depth - 1, n_ctx, width, std, backbone.device)


class IVLP(PromptMethod):
    """Deep prompts in the text tower (``text_prompt.ctx`` + ``text_deep``) and / or the ViT image tower
    (``vision_ctx`` + ``vision_deep``), learned independently."""

    fixed_text: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: IVLPConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        std, dev = config.init_std, backbone.device
        self.text_prompt: DeepTextPrompt | None = None
        if config.learns_text:
            self.text_prompt = DeepTextPrompt(backbone, self.classnames, n_ctx=config.n_ctx_text,
                                              ctx_init=config.ctx_init, init_std=std, option="method.n_ctx_text")
            depth = min(config.prompt_depth_text, text_depth(backbone))
            self.text_deep = _normal_list(depth - 1, config.n_ctx_text, backbone.text_width, std, dev)
        else:
            names = [n.replace("_", " ") for n in self.classnames]
            with torch.no_grad():
                ids = backbone.tokenize([f"{VPT_TEXT_PREFIX} {n}." for n in names], what="the prompt")
                fixed = F.normalize(backbone.encode_text(ids).float(), dim=-1)
            self.register_buffer("fixed_text", fixed, persistent=False)
        self.vision_ctx: nn.Parameter | None = None
        if config.learns_vision:
            self.vision_ctx, self.vision_deep = deep_vision_prompts(backbone, config.n_ctx_vision,
                                                                    config.prompt_depth_vision, std)

    def text_features(self) -> Tensor:
        """``[n_cls, E]`` normalised text features (deep language prompts, or the fixed VPT prompt)."""
        tp = self.text_prompt
        if tp is None:
            return self.fixed_text
        feats = tp.encode(self.backbone, list(self.text_deep))
        return F.normalize(feats.float(), dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, E]`` image features through the prompted ViT (frozen tower without vision prompts)."""
        if self.vision_ctx is None:
            return self.backbone.encode_image(images)
        return encode_image_deep(self.backbone, images, self.vision_ctx, list(self.vision_deep))


class VPTDeep(IVLP):
    """VPT-deep: vision prompts only, with CLIP's fixed text prompt."""



class DeepLanguage(IVLP):
    """Deep language prompting: text prompts only, frozen image tower."""

