"""GalLoP: Global and Local Prompts (Lafon, Ramzi, Rambour, Audebert, Thome; ECCV 2024).

What the authors' code computes (MarcLafon/gallop, commit f75999e; ``gallop/vlprompt/gallop.py``, ``tools/
global_local_loss.py``, ``tools/topk_reduce.py``, ``clip_local.py``), with ``G`` global and ``L`` local prompts of
``M`` learned tokens each (all initialised to the embedding of "a photo of a", ``gallop.py:356-370``)::

    text     t^g_{c,m} = g([SOS] ctx^g_m [CLASS_c] [EOT]),  t^l_{c,n} = g([SOS] ctx^l_n [CLASS_c] [EOT])   # no "."
             (gallop.py:217-245; each L2-normalised, train.py:44-45)
    image    f = ln_post(cls) @ proj                                         global  [B, E]
             z_p = local_proj(ln_post(v_p)) @ proj                          local   [B, P, E]   (gallop.py:247-257)
             v_p: the last block's value path at patch p (clip_local.py:200-218, 294-298; the LoCoOp / GL-MCM local
             features, vlprompt.backbones.local), local_proj a W x W linear map initialised to the identity
             (gallop.py:24-35, 113); ModifiedResNet: local_proj acts on the attention pool's per-position
             value + output projections (clip_local.py:70-102), there is no separate projection.
    logits   s^g[b,c,m] = cos(f_b, t^g_{c,m})   [B, C, G];   s^l[b,p,c,n] = cos(z_bp, t^l_{c,n})   [B, P, C, L]
             (gallop.py:280-285)
    top-k    r[b,c,n] = mean of the k_n largest s^l[b,:,c,n] over patches (k_n = topk[n], or topk[0] for all;
             at most P)                                                     (topk_reduce.py:9-32)
    loss     CE(scale * r[b,:,n], y_b) averaged over b and n                # local term
             + CE(scale * mean_{j<K} s^g[b,:,i_bj], y_b) averaged over b     # global term, i_bj ~ U{0..G-1}
             K = max(G - int(p * G), 1) prompts drawn per image with replacement ("prompt dropout", p =
             global_dropout_p)                                              (global_local_loss.py:29-59)
    predict  softmax(scale * (mean_m s^g + mean_n r) / 2)                   (gallop.py:424-444)
    OOD      GL-MCM: max_c softmax_c(mean_m s^g / T) + max_{p,c} softmax_c(mean_n s^l[:, p] / T)
             (gallop.py:372-386; their score is its negative, "higher = OOD", train.py:183 via ood_metrics.py:99-104)

``scale`` is CLIP's logit scale (``model.logit_scale.exp()``, train.py:57). Training optimises ``global_prompt``,
``local_prompts`` and ``local_proj`` (gallop.py:113-136), all other weights frozen.

vlprompt's differences (none changes a value):

* Features are cached before the learned part: :meth:`encode_images` returns the frozen tower's features before its
  output projection, packed ``[B, 1 + P, W]`` (:func:`~vlprompt.backbones.local.packed_unprojected_global_local`);
  the projection and ``local_proj`` are applied by :meth:`project`.
* All prompts of one step go through one batched text pass (:meth:`PromptLearner.encode_grouped`), computed in the
  run's precision (their code: fp16 autocast on CUDA); the scores and losses are computed in fp32.
* The global-prompt dropout draws its indices from torch's CPU generator (theirs: on the GPU), so that a resumed
  run draws the same; it is active in training mode only: in eval mode :meth:`training_loss` averages all global
  prompts (deterministic, as ``nn.Dropout``). The random subset of ``prompts_batch_size`` likewise (as theirs,
  gallop.py:233, training mode only).
* Class names have ``_`` read as a space (vlprompt's rule for every prompt method).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.local import image_projection, packed_unprojected_global_local
from vlprompt.methods.base import LossTerms, MethodContext, PromptMethod
from vlprompt.methods.coop.prompt import PromptLearner
from vlprompt.methods.gallop.config import GalLoPConfig

#: GalLoP's own OOD scores (its ``ood_method`` choices, gallop.py:406-422): GL-MCM (their default, train.py:226),
#: MCM (global prompts only) and L-MCM (local prompts only); the patch-reading ones are in :data:`LOCAL_SCORES`.
SCORES = ("gallop", "gallop_mcm", "gallop_lmcm")
LOCAL_SCORES = ("gallop", "gallop_lmcm")


def topk_patch_mean(local_cos: Tensor, topk: list[int]) -> Tensor:
    """Mean of the ``k_n`` largest patch similarities for each local prompt ``n``: ``[B, P, C, L] -> [B, C, L]``.

    ``topk`` holds one k per local prompt or one for all; each k is capped at the number of patches P
    (``topk_reduce.py:19-32``).
    """
    p, n_prompts = local_cos.shape[1], local_cos.shape[-1]
    ks = list(topk) * n_prompts if len(topk) == 1 else list(topk)
    if len(ks) != n_prompts:
        raise ValueError(f"topk has {len(topk)} values for {n_prompts} local prompts")
    kmax = min(max(ks), p)
    top = local_cos.topk(kmax, dim=1).values  # [B, kmax, C, L], largest first
    ks_t = torch.tensor([min(k, kmax) for k in ks], device=local_cos.device, dtype=top.dtype)  # [L]
    rank = torch.arange(kmax, device=local_cos.device, dtype=top.dtype).unsqueeze(1)  # [kmax, 1]
    weights = (rank < ks_t).to(top.dtype) / ks_t  # [kmax, L]: 1/k_n on the k_n largest, 0 elsewhere
    return torch.einsum("bkcl,kl->bcl", top, weights)


class GalLoP(PromptMethod):
    """G global + L local learned prompts over frozen CLIP, a learned map on the local features; see the module doc."""

    def __init__(self, backbone: Backbone, classnames: list[str], config: GalLoPConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        # the class-name layout [SOS] ctx [CLASS] [EOT] (no "."); its own context stays frozen and unused: the
        # learned prompts are global_prompt / local_prompts, each initialised to the words of ctx_init
        self.prompt_learner = PromptLearner(backbone, self.classnames, ctx_init=config.ctx_init, name_suffix="")
        self.prompt_learner.ctx.requires_grad_(False)
        init = self.prompt_learner.ctx.detach()  # [M, D]
        self.global_prompt = nn.Parameter(init.unsqueeze(0).repeat(config.n_global_prompts, 1, 1).clone())
        self.local_prompts = nn.Parameter(init.unsqueeze(0).repeat(config.n_local_prompts, 1, 1).clone())
        proj = image_projection(backbone)
        width = int(proj.shape[0]) if proj is not None else backbone.embed_dim
        self.local_proj = nn.Linear(width, width, bias=False, device=backbone.device)
        with torch.no_grad():
            self.local_proj.weight.copy_(torch.eye(width))
        self.local_proj.weight.requires_grad_(config.learn_local_proj)
        self._text_cache: tuple[tuple[Any, ...], Tensor] | None = None

    @property
    def n_global(self) -> int:
        return int(self.global_prompt.shape[0])

    # -------------------------------------------------------------- text
    def _encode(self, prompts: Tensor) -> Tensor:
        """``[K, M, D]`` prompts -> L2-normalised class text features ``[K, n_cls, E]`` (one text pass)."""
        return F.normalize(self.prompt_learner.encode_grouped(self.backbone, prompts).float(), dim=-1)

    def text_features(self) -> Tensor:
        """``[G + L, n_cls, E]``: the G global prompts' class features, then the L local prompts' (normalised)."""
        return self._encode(torch.cat([self.global_prompt, self.local_prompts]))

    def _fixed_text(self) -> Tensor:
        """:meth:`text_features` without gradient, kept until a prompt changes (OOD scoring calls it per batch)."""
        params = (self.global_prompt, self.local_prompts)
        key = (str(self.global_prompt.device), *((id(p), p._version) for p in params))
        if self._text_cache is None or self._text_cache[0] != key:
            with torch.no_grad():
                self._text_cache = (key, self.text_features())
        return self._text_cache[1]

    # -------------------------------------------------------------- image
    def encode_images(self, images: Tensor) -> Tensor:
        """Frozen features before the image tower's projection, packed ``[B, 1 + P, W]`` (global first)."""
        return packed_unprojected_global_local(self.backbone, images)

    def project(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Packed features ``[B, 1 + P, W]`` -> global ``[B, E]`` and GalLoP's local features ``[B, P, E]``
        (``local_proj`` then the tower's projection, gallop.py:247-257), unnormalised fp32."""
        feats = features.float()
        glob, loc = feats[:, 0], self.local_proj(feats[:, 1:])
        proj = image_projection(self.backbone)
        if proj is not None:
            proj = proj.to(feats.device, torch.float32)
            glob, loc = glob @ proj, loc @ proj
        return glob, loc

    @staticmethod
    def _cosines(glob: Tensor, loc: Tensor | None, text: Tensor, n_global: int) -> tuple[Tensor, Tensor | None]:
        """Cosines of projected features (unnormalised: global ``[B, E]``, local ``[B, P, E]`` or None) with the
        prompts ``text [G + L, C, E]`` (normalised): global prompts ``[B, C, G]``, local prompts ``[B, P, C, L]``
        (None without local features)."""
        g_cos = torch.einsum("be,gce->bcg", F.normalize(glob.float(), dim=-1), text[:n_global])
        if loc is None:
            return g_cos, None
        return g_cos, torch.einsum("bpe,lce->bpcl", F.normalize(loc.float(), dim=-1), text[n_global:])

    def _similarities(self, features: Tensor, text: Tensor, n_global: int) -> tuple[Tensor, Tensor]:
        """:meth:`_cosines` of packed features ``[B, 1 + P, W]`` through :meth:`project`."""
        g_cos, l_cos = self._cosines(*self.project(features), text, n_global)
        assert l_cos is not None
        return g_cos, l_cos

    def _prediction(self, g_cos: Tensor, l_cos: Tensor | None) -> Tensor:
        """``scale * (mean_m s^g + mean_n topk(s^l)) / 2`` ``[B, n_cls]`` (gallop.py:424-444), ``scale * mean_m s^g``
        without local cosines."""
        if l_cos is None:
            return self._scale(g_cos) * g_cos.mean(dim=-1)
        return self._scale(g_cos) * (g_cos.mean(dim=-1) + topk_patch_mean(l_cos, self.config.topk).mean(dim=-1)) / 2

    def _scale(self, like: Tensor) -> Tensor:
        return self.backbone.logit_scale.to(like.device, torch.float32)

    # -------------------------------------------------------------- prediction and training
    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``scale * (mean_m s^g + mean_n topk(s^l)) / 2`` -> ``[B, n_cls]`` (gallop.py:424-444) from packed features
        ``[B, 1 + P, W]`` and :meth:`text_features`. From projected global features ``[B, E]`` alone (an exported
        classifier's path, `vlprompt ood`'s ID accuracy) the global prompts' ``scale * mean_m s^g``, or with class
        features ``[n_cls, E]`` (:meth:`ood_text_features`) CLIP's ``scale * cos``."""
        if image_features.dim() == 2 and text_features.dim() == 2:
            return super().logits(image_features, text_features)
        if image_features.dim() == 2:
            return self._prediction(*self._cosines(image_features, None, text_features.float(), self.n_global))
        return self._prediction(*self._similarities(image_features, text_features.float(), self.n_global))

    def _training_prompts(self) -> tuple[Tensor, int]:
        """The global prompts of this step (a random subset of ``prompts_batch_size`` when training, gallop.py:
        231-236) followed by the local prompts ``[G' + L, M, D]``, and ``G'``."""
        glob: Tensor = self.global_prompt
        size = self.config.prompts_batch_size
        if self.training and size is not None and size < self.n_global:
            glob = glob[torch.randperm(self.n_global)[:size].to(glob.device)]
        return torch.cat([glob, self.local_prompts]), int(glob.shape[0])

    def _dropped_global(self, g_cos: Tensor) -> Tensor:
        """Mean over K global prompts drawn per image with replacement, ``[B, C, G] -> [B, C]``
        (global_local_loss.py:47-50); in eval mode the mean over all of them."""
        b, c, g = g_cos.shape
        if not self.training:
            return g_cos.mean(dim=-1)
        keep = max(g - int(self.config.global_dropout_p * g), 1)
        index = torch.randint(g, (b, 1, keep)).to(g_cos.device).expand(-1, c, -1)
        return g_cos.gather(-1, index).mean(dim=-1)

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Terms ``global`` (cross-entropy of the dropped-out global prompts, per image) and ``local`` (cross-entropy
        of each local prompt's top-k patch logits, per image and local prompt); logits: the ensemble prediction."""
        prompts, n_global = self._training_prompts()
        g_cos, l_cos = self._similarities(features, self._encode(prompts), n_global)
        scale = self._scale(g_cos)
        local = topk_patch_mean(l_cos, self.config.topk)  # [B, C, L]
        b, n_local = labels.shape[0], local.shape[-1]
        terms: dict[str, tuple[Tensor, int]] = {}
        if self.config.use_global_loss:
            ce = F.cross_entropy(scale * self._dropped_global(g_cos), labels, reduction="sum")
            terms["global"] = (ce, b)
        if self.config.use_local_loss:
            ce = F.cross_entropy(scale * local, labels.unsqueeze(1).expand(-1, n_local), reduction="sum")
            terms["local"] = (ce, b * n_local)
        logits = scale * (g_cos.mean(dim=-1) + local.mean(dim=-1)) / 2
        return LossTerms(terms, logits.detach())

    # -------------------------------------------------------------- OOD detection
    def ood_features(self, images: Tensor, *, local: bool = False) -> Tensor:
        """``[B, E]`` (frozen global features), or with ``local`` ``[B, 1 + P, E]``: the global feature, then GalLoP's
        learned local features (``local_proj``, then the projection), which its scores and GL-MCM read."""
        if not local:
            return super().ood_features(images)
        glob, loc = self.project(self.encode_images(images))
        return torch.cat([glob.unsqueeze(1), loc], dim=1)

    @torch.no_grad()
    def ood_text_features(self) -> Tensor:
        """The generic scores' class features ``[n_cls, E]``: the global prompts' features averaged, re-normalised."""
        return F.normalize(self._fixed_text()[: self.n_global].mean(dim=0), dim=-1)

    def ood_logits(self, features: Tensor) -> Tensor:
        """GalLoP's prediction from :meth:`ood_features`' output: ``scale * (mean_m s^g + mean_n topk(s^l)) / 2``
        (gallop.py:424-444) from packed ``[B, 1 + P, E]`` features (global, learned local), the global prompts'
        ``scale * mean_m s^g`` from global features ``[B, E]``."""
        return self._prediction(*self._cosines(*self._split_ood(features), self._ood_prompts(features),
                                               self.n_global))

    def _split_ood(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`ood_features`' output as (global ``[B, E]``, local ``[B, P, E]`` or None)."""
        if features.dim() == 3 and features.shape[1] >= 2:
            return features[:, 0], features[:, 1:]
        return (features[:, 0] if features.dim() == 3 else features), None

    def _ood_prompts(self, like: Tensor) -> Tensor:
        return self._fixed_text().to(like.device).float()

    def ood_score(self, features: Tensor, kind: str, *, temperature: float = 1.0) -> Tensor:
        """GalLoP's scores ``[B]`` (higher = more ID; features from :meth:`ood_features`), gallop.py:372-404:

        * ``gallop`` (GL-MCM): ``max_c softmax_c(mean_m s^g / T) + max_{p,c} softmax_c(mean_n s^l[p] / T)``;
        * ``gallop_mcm``: the first term; ``gallop_lmcm``: the second.

        Other kinds: the generic scores over :meth:`ood_text_features` (:meth:`PromptMethod.ood_score`).
        """
        if kind not in SCORES:
            return super().ood_score(features, kind, temperature=temperature)
        glob, loc = self._split_ood(features)
        if kind in LOCAL_SCORES and loc is None:
            raise ValueError(f"the OOD score '{kind}' reads patch features: give ood_features(images, local=True)")
        g_cos, l_cos = self._cosines(glob, loc if kind in LOCAL_SCORES else None, self._ood_prompts(features),
                                     self.n_global)
        score = features.new_zeros(features.shape[0], dtype=torch.float32)
        if kind in ("gallop", "gallop_mcm"):
            score = score + (g_cos.mean(dim=-1) / temperature).softmax(dim=-1).amax(dim=-1)
        if l_cos is not None:  # [B, P, C] after the mean over the local prompts
            score = score + (l_cos.mean(dim=-1) / temperature).softmax(dim=-1).amax(dim=(1, 2))
        return score
