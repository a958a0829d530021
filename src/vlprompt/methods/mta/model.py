"""MTA: MeanShift for test-time augmentation (Zanella, Ben Ayed; "On the test-time zero-shot generalization of
vision-language models: do we really need prompt learning?", CVPR 2024).

MaxZanella/MTA ``mta.py`` lines 10-87 (``solve_mta``). For one test image with views ``[V, 3, H, W]``
(``views[0]`` the original; ``main.py`` lines 165-173: 63 augmented views + the original, 64 in all, random
resized crops and flips: AugMix only with ``--tpt``), image features ``x [V, E]`` and class text features
``t [n_cls, E]`` (normalised, ``clip/custom_clip.py`` lines 310-319):

1. ``logits = logit_scale x t^T`` ``[V, n_cls]`` (l.15); the affinity of two views is the inner product of
   their predictions, ``A = softmax(logits / T) softmax(logits / T)^T`` ``[V, V]`` (l.33, ``T`` =
   ``temperature``);
2. each view's kernel bandwidth ``h_i = sqrt(0.5 mean_j d_ij^2)`` over its ``k = int(0.3 (V - 1))`` nearest
   other views (l.24-30); the kernel ``K_i(m) = exp(-||x_i - m||^2 / (2 h_i^2))`` (l.4-7);
3. inlierness scores ``y`` start uniform (``1 / V``, l.36), the mode at the original view's feature (l.39);
4. ``max_iter`` times (l.46-84): the inlierness step, up to ``max_iter`` updates
   ``y = softmax((K(m) + lambda_q A y) / lambda_y)`` stopping when ``||y - y_old|| < th`` (l.52-63), then
   the mode step, up to ``max_iter`` weighted mean-shift updates ``m = sum_i K_i(m) y_i x_i / sum_i K_i(m)
   y_i``, renormalised, stopping when ``||m - m_old|| < th`` (l.69-80);
5. the prediction: ``logit_scale m t^T`` (l.86).

Nothing is learned, nothing is reset (no state crosses images); a test image costs ``V`` image forwards, no
text pass (the class text features are computed once for the stream; the authors' loop re-encodes the
unchanged prompt for every image, ``main.py`` l.280) and no backward; the mode-seeking iterations work on the
``V x E`` features only.

vlprompt computes in fp32 (the authors: fp16 features under autocast, l.12-15), and the pairwise distances
directly: the authors' ``torch.cdist`` (l.25) takes its matrix-product shortcut ``sqrt(|a|^2 + |b|^2 - 2 a.b)``
above 25 views (64 by default), whose cancellation error (~1e-3 of a unit feature's norm in fp32, far more
in fp16) leaves a view's distance to itself non-zero and can exceed the distances between near-identical
views; the formula (and the comment of l.28, "exclude the distance to the point itself") means the exact
Euclidean distance, which is what is computed here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import Adapted
from vlprompt.methods.view_features import ViewFeatureMethod


def _kernel(mode: Tensor, bandwidth: Tensor, points: Tensor) -> Tensor:
    """``gaussian_kernel`` (mta.py l.4-7): ``exp(-||x_i - m||^2 / (2 h_i^2))`` ``[V]``."""
    dist = torch.norm(points - mode, dim=-1, p=2)
    return torch.exp(-dist**2 / (2 * bandwidth**2))


def mta_mode(features: Tensor, logits: Tensor, *, lambda_y: float = 0.2, lambda_q: float = 4.0, max_iter: int = 5,
             temperature: float = 1.0, th: float = 1e-6, bandwidth_neighbours: float = 0.3) -> Tensor:
    """The mode ``[E]`` (unit norm) of the views' features by MeanShift with inlierness scores (mta.py l.10-84).

    Args:
        features: ``[V, E]`` L2-normalised image features of the views, row 0 the original.
        logits: ``[V, n_cls]`` the views' CLIP logits (``logit_scale * cos``), for the affinity.
        lambda_y, lambda_q, max_iter, temperature, th, bandwidth_neighbours: see :class:`~vlprompt.methods.mta.
            config.MTAConfig` (the authors' defaults).
    """
    n_views = features.shape[0]
    k = int(bandwidth_neighbours * (n_views - 1))  # l.27
    if k < 1:
        raise ConfigError(f"MTA sets each view's bandwidth from its int({bandwidth_neighbours} * (V - 1)) nearest "
                          f"views: 0 with V = {n_views} views; give more test-time views")
    dist = torch.cdist(features, features, compute_mode="donot_use_mm_for_euclid_dist")  # l.25-30, see above
    nearest = torch.sort(dist, dim=1).values[:, 1 : k + 1] ** 2  # without the distance to itself
    bandwidth = torch.sqrt(0.5 * nearest.mean(dim=1))  # [V]
    probs = (logits / temperature).softmax(1)
    affinity = probs @ probs.t()  # l.33
    y = torch.ones(n_views, device=features.device, dtype=features.dtype) / n_views  # l.36
    mode = features[0]  # l.39
    for _ in range(max_iter):  # l.46, l.82-84
        density = _kernel(mode, bandwidth, features)
        for _ in range(max_iter):  # inlierness step, l.54-63
            old_y = y
            y = torch.softmax(1 / lambda_y * (density + lambda_q * torch.sum(affinity * y.unsqueeze(0), dim=1)), dim=-1)
            if torch.norm(old_y - y) < th:
                break
        for _ in range(max_iter):  # mode step, l.69-80
            old_mode = mode
            weights = _kernel(mode, bandwidth, features) * y
            mode = torch.sum(weights.unsqueeze(1) * features, dim=0) / torch.sum(weights)
            mode = mode / mode.norm(p=2, dim=-1)
            if torch.norm(old_mode - mode) < th:
                break
    return mode


class MTA(ViewFeatureMethod):
    """MeanShift mode of the views' embeddings, weighted by inlierness scores (see the module docstring)."""

    def adapt_and_predict(self, views: Tensor) -> Adapted:
        """``views [V, 3, H, W] -> Adapted(logit_scale * cos(mode, t_c) [n_cls], cost)``."""
        cfg = self.config
        with torch.no_grad():
            feats = self.view_features(views)  # [V, E]
            txt, text_passes = self.class_features(feats)  # [n_cls, E]
            mode = mta_mode(feats, self.scaled(feats @ txt.t()), lambda_y=cfg.lambda_y, lambda_q=cfg.lambda_q,
                            max_iter=cfg.max_iter, temperature=cfg.temperature, th=cfg.th,
                            bandwidth_neighbours=cfg.bandwidth_neighbours)
            logits = self.scaled(mode @ txt.t())  # l.86
        return Adapted(logits, {"image_forward": int(views.shape[0]), "text_forward": text_passes, "backward": 0})
