"""The published CoOp / CoCoOp training step, re-implemented as the authors' code runs it.

This module is the *reference* of ``benchmarks/bench_training_step.py`` and of
``tests/test_published_step.py``: the model code of KaiyangZhou/CoOp (commit ``ff61507c``) written
anew from reading its files, not copied, citing file and lines:

* ``clip/model.py`` (OpenAI's CLIP as vendored by CoOp): ``LayerNorm`` (fp32 cast, L153-159),
  ``QuickGELU`` (L162-164), ``ResidualAttentionBlock`` (``nn.MultiheadAttention`` in the
  sequence-first layout with an additive ``-inf`` causal mask, L167-188 and L324-330),
  ``Transformer`` (L191-199), ``VisionTransformer`` (L202-236), ``Bottleneck`` (L10-53),
  ``AttentionPool2d`` (L56-90), ``ModifiedResNet`` (L93-150), ``CLIP`` (L239-352) and
  ``build_model`` (architecture read off the state dict, L395-432);
* ``clip/clip.py`` ``tokenize`` (L185-221): ``[SOT] + BPE(text) + [EOT]`` zero-padded to 77;
* ``trainers/coop.py``: ``TextEncoder`` (L37-57), ``PromptLearner`` (L60-183; unified context,
  class token at the end), ``CustomCLIP`` (L185-208), ``forward_backward`` (L259-274);
* ``trainers/cocoop.py``: ``PromptLearner`` with the Meta-Net (L62-161), ``CustomCLIP`` with the
  image-by-image loop (L164-194), ``forward_backward`` (L248-267);
* KaiyangZhou/Dassl.pytorch ``dassl/engine/trainer.py`` ``model_backward_and_update``
  (L284-303: zero_grad, finite-loss check, backward, step) and ``dassl/config/defaults.py``
  (SGD momentum 0.9, weight decay 5e-4, L153-156), lr 0.002 (``configs/trainers/CoOp/*.yaml``).

What the published step does, and vlprompt's default does not: every prompt runs at the full 77
tokens, through ``nn.MultiheadAttention`` in the ``[L, N, D]`` layout; the image tower runs on the
batch in every step (the published pipeline augments every step, so it cannot cache features);
CoCoOp builds all ``B x n_cls`` prompts and runs one text pass per image.

The weights are the open_clip model's own (OpenAI-format models such as ``ViT-B-16-quickgelu`` and
``RN50-quickgelu`` use the same parameter names as ``clip/model.py``): :func:`from_backbone` loads
a vlprompt backbone's state dict into this code, sharing the tensors (no copy), so both paths
compute with the very same weights. Only fp32 is reproduced (``PREC: fp32``, ``clip_model.float()``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------- clip/model.py


class LayerNorm(nn.LayerNorm):
    """clip/model.py L153-159: the layer norm computes in fp32 and casts back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """clip/model.py L162-164: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """clip/model.py L167-188: pre-LN block; input ``[L, N, D]`` (sequence first)."""

    def __init__(self, width: int, heads: int, attn_mask: Tensor | None = None, act: type[nn.Module] = QuickGELU):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)  # batch_first=False, as published
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", act()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = LayerNorm(width)
        self.attn_mask = attn_mask  # a plain attribute (not a buffer), moved on every call (L182)

    def attention(self, x: Tensor) -> Tensor:
        if self.attn_mask is not None:
            self.attn_mask = self.attn_mask.to(dtype=x.dtype, device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=self.attn_mask)[0]

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """clip/model.py L191-199: a stack of blocks sharing one mask."""

    def __init__(self, width: int, layers: int, heads: int, attn_mask: Tensor | None = None,
                 act: type[nn.Module] = QuickGELU):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*(ResidualAttentionBlock(width, heads, attn_mask, act) for _ in range(layers)))

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """clip/model.py L202-236: patch conv, class token, ln_pre, transformer, ln_post on the class token, proj."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, act: type[nn.Module] = QuickGELU):
        super().__init__()
        self.input_resolution, self.output_dim = input_resolution, output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        grid = input_resolution // patch_size
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, act=act)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)  # [N, W, g, g]
        x = x.flatten(2).transpose(1, 2)  # [N, g*g, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)  # run sequence-first, as published
        x = self.ln_post(x[:, 0])
        return x @ self.proj


