"""APE and APE-T: Adaptive Prior rEfinement of a few-shot CLIP cache (Zhu et al., ICCV 2023).

Reference: yangyangyang127/APE@70460de (``main.py``, ``utils.py``, ``extract_features.py``, ``configs/*.yaml``).

**Cache** (``extract_features.py`` ``extract_few_shot_feature`` l.20-43, as Tip-Adapter's): keys ``K [NK, E]``
are the L2-normalised mean of the raw image features of ``augment_epoch`` augmented passes over the few-shot
set (RandomResizedCrop scale (0.5, 1) + flip, l.120-124), values the one-hot labels ``V [NK, C]``. vlprompt
builds it with :meth:`TipAdapter.build_cache <vlprompt.methods.tip_adapter.model.TipAdapter.build_cache>`.

**Channel criterion** (``utils.py`` ``cal_criterion`` l.22-72). With the class text features ``W [C, E]``
(unit rows) and, per class ``i``, the ``1 + K_i`` features ``x_{i,m}`` = its text feature and its cache keys
(l.51: ``torch.cat([text_feat, cache_feat], dim=1)``), the inter-class similarity of channel ``d`` is the
mean over all pairs of features of different classes (l.54-63)::

    sim_d = sum_{i != j} sum_{m, n} x_{i,m,d} x_{j,n,d} / #pairs
          = ((sum_i S_i,d)^2 - sum_i S_i,d^2) / ((sum_i n_i)^2 - sum_i n_i^2),   S_i = sum_m x_{i,m}, n_i = 1 + K_i

(the closed form here; the authors loop over the pairs), the variance ``var_d`` is ``torch.var`` of channel
``d`` over the classes (unbiased, l.66), and the criterion ``J = -w_0 sim + w_1 var`` (l.66); the
``feat_num`` channels of largest ``J`` are kept (``torch.topk``, l.68-71).

**APE** (``main.py`` ``APE`` l.28-103), ``w = w_training_free``, ``k = training_free_feat_num``, with
``'`` = the refined channels, re-normalised (l.41-49)::

    R_fW  = 100 f W^T                                         zero-shot, all channels (l.52)
    R_fF' = f' K'^T                                           (l.59)
    div_k = sum_c V_kc log2((V_kc + 1e-6) / (softmax_c(K'_k W'^T) + 1e-6))   (l.62-64; no logit scale)
    logits = R_fW + alpha exp(-beta (1 - R_fF')) (V * exp(gamma div))         (l.65-70)

``beta``, ``alpha``, ``gamma`` are searched on the validation split over ``beta_i = 0.1 + i (S_b - 0.1) /
N_b``, ``alpha_j = 0.1 + j (S_a - 0.1) / N_a``, ``gamma_l = l S_g / N_g`` (l.74-92), beta outer, alpha,
gamma inner, the first best kept (``acc > best``, best starting at 0: without any correct prediction the
result is ``beta = alpha = gamma = 0`` as the authors' l.77).

**APE-T** (``main.py`` ``APE_T`` l.106-209, ``utils.py`` ``APE_Training`` l.115-139): a category residual
``res [C, k]`` (zeros) added on the ``k = training_feat_num`` refined channels of both the cache keys (each
key gets its class's row, l.129-132) and the text features (l.134-136), and value weights ``v [NK, 1]``
(ones, l.121) scaling the one-hot values (l.137); neither is re-normalised::

    logits = 100 f (W + res on ')^T + alpha exp(-beta (1 - f (K + res_y on ')^T)) (V * v)   (l.137-141)

trained with cross-entropy (``SmoothCrossEntropy`` with alpha 0, l.102-113) at ``init_alpha`` /
``init_beta`` by AdamW (weight decay 0.1, l.116; lr and eps from the config, cosine over the iterations,
l.117); the epoch with the best validation accuracy is kept (l.158-175), then beta / alpha are searched on
val with the trained adapter (l.178-197, best starting at 0).

Deviations (docs/methods.md, "APE / APE-T"):

* the text classifier: the authors average the dataset template and the CuPL GPT-3 sentences of each class
  (``extract_features.py`` l.61-84, ``gpt3_prompts/``); vlprompt uses the run's templates (per-class
  sentences cannot be expressed).
* ``100`` is the backbone's logit scale (100 for OpenAI's CLIP); the computation is fp32 (the authors' fp16).
* ``feat_num`` larger than the embedding width (e.g. 900 on ViT-B/16's 512, the authors ran RN50's 1024) is
  cut to the width.
* APE-T's channels: ``APE_Training`` calls ``cal_criterion`` with its defaults (l.122: text-only similarity,
  ``training_free_feat_num`` channels), which crashes at l.132 whenever ``training_feat_num !=
  training_free_feat_num`` (8 of the 11 configs); as run by ``main.py`` (APE first, l.255) the similarity is
  read back from the file APE wrote (``caches/<dataset>/criterion_*.pt``, l.28-33), i.e. text + cache.
  vlprompt selects ``training_feat_num`` channels with ``w_training`` on the text + cache similarity.
* APE-T's epoch selection starts from -1 instead of 0 (the authors' run fails at ``torch.load`` when no
  epoch has a correct validation prediction).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.methods.ape.config import ApeConfig, ApeTConfig
from vlprompt.methods.base import FitData, MethodContext, PromptMethod
from vlprompt.methods.tip_adapter.model import TipAdapter, search_grid, validation

#: elements per chunk of the vectorised search (the largest temporary tensor)
SEARCH_BUDGET = 1 << 24


# ------------------------------------------------------------------------------------------------ pieces
def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off: the cache / classifier heads run in fp32 under ``train.compute_precision: amp`` (bf16 would
    round GDA's large, nearly cancelling logit terms and APE's exponentiated affinities)."""
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def channel_criterion(text: Tensor, keys: Tensor, key_labels: Tensor, w: list[float]) -> Tensor:
    """APE's criterion ``J [E]`` (``utils.py`` l.49-66): ``-w[0] * sim + w[1] * var``.

    ``text [C, E]`` class text features (unit rows), ``keys [NK, E]`` cache keys with class ``key_labels
    [NK]``. Computed in float64 in the closed form of the module doc (any number of keys per class).
    """
    n_cls = text.shape[0]
    t, k = text.double(), keys.double()
    sums = t.index_add(0, key_labels.to(t.device), k)  # S_i [C, E]: text + the class's keys
    counts = torch.bincount(key_labels.cpu(), minlength=n_cls).double() + 1.0  # n_i
    pairs = counts.sum() ** 2 - (counts**2).sum()
    sim = (sums.sum(0) ** 2 - (sums**2).sum(0)) / pairs.to(t.device)
    var = torch.var(t, dim=0)  # torch.var(clip_weights [E, C], dim=1): over classes, unbiased
    return -w[0] * sim + w[1] * var


