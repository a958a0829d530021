"""GDA: a Gaussian discriminant analysis classifier on few-shot CLIP features, ensembled with zero-shot CLIP
(Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024).

Reference: mrflogs/ICLR24@560fe21 ``main_few_shots.py`` ``run`` (l.38-83). The few-shot set is encoded
``augment_epoch`` times with random augmentation (RandomResizedCrop scale (0.5, 1) + flip, l.24-29), every
view L2-normalised and kept as one sample (l.43-53): ``x [M, E]``, ``M = augment_epoch x N``. Then (l.55-64)::

    mu_c   = mean of the class-c samples                                   [C, E]   (l.56)
    Z      = x - mu_{y}  (each sample minus its class mean)                [M, E]   (l.59)
    Sigma  = torch.cov(Z^T)  (unbiased)                                    [E, E]
    P      = E * pinv((M - 1) Sigma + trace(Sigma) I)                      [E, E]   (l.60, "KS estimator")
    W      = mu P                   b = log(1 / C) - 1/2 diag(mu P mu^T)            (l.62-64)
    logits = 100 f t^T + alpha (f W^T + b)                                           (l.71, l.80)

with ``f`` the normalised test feature and ``t`` the normalised template classifier; ``alpha`` is searched on
the validation split over ``alpha_list`` (l.68-77: first best, ``acc > best`` from 0, else ``init_alpha``).

In scikit-learn's terms: with ``S = Z^T Z`` the within-class scatter (``= (M - 1) Sigma``), ``P^{-1} = (S +
trace(S) / (M - 1) I) / E``; scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=lam,
priors=uniform)`` on balanced classes uses ``Sigma_sk = (1 - lam) S / M + lam trace(S) / (M E) I``, which for
``lam = E / (M - 1 + E)`` is ``P^{-1} / c`` with ``c = M (M - 1 + E) / ((M - 1) E)``. So GDA is shrinkage LDA
with that ``lam`` and its covariance scaled by ``c``: ``W = W_sk / c``, ``b - log(1/C) = (b_sk - log(1/C)) / c``
(tests/test_gda.py checks this). The estimator is computed in float64 here (fp32 in the reference).

Deviations (docs/methods.md, "GDA"): ``100`` is the backbone's logit scale (100 for OpenAI's CLIP); on ImageNet
the reference searches alpha on the test set (l.137), vlprompt on the few-shot validation split.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import DataError
from vlprompt.methods.ape.model import full_precision
from vlprompt.methods.base import FitData, MethodContext, PromptMethod, template_text_features
from vlprompt.methods.gda.config import GdaConfig
from vlprompt.methods.tip_adapter.model import validation


@torch.no_grad()
def gda_estimate(x: Tensor, y: Tensor, n_cls: int) -> tuple[Tensor, Tensor]:
    """GDA's linear classifier from samples ``x [M, E]`` of classes ``y [M]``: ``W [C, E]``, ``b [C]`` (float64),
    as ``main_few_shots.py`` l.55-64 computes them (see the module doc)."""
    xd, y = x.double(), y.to(x.device)
    counts = torch.bincount(y, minlength=n_cls)
    if bool((counts == 0).any()):
        missing = [int(c) for c in torch.nonzero(counts == 0).flatten()[:5]]
        raise DataError(f"GDA needs training images of every class; none for class index(es) {missing}")
    mus = xd.new_zeros(n_cls, xd.shape[1]).index_add_(0, y, xd) / counts.unsqueeze(1).to(xd)
    centered = xd - mus[y]
    cov = torch.cov(centered.t())  # center_vecs.T.cov()
    dim = xd.shape[1]
    eye = torch.eye(dim, dtype=xd.dtype, device=xd.device)
    precision = dim * torch.linalg.pinv((xd.shape[0] - 1) * cov + cov.trace() * eye, hermitian=True)
    weight = mus @ precision
    bias = math.log(1.0 / n_cls) - 0.5 * (weight * mus).sum(dim=1)
    return weight, bias


class Gda(PromptMethod):
    """GDA + zero-shot; :meth:`fit` estimates the classifier and searches alpha. Fitted state (prompt file):
    ``weight [C, E]``, ``bias [C]``, ``alpha``. Class-specific."""

    weight: Tensor  # buffers (register_buffer)
    bias: Tensor
    alpha: Tensor
    classifier: Tensor

    config: GdaConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: GdaConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        dim, dev = backbone.embed_dim, backbone.device
        self.register_buffer("weight", torch.zeros(0, dim, device=dev))  # empty until fitted
        self.register_buffer("bias", torch.zeros(0, device=dev))
        self.register_buffer("alpha", torch.tensor(float(config.init_alpha), device=dev))
        clip = template_text_features(backbone, self.classnames, self.context.templates)
        self.register_buffer("classifier", clip, persistent=False)

    def text_features(self) -> Tensor:
        return self.classifier

    def gda_logits(self, f: Tensor) -> Tensor:
        """``f W^T + b``: normalised features ``[B, E]`` -> ``[B, n_cls]``."""
        return f @ self.weight.float().t() + self.bias.float()

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Zero-shot logits plus ``alpha`` x GDA's (``main_few_shots.py`` l.80): ``[B, E] -> [B, n_cls]``."""
        if self.weight.shape[0] == 0:
            raise RuntimeError("GDA is not fitted: fit the method first (vlprompt train)")
        with full_precision(image_features.device):
            f = F.normalize(image_features.float(), dim=-1)
            return super().logits(f, text_features) + self.alpha * self.gda_logits(f)

    @torch.no_grad()
    def fit(self, data: FitData) -> dict[str, Any]:
        cfg = self.config
        lo, hi = cfg.crop_scale
        views, labels = data.augmented_features(cfg.augment_epoch, crop_scale=(lo, hi))  # run's precision
        val = validation(data, "GDA", "alpha stays at init_alpha") if cfg.alpha_list else None
        with full_precision(views.device):
            x = F.normalize(views.float(), dim=-1).reshape(-1, views.shape[-1])  # [V * N, E] (l.49)
            y = labels.to(x.device, torch.long).repeat(views.shape[0])
            weight, bias = gda_estimate(x, y, self.n_cls)
            dev = self.classifier.device
            self.weight = weight.to(dev, torch.float32)
            self.bias = bias.to(dev, torch.float32)
            return {"samples": int(x.shape[0]), **self.search(val)}

    @torch.no_grad()
    def search(self, val: tuple[Tensor, Tensor] | None) -> dict[str, Any]:
        """alpha on normalised validation features and labels (``main_few_shots.py`` l.66-79); None keeps it."""
        if val is None:
            return {"alpha": float(self.alpha), "searched": False}
        f, labels = val
        clip, gda = PromptMethod.logits(self, f, self.classifier), self.gda_logits(f)
        best, best_alpha = 0, float(self.config.init_alpha)
        for alpha in self.config.alpha_list:
            correct = int(((clip + alpha * gda).argmax(dim=-1) == labels).sum())
            if correct > best:
                best, best_alpha = correct, float(alpha)
        self.alpha.fill_(best_alpha)
        return {"alpha": best_alpha, "val_accuracy": 100.0 * best / labels.shape[0], "searched": True}


__all__ = ["Gda", "gda_estimate"]
