"""TDA: training-free dynamic adapter (Karmanov, Guan, Lu, El Saddik, Xing; "Efficient Test-Time Adaptation of
Vision-Language Models", CVPR 2024; kdiAAA/TDA).

kdiAAA/TDA ``tda_runner.py`` ``run_test_tda`` l.67-103 with ``update_cache`` l.29-40, ``compute_cache_logits``
l.43-65, and ``utils.py`` ``get_clip_logits`` l.64-91, ``get_entropy`` l.19-21. For each test image, in stream
order, with its views' L2-normalised image features ``x [V, E]`` and the class text features ``t [n_cls, E]``
(``clip_classifier``, utils.py l.44-61: the template ensemble; here :class:`~vlprompt.methods.view_features.
ViewFeatureMethod`'s classifier):

1. ``l = logit_scale x t^T`` ``[V, n_cls]`` (utils.py l.74, ``100.`` = CLIP's logit scale); with one view
   (l.104-107 of the else branch, l.86-89): the feature ``f = x_0``, logits ``l_0``, entropy ``H = -sum p log p``
   of ``p = softmax(l_0)``, prob map ``p``, prediction ``argmax l_0``; with ``V > 1`` views (l.76-85): the
   ``int(0.1 V)`` views of lowest entropy (6 of 64; every view competes, the original included), ``f`` = the
   mean of their features (not re-normalised), logits = the mean of their logits, ``H`` = the entropy of the
   mean of their softmax (``avg_entropy`` l.28-33), prob map = that mean, prediction = argmax of the mean logits;
2. the normalised entropy ``H / log2(n_cls)`` (``get_entropy`` l.19-21: an entropy in nats over the maximum in
   bits, as the authors compute it);
3. positive cache: ``(f, H)`` inserted in the prediction's class (``update_cache`` l.29-40: entropy-sorted, at most
   ``shot_capacity`` per class, replace the worst when strictly better; tda_runner.py l.83-84);
4. negative cache: the same with the prob map, only when ``lower < H / log2(n_cls) < upper`` (l.86-87);
5. logits ``l + alpha_p A_p(f) - alpha_n A_n(f)`` (l.89-93) with ``A_p(f)[c] = sum_{k in class c}
   exp(-beta_p (1 - f k))`` and ``A_n(f) = sum_k exp(-beta_n (1 - f k)) [lower_m < p_k < upper_m]``, ``p_k`` the
   entry's prob map (``compute_cache_logits`` l.43-65).

The caches are :class:`~vlprompt.methods.tda.cache.ClassCache` tensors (vectorised: one class row touched per
insertion, one masked matrix product per cache for the logits), not the authors' dict of lists; they hold the
same entries in the same order (tests/test_tda.py checks it after every image against a dict-of-lists
re-implementation). The state carried across the stream is the two caches (:meth:`TDA.adaptation_state`);
:meth:`TDA.reset_adaptation` empties them.

Views (utils.py ``build_test_data_loader`` l.127-144): on ImageNet itself the original image alone (l.128-130:
CLIP's preprocess); on ImageNet-A / -V2 / -R / -Sketch the original + 63 AugMix views (l.132-135,
``get_ood_preprocess`` l.94-105: ``AugMixAugmenter(..., n_views=63, augmix=True)``); on the 10 cross-dataset
targets the original alone (l.137-139). Here: :meth:`TDA.test_time_views` asks for AugMix and
:meth:`TDA.test_time_view_count` for 64 views on the datasets registered with crops (vlprompt's ImageNet
variants) other than ``imagenet``, 1 elsewhere.

Where vlprompt differs from the repository's code, and why:

* fp32 throughout (the authors: CLIP in fp16 on the GPU, ``.cuda().half()`` values at l.59 and l.61);
* the logit scale is the backbone's (``logit_scale``, + ``logit_bias`` for SigLIP-style towers), which is the
  authors' constant ``100.`` for OpenAI's CLIP;
* the confident views are ordered by a stable sort (the authors' ``torch.argsort`` is not stable): only views
  of exactly equal entropy can differ;
* with ``2 <= V < 10`` views ``int(0.1 V)`` is 0 and the authors' mean over no view is NaN: refused here
  (``ConfigError``) instead;
* cache logits are summed in slot order, the authors' over the classes in sorted order (l.48): the same sums,
  added in another order (float rounding only).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import Adapted, MethodContext
from vlprompt.methods.tda.cache import ClassCache, Policy
from vlprompt.methods.view_entropy import average_prediction_entropy, select_confident_views, softmax_entropy
from vlprompt.methods.view_features import ViewFeatureMethod

#: The fraction of the views kept as confident (utils.py l.78; BoostAdapter runner.py l.140).
CONFIDENT_FRACTION = 0.1
#: The views TDA adapts on for the ImageNet variants: the original + 63 AugMix views (utils.py l.103).
TDA_VIEWS = 64
#: vlprompt's name of ImageNet itself, where TDA and BoostAdapter see the original only (utils.py l.128-130).
IMAGENET = "imagenet"


class Summary(NamedTuple):
    """What ``get_clip_logits`` (utils.py l.64-91) returns for one test image."""

    feature: Tensor  #: ``[E]`` the cached / queried image feature
    logits: Tensor  #: ``[n_cls]`` the zero-shot logits
    entropy: float  #: ``loss``: the entropy (nats) of the prediction
    prob_map: Tensor  #: ``[n_cls]`` the probabilities (the negative cache's payload)
    pred: int  #: the predicted class


def summarise(features: Tensor, logits: Tensor, *, original_only: bool = False) -> Summary:
    """``get_clip_logits`` (utils.py l.64-91) from the views' features ``[V, E]`` and logits ``[V, n_cls]``: the
    original alone (``V == 1``, or ``original_only``: BoostAdapter's ``infer_ori_image``, its utils.py l.89-93),
    else the mean over the ``int(0.1 V)`` views of lowest entropy."""
    n_views = features.shape[0]
    if n_views == 1 or original_only:
        lg = logits[0]
        return Summary(features[0], lg, float(softmax_entropy(lg)), lg.softmax(-1), int(lg.argmax()))
    keep = int(n_views * CONFIDENT_FRACTION)
    if keep < 1:
        raise ConfigError(f"TDA averages the int(0.1 V) most confident views: none with V = {n_views} views (the "
                          "authors' code gives NaN); give 1 view or at least 10 (--views)")
    idx = select_confident_views(logits, CONFIDENT_FRACTION)
    out = logits[idx]
    mean_logits = out.mean(0)
    return Summary(features[idx].mean(0), mean_logits, float(average_prediction_entropy(out)), out.softmax(-1).mean(0),
                   int(mean_logits.argmax()))


class TDA(ViewFeatureMethod):
    """Positive and negative caches of confident test features over the stream (see the module docstring)."""

    #: the negative cache's insertion policy (TDA: entropy-sorted like the positive one, tda_runner.py l.87)
    negative_policy: Policy = "entropy"

    def __init__(self, backbone: Backbone, classnames: list[str], config: Any,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self._pos: ClassCache | None = None
        self._neg: ClassCache | None = None

    # ------------------------------------------------------------------ views
    def test_time_views(self, dataset_views: str) -> str:
        """AugMix (utils.py l.103, ``augmix=True``), on the ImageNet variants; elsewhere the original alone."""
        return "augmix"

    def test_time_view_count(self, dataset_views: str) -> int | None:
        """64 on the datasets registered with crops (the ImageNet variants) except ImageNet itself, 1 elsewhere
        (utils.py l.127-139)."""
        return TDA_VIEWS if dataset_views == "crop" and self.context.dataset != IMAGENET else 1

    # ------------------------------------------------------------------ state
    def _caches(self, dim: int, device: torch.device) -> tuple[ClassCache, ClassCache]:
        if self._pos is None or self._neg is None or self._pos.dim != dim:
            self._pos, self._neg = self._new_caches(dim, device)
        elif self._pos.device != device:  # a resumed state loaded elsewhere
            self._pos.to(device)
            self._neg.to(device)
        return self._pos, self._neg

    def _new_caches(self, dim: int, device: torch.device) -> tuple[ClassCache, ClassCache]:
        pos_cfg, neg_cfg = self.config.positive, self.config.negative
        pos = ClassCache(self.n_cls, pos_cfg["shot_capacity"], dim, device=device)
        neg = ClassCache(self.n_cls, neg_cfg["shot_capacity"], dim, payload_dim=self.n_cls,
                         policy=self.negative_policy, device=device)
        lower, upper = neg_cfg["mask_threshold"]["lower"], neg_cfg["mask_threshold"]["upper"]
        neg.value_fn = lambda p: ((p > lower) & (p < upper)).to(p.dtype)  # tda_runner.py l.59
        return pos, neg

    def _feature_dim(self) -> int:
        return int(self.classifier.shape[-1])

    def reset_adaptation(self) -> None:
        """Empty both caches (``pos_cache, neg_cache = {}, {}``, tda_runner.py l.69)."""
        self._pos = self._neg = None

    def adaptation_size(self) -> int:
        """Entries in the positive + negative caches."""
        return sum(c.size() for c in (self._pos, self._neg) if c is not None)

    def adaptation_state(self) -> dict[str, Tensor]:
        """Both caches, compact: ``positive.classes [N]``, ``positive.keys [N, E]``, ``positive.entropy [N]``, and the
        same for ``negative.`` with ``negative.payload [N, n_cls]`` (the prob maps), in class then slot order."""
        if self._pos is None or self._neg is None:
            return {}
        return {**self._pos.state("positive."), **self._neg.state("negative.")}

    def load_adaptation_state(self, state: dict[str, Tensor]) -> None:
        """Refill both caches from :meth:`adaptation_state` (``{}``: empty caches)."""
        if not state:
            self.reset_adaptation()
            return
        unknown = sorted(k for k in state if not k.startswith(("positive.", "negative.")))
        if unknown:
            raise ValueError(f"method '{self.method_name}' does not know the state entries {unknown}")
        pos, neg = self._new_caches(self._feature_dim(), self.classifier.device)
        pos.load_state(state, "positive.")
        neg.load_state(state, "negative.")
        self._pos, self._neg = pos, neg

    def cache_entries(self) -> dict[str, dict[int, list[tuple[Tensor, float, Tensor | None]]]]:
        """``{"positive"|"negative": {class: [(key, entropy, prob map or None), ...]}}``, the authors' dict-of-lists
        view of the caches (classes with entries only)."""
        out: dict[str, dict[int, list[tuple[Tensor, float, Tensor | None]]]] = {"positive": {}, "negative": {}}
        for name, cache in (("positive", self._pos), ("negative", self._neg)):
            if cache is not None:
                out[name] = {c: cache.entries(c) for c in range(self.n_cls) if cache.rows(c)}
        return out

    # ------------------------------------------------------------------ one test image
    def _update(self, s: Summary, pos: ClassCache, neg: ClassCache) -> None:
        """tda_runner.py l.83-87: the positive cache always, the negative one inside the entropy gate."""
        pos_cfg, neg_cfg = self.config.positive, self.config.negative
        if pos_cfg["enabled"]:
            pos.insert(s.pred, s.feature, s.entropy)
        gate = neg_cfg["entropy_threshold"]
        normalised = s.entropy / math.log2(self.n_cls)  # get_entropy, utils.py l.19-21
        if neg_cfg["enabled"] and gate["lower"] < normalised < gate["upper"]:
            neg.insert(s.pred, s.feature, s.entropy, s.prob_map)

    def _negative_logits(self, s: Summary, neg: ClassCache) -> Tensor:
        cfg = self.config.negative
        if not cfg["enabled"]:
            return torch.zeros_like(s.logits)
        return neg.value_logits(s.feature, cfg["alpha"], cfg["beta"])

    def adapt_features(self, feats: Tensor, text: Tensor | None = None) -> Tensor:
        """One test image on its views' normalised features ``feats [V, E]`` (row 0 the original) against the class
        text features ``text [n_cls, E]`` (default: the classifier): updates the caches, returns the logits
        ``[n_cls]`` (zero-shot + positive - negative cache logits)."""
        with torch.no_grad():
            txt = self.classifier.float() if text is None else text
            s = summarise(feats, self.scaled(feats @ txt.t()))
            pos, neg = self._caches(feats.shape[-1], feats.device)
            self._update(s, pos, neg)
            out = s.logits.clone()
            if self.config.positive["enabled"]:
                out += pos.class_logits(s.feature, self.config.positive["alpha"], self.config.positive["beta"])
            return out - self._negative_logits(s, neg)

    def adapt_and_predict(self, views: Tensor) -> Adapted:
        """``views [V, 3, H, W] -> Adapted(zero-shot + positive - negative cache logits [n_cls], cost)``."""
        with torch.no_grad():
            feats = self.view_features(views)
            txt, text_passes = self.class_features(feats)
            out = self.adapt_features(feats, txt)
        return Adapted(out, {"image_forward": int(views.shape[0]), "text_forward": text_passes, "backward": 0})