def select_channels(text: Tensor, keys: Tensor, key_labels: Tensor, w: list[float], feat_num: int) -> Tensor:
    """The ``min(feat_num, E)`` channels of largest criterion (``torch.topk``, ``utils.py`` l.68-71), ``[k]``."""
    crit = channel_criterion(text, keys, key_labels, w)
    return torch.topk(crit, k=min(int(feat_num), crit.shape[0])).indices


def cache_logits(affinity: Tensor, beta: Tensor | float, key_labels: Tensor, n_cls: int,
                 key_weights: Tensor | None = None) -> Tensor:
    """``exp(-beta (1 - A)) (V * w)``: affinity ``[B, NK]``, one-hot values of ``key_labels [NK]`` scaled by
    ``key_weights [NK]`` (None: 1) -> ``[B, n_cls]`` (a per-class sum instead of the dense product)."""
    e = torch.exp(beta * affinity - beta)  # (-1) * (beta - beta * R) (main.py l.68)
    if key_weights is not None:
        e = e * key_weights
    return e.new_zeros(e.shape[0], n_cls).index_add(1, key_labels, e)


def gamma_grid(scale: float, steps: int) -> list[float]:
    """``[i * scale / steps for i < steps]`` (``main.py`` l.80; starts at 0)."""
    return [i * scale / steps for i in range(steps)]