class Bottleneck(nn.Module):
    """clip/model.py L10-53: 1x1, 3x3, avgpool (stride > 1), 1x1 (x4); avgpool + 1x1 downsample."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class AttentionPool2d(nn.Module):
    """clip/model.py L56-90: QKV attention over [mean token, H*W positions]; returns the mean token's output."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(spacial_dim**2 + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).permute(2, 0, 1)  # [H*W, N, C]
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        out, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight, training=self.training, need_weights=False,
        )
        return out[0]


class ModifiedResNet(nn.Module):
    """clip/model.py L93-150: 3-conv stem + avgpool, four Bottleneck stages, attention pooling."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int, input_resolution: int,
                 width: int):
        super().__init__()
        self.output_dim, self.input_resolution = output_dim, input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        planes_in = width
        stages = []
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            blocks = [Bottleneck(planes_in, planes, stride=1 if i == 0 else 2)]
            planes_in = planes * Bottleneck.expansion
            blocks += [Bottleneck(planes_in, planes) for _ in range(1, n_blocks)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class CLIP(nn.Module):
    """clip/model.py L239-352 (the parts a training step uses): image tower, text transformer, temperature."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int | tuple[int, int, int, int],
                 vision_width: int, vision_patch_size: int | None, context_length: int, vocab_size: int,
                 transformer_width: int, transformer_heads: int, transformer_layers: int, vision_heads: int,
                 act: type[nn.Module] = QuickGELU):
        super().__init__()
        self.context_length = context_length
        if isinstance(vision_layers, tuple):
            self.visual: nn.Module = ModifiedResNet(vision_layers, embed_dim, vision_heads, image_resolution,
                                                    vision_width)
        else:
            assert vision_patch_size is not None
            self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                            vision_heads, embed_dim, act)
        # L324-330: additive mask, -inf above the diagonal
        mask = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, mask, act)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.zeros(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros([]))

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: Tensor) -> Tensor:
        return self.visual(image.to(self.dtype))


def _count_distinct(state: dict[str, Tensor], prefix: str, field: int) -> int:
    return len({k.split(".")[field] for k in state if k.startswith(prefix)})


def build_model(state: dict[str, Tensor], *, text_heads: int | None = None, vision_heads: int | None = None,
                act: type[nn.Module] = QuickGELU, share: bool = True) -> CLIP:
    """clip/model.py L395-432: the architecture read off the state dict, then the weights loaded.

    The head counts follow the published rule (text: width / 64, L417; ViT: width / 64, L268;
    ResNet: width * 32 / 64, L259) unless given: vlprompt's tiny test towers use narrower heads, and
    ``act`` is ``nn.GELU`` for them (the published code always uses QuickGELU). ``share=True`` loads
    with ``assign`` so the model uses the given tensors themselves (no second copy of the weights).
    """
    vit = "visual.proj" in state
    if vit:
        vision_width = state["visual.conv1.weight"].shape[0]
        vision_layers: int | tuple[int, int, int, int] = sum(
            1 for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight"))
        patch = state["visual.conv1.weight"].shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        resolution = patch * grid
        default_vision_heads = vision_width // 64
    else:
        counts = [_count_distinct(state, f"visual.layer{b}", 2) for b in (1, 2, 3, 4)]
        vision_layers = (counts[0], counts[1], counts[2], counts[3])
        vision_width = state["visual.layer1.0.conv1.weight"].shape[0]
        out_width = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        patch = None
        resolution = out_width * 32
        default_vision_heads = vision_width * 32 // 64
    width = state["ln_final.weight"].shape[0]
    model = CLIP(
        embed_dim=state["text_projection"].shape[1], image_resolution=resolution, vision_layers=vision_layers,
        vision_width=vision_width, vision_patch_size=patch, context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0], transformer_width=width,
        transformer_heads=text_heads or width // 64,
        transformer_layers=_count_distinct(state, "transformer.resblocks", 2),
        vision_heads=vision_heads or default_vision_heads, act=act,
    )
    model.load_state_dict(state, strict=True, assign=share)
    return model.eval()


