"""Tip-Adapter: training-free adaptation of CLIP with a few-shot cache (Zhang et al., ECCV 2022).

The cache holds the few-shot training set: keys ``K [NK, E]`` are the L2-normalised mean of the raw
image features over ``augment_epoch`` randomly augmented passes (random resized crop, scale 0.5-1, and
flip), values ``V [NK, C]`` the one-hot labels (``utils.py`` ``build_cache_model`` l.38-62, transform
``main.py`` l.173-178). For a normalised test feature ``f`` (Eq. 6 of the paper)::

    A = f K^T                                     affinity [B, NK]
    logits = logit_scale * f W^T + alpha * exp(-beta (1 - A)) V

with ``W`` the frozen hand-crafted text classifier (``main.py`` l.39-42 with logit scale 100; here the
backbone's ``logit_scale``, which is 100 for OpenAI's CLIP). ``alpha`` and ``beta`` are searched on the
validation split over ``beta_i = 0.1 + i (S_b - 0.1) / N_b`` and ``alpha_j = 0.1 + j (S_a - 0.1) / N_a``
(``utils.py`` ``search_hp`` l.99-129: ``search_scale = [S_b, S_a]``, ``search_step = [N_b, N_a]``, first
best kept).

Tip-Adapter-F makes the keys a learned tensor initialised from the cache and trains them with the
cross-entropy of the logits above at the initial alpha, beta (``main.py`` ``run_tip_adapter_F``
l.66-106), then searches alpha, beta again with the trained keys (l.129-132). The reference keeps the
epoch with the best *test* accuracy (l.111-126); vlprompt keeps the last epoch (no test-set selection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.openclip import OpenClipBackbone
from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_bool, check_float, check_int
from vlprompt.methods.base import (
    FitData,
    MethodContext,
    PromptMethod,
    template_text_features,
)


def _pair(value: Any, name: str, kind: type) -> list:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"option method.{name} must be a list of two numbers [beta, alpha], got {value!r}")
    out = [kind(v) if not isinstance(v, bool) and isinstance(v, int | float) else None for v in value]
    if None in out or any(v <= 0 for v in out):
        raise ConfigError(f"option method.{name} must hold two positive numbers [beta, alpha], got {value!r}")
    return out


@dataclass
class TipAdapterConfig:
    """Tip-Adapter's options, named as in its ``configs/*.yaml`` (defaults: ``configs/imagenet.yaml``)."""

    init_beta: float = field(default=1.0, metadata={"help": "beta before / without the search (init_beta)"})
    init_alpha: float = field(default=1.17, metadata={"help": "alpha before / without the search (init_alpha)"})
    search_hp: bool = field(default=True, metadata={"help": "search alpha and beta on the validation split"})
    search_scale: list[float] = field(default_factory=lambda: [7.0, 3.0],
                                      metadata={"help": "[S_beta, S_alpha]: largest values searched"})
    search_step: list[int] = field(default_factory=lambda: [200, 20],
                                   metadata={"help": "[N_beta, N_alpha]: number of values searched"})
    augment_epoch: int = field(default=10, metadata={"help": "augmented passes over the few-shot set for the keys"})
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0],
                                    metadata={"help": "RandomResizedCrop scale of the cache's augmentation"})

    def __post_init__(self) -> None:
        check_float(self.init_beta, "method.init_beta", minimum=0.0)
        check_float(self.init_alpha, "method.init_alpha", minimum=0.0)
        check_bool(self.search_hp, "method.search_hp")
        self.search_scale = _pair(self.search_scale, "search_scale", float)
        steps = _pair(self.search_step, "search_step", float)
        if any(s != int(s) for s in steps):
            raise ConfigError(f"option method.search_step must hold two positive integers, got {self.search_step!r}")
        self.search_step = [int(s) for s in steps]
        check_int(self.augment_epoch, "method.augment_epoch", minimum=1)
        lo, hi = _pair(self.crop_scale, "crop_scale", float)
        if lo > hi or hi > 1:
            raise ConfigError(f"option method.crop_scale must be [low, high] with 0 < low <= high <= 1, "
                              f"got {self.crop_scale!r}")
        self.crop_scale = [lo, hi]


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter-F: the same options; the optimiser comes from the ``optim`` section (AdamW, lr 0.001)."""


def search_grid(scale: float, steps: int) -> list[float]:
    """``[0.1 + i (scale - 0.1) / steps for i < steps]`` (Tip-Adapter's ``search_hp``)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


@torch.no_grad()
def search_alpha_beta(clip_logits: Tensor, affinity: Tensor, values: Tensor, labels: Tensor,
                      scale: list[float], steps: list[int]) -> tuple[float, float, float]:
    """Best ``(beta, alpha, accuracy %)`` on a labelled set: ``clip_logits [N, C]``, ``affinity [N, NK]``,
    ``values [NK, C]``, ``labels [N]``; beta outer, alpha inner, the first best kept (``acc > best``)."""
    best, best_beta, best_alpha = -1, 0.0, 0.0
    n = labels.shape[0]
    for beta in search_grid(scale[0], steps[0]):
        cache = torch.exp(-beta * (1 - affinity)) @ values
        for alpha in search_grid(scale[1], steps[1]):
            correct = int(((clip_logits + alpha * cache).argmax(dim=-1) == labels).sum())
            if correct > best:
                best, best_beta, best_alpha = correct, beta, alpha
    return best_beta, best_alpha, 100.0 * max(best, 0) / n


class TipAdapter(PromptMethod):
    """Training-free cache model; :meth:`fit` builds the cache and searches alpha / beta.

    Fitted state (saved in the prompt file): ``cache_keys [NK, E]``, ``cache_labels [NK]``, ``alpha``,
    ``beta``. The cache is class-specific: the method predicts the classes it was fitted on.
    """

    method_name = "tip_adapter"
    learn_keys = False

    def __init__(self, backbone: OpenClipBackbone, classnames: list[str], config: TipAdapterConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        dim, dev = backbone.embed_dim, backbone.device
        keys = torch.zeros(0, dim, device=dev)  # empty until fitted (a loaded file gives its shape)
        if self.learn_keys:
            self.cache_keys = nn.Parameter(keys)
        else:
            self.register_buffer("cache_keys", keys)
        self.register_buffer("cache_labels", torch.zeros(0, dtype=torch.long, device=dev))
        self.register_buffer("alpha", torch.tensor(float(config.init_alpha), device=dev))
        self.register_buffer("beta", torch.tensor(float(config.init_beta), device=dev))
        clip = template_text_features(backbone, self.classnames, self.context.templates)
        self.register_buffer("classifier", clip, persistent=False)

    # ------------------------------------------------------------------ model
    @property
    def cache_values(self) -> Tensor:
        """One-hot labels of the cache ``[NK, n_cls]``."""
        return F.one_hot(self.cache_labels, self.n_cls).float()

    def text_features(self) -> Tensor:
        return self.classifier

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Zero-shot logits plus ``alpha`` x the cache's: ``[B, E] -> [B, n_cls]``."""
        if self.cache_keys.shape[0] == 0:
            raise RuntimeError("Tip-Adapter's cache is empty: fit the method first (vlprompt train)")
        f = F.normalize(image_features.float(), dim=-1)
        clip = super().logits(f, text_features)
        affinity = f @ self.cache_keys.float().t()  # [B, NK]
        cache = torch.exp(-self.beta * (1 - affinity)) @ self.cache_values
        return clip + self.alpha * cache

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def build_cache(self, data: FitData) -> None:
        """Keys: normalised mean over ``augment_epoch`` augmented views; values: the labels."""
        views, labels = data.augmented_features(self.config.augment_epoch, crop_scale=tuple(self.config.crop_scale))
        keys = F.normalize(views.float().mean(dim=0), dim=-1)  # [NK, E]
        if self.learn_keys:
            self.cache_keys = nn.Parameter(keys.to(self.backbone.device))
        else:
            self.cache_keys = keys.to(self.backbone.device)
        self.cache_labels = labels.to(self.backbone.device, torch.long)

    @torch.no_grad()
    def search(self, data: FitData) -> dict[str, Any]:
        """Search alpha / beta on the validation split (kept at their initial values without one)."""
        if not self.config.search_hp:
            return {"alpha": float(self.alpha), "beta": float(self.beta), "searched": False}
        feats, labels = data.features("val")
        if feats.shape[0] == 0:
            data.log("Tip-Adapter: no validation images, alpha / beta stay at init_alpha / init_beta")
            return {"alpha": float(self.alpha), "beta": float(self.beta), "searched": False}
        f = F.normalize(feats.float(), dim=-1)
        clip = PromptMethod.logits(self, f, self.classifier)
        affinity = f @ self.cache_keys.float().t()
        beta, alpha, acc = search_alpha_beta(clip, affinity, self.cache_values, labels.to(f.device),
                                             self.config.search_scale, self.config.search_step)
        self.alpha.fill_(alpha)
        self.beta.fill_(beta)
        return {"alpha": alpha, "beta": beta, "val_accuracy": acc, "searched": True}

    def fit(self, data: FitData) -> dict[str, Any]:
        self.build_cache(data)
        return {"cache_size": int(self.cache_keys.shape[0]), **self.search(data)}


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are learned (SGD on cross-entropy), then alpha / beta are searched."""

    method_name = "tip_adapter_f"
    learn_keys = True

    def fit(self, data: FitData) -> dict[str, Any]:
        self.build_cache(data)  # trained at init_alpha / init_beta; the search runs after training
        return {"cache_size": int(self.cache_keys.shape[0])}

    def after_training(self, data: FitData) -> dict[str, Any]:
        return self.search(data)