def class_major(key_labels: Tensor, n_cls: int) -> tuple[Tensor, Tensor, int]:
    """A padded class-major layout of the keys: ``order [NK]`` (keys sorted by class, stable), ``slot [NK]`` (the
    sorted key's column in ``[C * kmax]``: class ``c`` owns columns ``c kmax .. c kmax + kmax - 1``) and ``kmax``."""
    order = torch.sort(key_labels, stable=True).indices
    sorted_labels = key_labels[order]
    counts = torch.bincount(key_labels, minlength=n_cls)
    kmax = max(int(counts.max()), 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(key_labels), device=key_labels.device) - starts[sorted_labels]
    return order, sorted_labels * kmax + rank, kmax


@torch.no_grad()
def correct_at_alphas(margin: Tensor, q: Tensor, labels: Tensor, alphas: Tensor) -> Tensor:
    """Whether ``argmax_c (z_c + alpha q_c) == y`` for every alpha: ``[A, G, n]`` (bool).

    ``margin [n, C]`` is ``z_y - z_c`` with ``+inf`` at ``c = y`` (see :func:`search_cache_grid`), ``q [G, n, C]``,
    ``labels [n]``, ``alphas [A]``. The true class wins at ``alpha`` iff ``a_c + alpha b_c > 0`` for every other
    class (``a = margin``, ``b = q_y - q_c``): an open interval ``(lo, hi)`` of alpha per row, ``lo`` the largest
    ``-a_c / b_c`` over ``b_c > 0``, ``hi`` the smallest over ``b_c < 0`` (a row with some ``b_c = 0, a_c <= 0`` is
    never right: ``lo`` is ``+inf`` or NaN). One pass over the classes instead of one per alpha; exact ties count
    as wrong.
    """
    b = torch.sub(q.gather(2, labels.view(1, -1, 1).expand(q.shape[0], -1, 1)), q)  # [G, n, C]
    cross = torch.div(margin, b).neg_()
    # b = 0: no bound when a > 0 (cross = -inf); never right when a < 0 (+inf) or a = 0 (nan) - both through lo
    lo = torch.where(b >= 0, cross, float("-inf")).amax(dim=-1)
    hi = cross.masked_fill_(b >= 0, float("inf")).amin(dim=-1)
    al = alphas.view(-1, 1, 1)
    return (lo < al) & (al < hi)


@torch.no_grad()
def search_cache_grid(clip: Tensor, affinity: Tensor, key_labels: Tensor, key_weights: Tensor, labels: Tensor,
                      betas: list[float], alphas: list[float]) -> Tensor:
    """Correct predictions ``[n_beta, n_alpha, G]`` of ``clip + alpha * cache_logits(affinity, beta,
    weights=key_weights[g])`` on a labelled set: ``clip [N, C]``, ``affinity [N, NK]``, ``key_labels [NK]``,
    ``key_weights [G, NK]``, ``labels [N]``.

    Chunked over N; per beta, the per-class sums of the cache logits for all weight rows are one batched product
    over a padded class-major layout of the keys (:func:`class_major`; padding has weight 0), and all alphas are
    decided at once (:func:`correct_at_alphas`)."""
    n, _ = affinity.shape
    n_cls, g = clip.shape[1], key_weights.shape[0]
    order, slot, kmax = class_major(key_labels, n_cls)
    width = n_cls * kmax
    kw = key_weights.new_zeros(g, width)
    kw[:, slot] = key_weights[:, order]
    kw = kw.view(g, n_cls, kmax)
    alpha_t = torch.tensor(alphas, dtype=clip.dtype, device=clip.device)
    counts = torch.zeros(len(betas), len(alphas), g, dtype=torch.long)
    rows = max(1, SEARCH_BUDGET // max(width, g * n_cls))
    for start in range(0, n, rows):
        z, y = clip[start:start + rows], labels[start:start + rows]
        aff = affinity.new_zeros(z.shape[0], width)
        aff[:, slot] = affinity[start:start + rows][:, order]
        margin = z.gather(1, y.view(-1, 1)) - z  # [n, C]
        margin.scatter_(1, y.view(-1, 1), float("inf"))
        e = torch.empty_like(aff)
        for bi, beta in enumerate(betas):
            torch.mul(aff, beta, out=e).sub_(beta).exp_()  # (-1) * (beta - beta * R) (main.py l.86)
            q = torch.einsum("nck,gck->gnc", e.view(-1, n_cls, kmax), kw)  # [G, n, C]
            counts[bi] += correct_at_alphas(margin, q, y, alpha_t).sum(dim=-1).cpu()
    return counts


def first_best(counts: Tensor) -> tuple[tuple[int, ...], int] | None:
    """Index of the first maximum of ``counts`` in row-major (loop) order and its value; None when no
    prediction is correct anywhere (``acc > best_search_acc`` with best starting at 0 never holds)."""
    best = int(counts.max())
    if best <= 0:
        return None
    flat = int(torch.argmax((counts.reshape(-1) == best).to(torch.uint8)))  # the first occurrence
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), counts.shape)), best