def from_backbone(backbone: Any) -> CLIP:
    """The published CLIP code on the weights of a vlprompt ``OpenClipBackbone`` (shared, frozen, fp32).

    Head counts and activation are read from the open_clip model (they equal the published rule for
    the OpenAI architectures; the tiny test towers differ).
    """
    oc = backbone.model
    text_heads = oc.transformer.resblocks[0].attn.num_heads
    visual = oc.visual
    if hasattr(visual, "attnpool"):
        vision_heads = visual.attnpool.num_heads
    else:
        vision_heads = visual.transformer.resblocks[0].attn.num_heads
    act: type[nn.Module] = nn.GELU if isinstance(oc.transformer.resblocks[0].mlp.gelu, nn.GELU) else QuickGELU
    state = {k: v for k, v in oc.state_dict().items() if k != "attn_mask"}
    model = build_model(state, text_heads=text_heads, vision_heads=vision_heads, act=act)
    model.requires_grad_(False)  # trainers/coop.py L236-239: only the prompt learner is trained
    return model


def tokenize(backbone: Any, texts: list[str], context_length: int = 77) -> Tensor:
    """clip/clip.py L185-221: ``[SOT] + BPE(text) + [EOT]``, zero-padded to ``context_length`` (no truncation).

    The BPE is the backbone's (open_clip's ``SimpleTokenizer`` reads the same vocabulary file as CLIP's).
    """
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [backbone.sot_token_id, *backbone.encode_tokens(text), backbone.eot_token_id]
        if len(ids) > context_length:
            raise RuntimeError(f"Input {text} is too long for context length {context_length}")
        out[i, : len(ids)] = torch.tensor(ids)
    return out


# --------------------------------------------------------------------------- trainers/coop.py


class TextEncoder(nn.Module):
    """trainers/coop.py L37-57 (= cocoop.py L39-59): prompts + positions, transformer in [L, N, D], EOT feature."""

    def __init__(self, clip_model: CLIP):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts: Tensor, tokenized_prompts: Tensor) -> Tensor:
        x = prompts + self.positional_embedding.to(self.dtype)  # [N, 77, D]
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x).to(self.dtype)
        eot = tokenized_prompts.argmax(dim=-1)  # the EOT id is the largest token id
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection


class _Prompts(nn.Module):
    """What CoOp's and CoCoOp's ``PromptLearner.__init__`` share (coop.py L60-116, cocoop.py L62-121):
    context init (words or N(0, 0.02)), "X X ... X name." prompts tokenized at 77, frozen SOS / suffix
    embeddings."""

    def __init__(self, backbone: Any, clip_model: CLIP, classnames: list[str], n_ctx: int, ctx_init: str | None):
        super().__init__()
        dtype = clip_model.dtype
        ctx_dim = clip_model.ln_final.weight.shape[0]
        if ctx_init:
            ctx_init = ctx_init.replace("_", " ")
            n_ctx = len(ctx_init.split(" "))
            with torch.no_grad():
                emb = clip_model.token_embedding(tokenize(backbone, [ctx_init])).to(dtype)
            ctx = emb[0, 1 : 1 + n_ctx].clone()
            prompt_prefix = ctx_init
        else:
            ctx = torch.empty(n_ctx, ctx_dim, dtype=dtype)
            nn.init.normal_(ctx, std=0.02)
            prompt_prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx)
        names = [name.replace("_", " ") for name in classnames]
        self.tokenized_prompts = tokenize(backbone, [f"{prompt_prefix} {name}." for name in names])
        with torch.no_grad():
            emb = clip_model.token_embedding(self.tokenized_prompts).to(dtype)
        self.register_buffer("token_prefix", emb[:, :1].clone())  # SOS
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :].clone())  # class name, ".", EOT, padding
        self.n_cls, self.n_ctx = len(classnames), n_ctx


class CoOpPromptLearner(_Prompts):
    """trainers/coop.py L60-183, unified context, class token at the end (L118-132)."""

    def forward(self) -> Tensor:
        ctx = self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)  # [n_cls, 77, D]


