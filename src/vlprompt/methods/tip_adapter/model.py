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
best kept; the best starts at accuracy 0 with ``beta = alpha = 0``, l.106-107, so when no grid point predicts
one validation image right the cache is switched off: ``alpha = 0``).

Tip-Adapter-F makes the keys a learned tensor initialised from the cache and trains them with the
cross-entropy of the logits above at the initial alpha, beta (``main.py`` ``run_tip_adapter_F``
l.66-106), then searches alpha, beta again with the trained keys (l.129-132). The reference keeps the
epoch with the best *test* accuracy (l.111-126); vlprompt keeps the last epoch (no test-set selection).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import (
    FitData,
    MethodContext,
    PromptMethod,
    template_text_features,
)
from vlprompt.methods.tip_adapter.config import TipAdapterConfig


def search_grid(scale: float, steps: int) -> list[float]:
    """``[0.1 + i (scale - 0.1) / steps for i < steps]`` (Tip-Adapter's ``search_hp``)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


@torch.no_grad()
def search_alpha_beta(clip_logits: Tensor, affinity: Tensor, values: Tensor, labels: Tensor,
                      scale: list[float], steps: list[int]) -> tuple[float, float, float]:
    """Best ``(beta, alpha, accuracy %)`` on a labelled set: ``clip_logits [N, C]``, ``affinity [N, NK]``,
    ``values [NK, C]``, ``labels [N]``; beta outer, alpha inner, the first best kept (``acc > best``). As the
    authors' ``search_hp`` (``utils.py`` l.106-107: ``best_acc = 0``, ``best_beta, best_alpha = 0, 0``), a grid
    where every point scores 0 gives ``(0, 0, 0)``: alpha 0, the cache off."""
    best, best_beta, best_alpha = 0, 0.0, 0.0
    n = labels.shape[0]
    for beta in search_grid(scale[0], steps[0]):
        cache = torch.exp(-beta * (1 - affinity)) @ values
        for alpha in search_grid(scale[1], steps[1]):
            correct = int(((clip_logits + alpha * cache).argmax(dim=-1) == labels).sum())
            if correct > best:
                best, best_beta, best_alpha = correct, beta, alpha
    return best_beta, best_alpha, 100.0 * best / n


def validation(data: FitData, who: str, otherwise: str) -> tuple[Tensor, Tensor] | None:
    """The validation split's normalised features ``[N, E]`` and labels ``[N]`` (None, logged, without one)."""
    feats, labels = data.features("val")
    if feats.shape[0] == 0:
        data.log(f"{who}: no validation images, {otherwise}")
        return None
    return F.normalize(feats.float(), dim=-1), labels.to(feats.device, torch.long)


class TipAdapter(PromptMethod):
    """Training-free cache model; :meth:`fit` builds the cache and searches alpha / beta.

    Fitted state (saved in the prompt file): ``cache_keys [NK, E]``, ``cache_labels [NK]``, ``alpha``,
    ``beta``. The cache is class-specific: the method predicts the classes it was fitted on.
    """

    cache_labels: Tensor  # buffers (register_buffer)
    alpha: Tensor
    beta: Tensor
    classifier: Tensor
    cache_keys: Tensor

    learn_keys = False

    def __init__(self, backbone: Backbone, classnames: list[str], config: TipAdapterConfig | Any,
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
        val = validation(data, "Tip-Adapter", "alpha / beta stay at init_alpha / init_beta")
        if val is None:
            return {"alpha": float(self.alpha), "beta": float(self.beta), "searched": False}
        f, labels = val
        clip = PromptMethod.logits(self, f, self.classifier)
        affinity = f @ self.cache_keys.float().t()
        beta, alpha, acc = search_alpha_beta(clip, affinity, self.cache_values, labels,
                                             self.config.search_scale, self.config.search_step)
        self.alpha.fill_(alpha)
        self.beta.fill_(beta)
        return {"alpha": alpha, "beta": beta, "val_accuracy": acc, "searched": True}

    def fit(self, data: FitData) -> dict[str, Any]:
        self.build_cache(data)
        return {"cache_size": int(self.cache_keys.shape[0]), **self.search(data)}


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are learned (SGD on cross-entropy), then alpha / beta are searched."""

    learn_keys = True

    def fit(self, data: FitData) -> dict[str, Any]:
        self.build_cache(data)  # trained at init_alpha / init_beta; the search runs after training
        return {"cache_size": int(self.cache_keys.shape[0])}

    def after_training(self, data: FitData) -> dict[str, Any]:
        return self.search(data)