# ------------------------------------------------------------------------------------------------ APE
class Ape(TipAdapter):
    """Training-free APE; :meth:`fit` builds the cache, selects the refined channels and searches beta, alpha,
    gamma. Fitted state (prompt file): ``cache_keys [NK, E]`` (all channels), ``cache_labels [NK]``,
    ``channels [k]``, ``cache_div [NK]``, ``alpha``, ``beta``, ``gamma``. Class-specific."""

    gamma: Tensor  # buffers (register_buffer)
    channels: Tensor
    cache_div: Tensor

    config: ApeConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: ApeConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        dev = backbone.device
        self.register_buffer("gamma", torch.tensor(float(config.init_gamma), device=dev))
        self.register_buffer("channels", torch.zeros(0, dtype=torch.long, device=dev))
        self.register_buffer("cache_div", torch.zeros(0, device=dev))

    def refined(self, features: Tensor) -> Tensor:
        """``features [N, E]`` on the refined channels, re-normalised: ``[N, k]`` (``main.py`` l.41-49)."""
        return F.normalize(features.float()[:, self.channels], dim=-1)

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """APE's three-term logits ``[B, n_cls]`` (``main.py`` l.95-101)."""
        if self.cache_keys.shape[0] == 0:
            raise RuntimeError("APE's cache is empty: fit the method first (vlprompt train)")
        with full_precision(image_features.device):
            f = F.normalize(image_features.float(), dim=-1)
            clip = PromptMethod.logits(self, f, text_features)
            affinity = self.refined(f) @ self.refined(self.cache_keys).t()
            weights = torch.exp(self.cache_div * self.gamma)
            return clip + self.alpha * cache_logits(affinity, self.beta, self.cache_labels, self.n_cls, weights)

    @torch.no_grad()
    def fit(self, data: FitData) -> dict[str, Any]:
        cfg = self.config
        self.build_cache(data)  # the image tower at the run's precision
        val = validation(data, "APE", "alpha / beta / gamma stay at their init_ values") if cfg.search_hp else None
        with full_precision(self.classifier.device):
            text = self.classifier.float()
            self.channels = select_channels(text, self.cache_keys, self.cache_labels, cfg.w_training_free,
                                            cfg.training_free_feat_num).to(self.cache_keys.device)
            key_logits = (self.refined(self.cache_keys) @ self.refined(text).t()).softmax(dim=1)  # [NK, C] (l.62-63)
            values = self.cache_values
            self.cache_div = torch.sum(values * torch.log2((values + 1e-6) / (key_logits + 1e-6)), dim=1)  # (l.64)
            return {"cache_size": int(self.cache_keys.shape[0]), "channels": int(self.channels.shape[0]),
                    **self.search(val)}

    @torch.no_grad()
    def search(self, val: tuple[Tensor, Tensor] | None) -> dict[str, Any]:  # type: ignore[override]  # takes the val split
        """Search beta, alpha, gamma on normalised validation features and labels (``main.py`` l.74-93); None
        keeps the init_ values."""
        if val is None:
            return {"alpha": float(self.alpha), "beta": float(self.beta), "gamma": float(self.gamma),
                    "searched": False}
        f, labels = val
        clip = PromptMethod.logits(self, f, self.classifier)
        affinity = self.refined(f) @ self.refined(self.cache_keys).t()
        (sb, sa, sg), (nb, na, ng) = self.config.search_scale, self.config.search_step
        betas, alphas, gammas = search_grid(sb, nb), search_grid(sa, na), gamma_grid(sg, ng)
        weights = torch.exp(self.cache_div.unsqueeze(0) * torch.tensor(gammas, device=f.device).unsqueeze(1))
        counts = search_cache_grid(clip, affinity, self.cache_labels, weights, labels, betas, alphas)
        found = first_best(counts)
        (ib, ia, ig), best = found if found is not None else ((None, None, None), 0)
        beta, alpha, gamma = ((0.0, 0.0, 0.0) if ib is None or ia is None or ig is None
                              else (betas[ib], alphas[ia], gammas[ig]))
        self.beta.fill_(beta)
        self.alpha.fill_(alpha)
        self.gamma.fill_(gamma)
        return {"alpha": alpha, "beta": beta, "gamma": gamma, "val_accuracy": 100.0 * best / labels.shape[0],
                "searched": True}