class CoOpCustomCLIP(nn.Module):
    """trainers/coop.py L185-208: image tower every call, full text pass, cosine logits."""

    def __init__(self, backbone: Any, clip_model: CLIP, classnames: list[str], n_ctx: int = 16,
                 ctx_init: str | None = None):
        super().__init__()
        self.prompt_learner = CoOpPromptLearner(backbone, clip_model, classnames, n_ctx, ctx_init)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image: Tensor) -> Tensor:
        image_features = self.image_encoder(image.to(self.dtype))
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text_features.t()


# --------------------------------------------------------------------------- trainers/cocoop.py


class CoCoOpPromptLearner(_Prompts):
    """trainers/cocoop.py L62-161: context + Meta-Net bias, every image's prompts built for all classes."""

    def __init__(self, backbone: Any, clip_model: CLIP, classnames: list[str], n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a"):
        super().__init__(backbone, clip_model, classnames, n_ctx, ctx_init)
        vis_dim = clip_model.visual.output_dim
        ctx_dim = clip_model.ln_final.weight.shape[0]
        self.meta_net = nn.Sequential(OrderedDict([  # L95-99
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
        ]))

    def forward(self, im_features: Tensor) -> Tensor:
        bias = self.meta_net(im_features).unsqueeze(1)  # [B, 1, D]
        ctx_shifted = self.ctx.unsqueeze(0) + bias  # [B, M, D]
        prompts = []
        for ctx_i in ctx_shifted:  # L154-158: one [n_cls, 77, D] prompt tensor per image
            ctx_i = ctx_i.unsqueeze(0).expand(self.n_cls, -1, -1)
            prompts.append(torch.cat([self.token_prefix, ctx_i, self.token_suffix], dim=1))
        return torch.stack(prompts)  # [B, n_cls, 77, D]


class CoCoOpCustomCLIP(nn.Module):
    """trainers/cocoop.py L164-194: image tower, Meta-Net on normalised features, one text pass per image."""

    def __init__(self, backbone: Any, clip_model: CLIP, classnames: list[str], n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a"):
        super().__init__()
        self.prompt_learner = CoCoOpPromptLearner(backbone, clip_model, classnames, n_ctx, ctx_init)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image: Tensor, label: Tensor | None = None) -> Tensor:
        logit_scale = self.logit_scale.exp()
        image_features = self.image_encoder(image.to(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        prompts = self.prompt_learner(image_features)
        logits = []
        for pts_i, imf_i in zip(prompts, image_features):  # L184-188
            text_features = self.text_encoder(pts_i, self.tokenized_prompts)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            logits.append(logit_scale * imf_i @ text_features.t())
        out = torch.stack(logits)
        if self.prompt_learner.training and label is not None:
            return F.cross_entropy(out, label)  # L191-192
        return out


# --------------------------------------------------------------------------- the training step


def sgd(params: Any) -> torch.optim.SGD:
    """Dassl's SGD with CoOp's settings: lr 0.002, momentum 0.9, weight decay 5e-4, no dampening / nesterov."""
    return torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)


def _backward_and_update(loss: Tensor, optim: torch.optim.Optimizer) -> None:
    """dassl/engine/trainer.py L284-303: zero_grad, finite-loss check, backward, step."""
    optim.zero_grad()
    if not torch.isfinite(loss).all():
        raise FloatingPointError("Loss is infinite or NaN!")
    loss.backward()
    optim.step()


def coop_step(model: CoOpCustomCLIP, optim: torch.optim.Optimizer, image: Tensor, label: Tensor) -> Tensor:
    """trainers/coop.py L259-274 with ``PREC: fp32``: forward, cross-entropy, backward and update."""
    output = model(image)
    loss = F.cross_entropy(output, label)
    _backward_and_update(loss, optim)
    return loss.detach()


def cocoop_step(model: CoCoOpCustomCLIP, optim: torch.optim.Optimizer, image: Tensor, label: Tensor) -> Tensor:
    """trainers/cocoop.py L248-267 with ``PREC: fp32``: the model returns the loss in training mode."""
    loss = model(image, label)
    optim.zero_grad()
    loss.backward()
    optim.step()
    return loss.detach()