# ------------------------------------------------------------------------------------------------ APE-T
class ApeT(TipAdapter):
    """APE-T: learned ``res [C, k]`` and ``value_weights [NK, 1]`` on a fixed cache, then the beta / alpha search.

    Fitted state: ``cache_keys [NK, E]``, ``cache_labels [NK]``, ``channels [k]``, ``alpha``, ``beta``; learned:
    ``res``, ``value_weights``. While training, the epoch of best validation accuracy is kept (``best.*``
    entries of the learned state, so that a resumed run selects the same epoch).
    """

    channels: Tensor  # buffers (register_buffer)

    config: ApeTConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: ApeTConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        dev = backbone.device
        k = min(int(config.training_feat_num), backbone.embed_dim)
        self.register_buffer("channels", torch.zeros(0, dtype=torch.long, device=dev))
        self.res = nn.Parameter(torch.zeros(self.n_cls, k, device=dev))  # utils.py l.124
        self.value_weights = nn.Parameter(torch.zeros(0, 1, device=dev))  # ones [NK, 1] once fitted (l.121)
        self._val: tuple[Tensor, Tensor] | None = None
        self._best: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ model
    def adapted(self, text_features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``APE_Training.forward`` (``utils.py`` l.127-139): keys ``[NK, E]`` and text ``[C, E]`` with the residual
        added on the refined channels, and the value weights ``[NK]``."""
        res = self.res.float()
        keys = self.cache_keys.float().index_add(1, self.channels, res[self.cache_labels])
        text = text_features.float().index_add(1, self.channels, res)
        return keys, text, self.value_weights.float()[:, 0]

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``main.py`` l.137-141: ``[B, E] -> [B, n_cls]`` (the adapted text features are not re-normalised)."""
        if self.cache_keys.shape[0] == 0:
            raise RuntimeError("APE-T's cache is empty: fit the method first (vlprompt train)")
        with full_precision(image_features.device):
            keys, text, weights = self.adapted(text_features)
            f = F.normalize(image_features.float(), dim=-1)
            return self.clip_logits(f, text) + self.alpha * cache_logits(f @ keys.t(), self.beta, self.cache_labels,
                                                                         self.n_cls, weights)

    def clip_logits(self, f: Tensor, text: Tensor) -> Tensor:
        """``100 f W'^T`` (the backbone's logit scale, and its bias if any) with the adapted, unnormalised ``W'``."""
        clip = self.backbone.logit_scale.to(f.device) * f @ text.t()
        bias = self.backbone.logit_bias
        return clip if bias is None else clip + bias.to(f.device)

    # ------------------------------------------------------------------ fitting, epochs, search
    @torch.no_grad()
    def fit(self, data: FitData) -> dict[str, Any]:
        cfg = self.config
        self.build_cache(data)  # the image tower at the run's precision
        dev = self.cache_keys.device
        with full_precision(dev):
            self.channels = select_channels(self.classifier.float(), self.cache_keys, self.cache_labels,
                                            cfg.w_training, cfg.training_feat_num).to(dev)
        self.res = nn.Parameter(torch.zeros_like(self.res))
        self.value_weights = nn.Parameter(torch.ones(self.cache_keys.shape[0], 1, device=dev))
        self._best = None
        self._val = validation(data, "APE-T", "the last epoch is kept") if cfg.select_best_epoch else None
        return {"cache_size": int(self.cache_keys.shape[0]), "channels": int(self.channels.shape[0])}

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, max_epoch: int) -> None:
        """Keep the epoch of best validation accuracy at init alpha / beta (``main.py`` l.158-175)."""
        if not self.config.select_best_epoch or self._val is None:
            return
        feats, labels = self._val
        correct = int((self.logits(feats, self.classifier).argmax(dim=-1) == labels).sum())
        if self._best is None or correct > int(self._best["correct"]):
            self._best = {"res": self.res.detach().clone(), "value_weights": self.value_weights.detach().clone(),
                          "correct": torch.tensor(correct), "epoch": torch.tensor(epoch)}

    def learned_state(self) -> dict[str, Tensor]:
        """Residual, value weights and cache, plus the best epoch so far (``best.<name>``) while training."""
        state = super().learned_state()
        if self._best is not None:
            state.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in self._best.items()})
        return state

    def load_learned_state(self, state: dict[str, Tensor]) -> None:
        best = {k[len("best."):]: v for k, v in state.items() if k.startswith("best.")}
        super().load_learned_state({k: v for k, v in state.items() if not k.startswith("best.")})
        dev = self.res.device
        self._best = {k: v.to(dev) for k, v in best.items()} or None

    def after_training(self, data: FitData) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self._best is not None:  # main.py l.175: the best epoch's adapter
            with torch.no_grad():
                self.res.copy_(self._best["res"])
                self.value_weights.copy_(self._best["value_weights"])
            info["best_epoch"] = int(self._best["epoch"]) + 1
            self._best = None
        val = validation(data, "APE-T", "alpha / beta stay at init_alpha / init_beta") if self.config.search_hp \
            else None
        with full_precision(self.classifier.device):
            return {**info, **self.search(val)}

    @torch.no_grad()
    def search(self, val: tuple[Tensor, Tensor] | None) -> dict[str, Any]:  # type: ignore[override]  # takes the val split
        """Search beta, alpha on normalised validation features and labels with the trained adapter (``main.py``
        l.178-197); None keeps the init_ values."""
        if val is None:
            return {"alpha": float(self.alpha), "beta": float(self.beta), "searched": False}
        f, labels = val
        keys, text, weights = self.adapted(self.classifier)
        clip = self.clip_logits(f, text)
        (sb, sa), (nb, na) = self.config.search_scale[:2], self.config.search_step[:2]
        betas, alphas = search_grid(sb, nb), search_grid(sa, na)
        counts = search_cache_grid(clip, f @ keys.t(), self.cache_labels, weights.unsqueeze(0), labels, betas, alphas)
        found = first_best(counts)
        (ib, ia, _), best = found if found is not None else ((None, None, None), 0)
        beta, alpha = (0.0, 0.0) if ib is None or ia is None else (betas[ib], alphas[ia])
        self.beta.fill_(beta)
        self.alpha.fill_(alpha)
        return {"alpha": alpha, "beta": beta, "val_accuracy": 100.0 * best / labels.shape[0], "searched": True}


__all__ = ["Ape", "ApeT", "cache_logits", "channel_criterion", "class_major", "correct_at_alphas", "first_best",
           "full_precision", "gamma_grid", "search_cache_grid", "select_channels"]
