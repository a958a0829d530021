"""ID-Like: ID-like prompt learning for few-shot OOD detection (Bai, Han, Zhang, Cao, Jiang, Hu; CVPR 2024).

What the authors' code computes (ycfate/ID-like@9acb908, the authors' upload of 8 May 2024; cited file:line):

* **Outliers from the ID images.** Every training image gives ``n_crop`` (256) random crops
  (``RandomResizedCrop(224)`` + flip, ``utils/dataloaders_utils.py`` l.147-163), encoded by the frozen image
  tower and L2-normalised. Each crop is ranked by its cosine with the frozen text feature of the hand-crafted
  prompt ``"a photo of a {label}."`` of the image's own class (``utils/id_like.py`` l.38-53): the ``n_selection``
  (32) most similar crops are ID samples of that class, the ``n_selection`` least similar ones are the
  *ID-like* outliers (``select_in_out``, l.18-27). The selection uses frozen towers only.
* **Prompts.** ``n_cls`` ID prompts ``[SOS][V]1..[V]M [CLASS_c] . [EOT]`` (CoOp, unified context, 16 tokens) and
  ``n_ex_prompts`` (100) OOD prompts ``[SOS][W]1..[W]M' [C_k] . [EOT]`` with a context ``W`` shared by the
  OOD prompts and one learned class token ``C_k`` each (``utils/id_like_utils.py`` l.48-120, 247-282,
  ``config.py`` l.7-15; all N(0, 0.02)). ``T = [T_id; T_ood]`` ``[n_cls + n_ex, E]``, normalised.
* **Loss** (``utils/id_like_loss.py`` l.12-46), with ``s`` CLIP's logit scale and ``p = softmax(s f T^T)`` over all
  ``n_cls + n_ex`` prompts::

      L_in   = CE(s f_in T^T, y)                                   mean over the ID crops
      L_out  = mean_{f in OOD crops} log(sum_{c < n_cls} p_c(f) + 1e-16)
      L_diff = mean_{p < q} max(0, cos(T_ood,p, T_ood,q))          (cosine_embedding_loss, target -1)
      L      = lam_in L_in + lam_out L_out + lam_diff L_diff       (1.0, 0.3, 0.2)

* **Score** (``utils/id_like.py`` l.159-162 with ``utils/common.py`` l.158, which negates it): the probability
  mass on the ID prompts, ``S(x) = sum_{c < n_cls} softmax(s f T^T)_c`` (higher = more ID). Accuracy: argmax
  over the ID prompts alone (l.167), CoOp's classifier.

How it runs in vlprompt (capability ``training`` "fit+sgd"): :meth:`IDLike.fit` draws ``crop_rounds x n_crop``
crops of every few-shot image once (``FitData.augmented_features``, seeded by the run's seed) and keeps the
selected ID and ID-like crops of each round (non-persistent buffers, ``[R, N, n_selection, E]``). The trainer
then hands :meth:`IDLike.training_loss` the features of a batch of training images (test transform, cached); each
is found among the fitted images (the same class, the largest cosine: the identical cached feature, so exact
with ``data.augment: false``; with augmentation the nearest image of its class) and its selected crops of round
``epoch mod crop_rounds`` make the step. The authors draw fresh crops in each of their 3 epochs; the default
``crop_rounds`` 3 does the same for a 3-epoch run. Deviations: the crops use vlprompt's (Dassl's) bicubic
``RandomResizedCrop`` (theirs: torchvision's bilinear default); their fp16 / ``.cuda()`` run becomes the run's
``train.compute_precision``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ModelError
from vlprompt.methods.base import FitData, LossTerms, MethodContext, template_text_features
from vlprompt.methods.coop.model import CoOp
from vlprompt.methods.coop.prompt import PromptLearner
from vlprompt.methods.idlike.config import IDLikeConfig

#: the name of ID-Like's own OOD score (capability ``ood_scores``)
IDLIKE_SCORE = "idlike"


# ---------------------------------------------------------------------------------- the authors' computations
def select_crops(crops: Tensor, class_text: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """ID and ID-like crops of each image (``utils/id_like.py`` l.18-27, 52-55).

    Args:
        crops: ``[R, V, N, E]`` L2-normalised features of ``V`` crops of ``N`` images in ``R`` rounds.
        class_text: ``[N, E]`` normalised text feature of each image's class prompt.
        k: ``n_selection``.

    Returns:
        ``[R, N, k, E]`` the ``k`` crops most similar to the class prompt (ID), and ``[R, N, k, E]`` the ``k`` least
        similar ones (ID-like OOD), each in descending order of ``torch.topk``.
    """
    sim = torch.einsum("rvne,ne->rnv", crops.float(), class_text.float())  # [R, N, V]
    idx_in = sim.topk(k, dim=-1).indices  # [R, N, k]
    idx_out = (-sim).topk(k, dim=-1).indices
    per_image = crops.permute(0, 2, 1, 3)  # [R, N, V, E]

    def take(idx: Tensor) -> Tensor:
        return torch.gather(per_image, 2, idx.unsqueeze(-1).expand(-1, -1, -1, per_image.shape[-1]))

    return take(idx_in), take(idx_out)


def crop_loss_sums(logits_in: Tensor, targets: Tensor, logits_out: Tensor, n_id: int) -> tuple[Tensor, Tensor]:
    """Summed ``L_in`` and ``L_out`` terms over the crops (``utils/id_like_loss.py`` l.16-33).

    Args:
        logits_in: ``[K, n_id + n_ex]`` scaled logits of the ID crops over all prompts.
        targets: ``[K]`` their classes.
        logits_out: ``[K', n_id + n_ex]`` scaled logits of the ID-like (OOD) crops.
        n_id: the number of ID prompts (the first ``n_id`` columns).

    Returns:
        (sum of cross-entropies, sum over the OOD crops of ``log(ID probability mass + 1e-16)``).
    """
    ce = F.cross_entropy(logits_in.float(), targets, reduction="sum")
    id_mass = logits_out.float().softmax(dim=-1)[:, :n_id].sum(dim=-1)
    return ce, torch.log(id_mass + 1e-16).sum()


def ood_prompt_diversity(ood_text: Tensor) -> Tensor:
    """``L_diff``: mean over prompt pairs ``p < q`` of ``max(0, cos(t_p, t_q))`` (``utils/id_like_loss.py`` l.36-43);
    0 for a single prompt. ``ood_text [n_ex, E]``."""
    t = F.normalize(ood_text.float(), dim=-1)
    n = t.shape[0]
    if n < 2:
        return t.sum() * 0.0
    rows, cols = torch.triu_indices(n, n, offset=1, device=t.device)
    return (t @ t.t())[rows, cols].clamp(min=0).mean()


def id_probability_mass(logits: Tensor, n_id: int, temperature: float = 1.0) -> Tensor:
    """ID-Like's score ``[B]``: ``sum_{c < n_id} softmax(logits / T)_c`` over ID and OOD prompts
    (``utils/id_like.py`` l.159-162, negated by ``utils/common.py`` l.158: higher = more ID)."""
    return (logits.float() / temperature).softmax(dim=-1)[:, :n_id].sum(dim=-1)


# ---------------------------------------------------------------------------------- the OOD prompts
class OODPromptLearner(PromptLearner):
    """``n_prompts`` OOD prompts ``[SOS][W]1..[W]M [C_k] . [EOT]``: context ``ctx [M, D]`` shared by all, one learned
    class token ``cls [n_prompts, T, D]`` each (``T`` = the tokens of the placeholder name "X": 1 for CLIP's BPE;
    ``utils/id_like_utils.py`` l.95-102, ``learned_cls``). The layout is the tokenizer's for ``"X ... X X."``."""

    def __init__(self, backbone: Backbone, n_prompts: int, *, n_ctx: int, ctx_init: str | None,
                 init_std: float) -> None:
        super().__init__(backbone, ["X"] * n_prompts, n_ctx=n_ctx, ctx_init=ctx_init, csc=False,
                         class_token_position="end", init_std=init_std)
        if not self.uniform_start:  # identical prompts: cannot happen, but the splice below relies on it
            raise ModelError(f"the tokenizer of '{backbone.name}' lays out identical OOD prompts differently")
        cls = torch.empty(n_prompts, self.name_lens[0], backbone.text_width)
        with torch.no_grad():
            nn.init.normal_(cls, std=init_std)
        self.cls = nn.Parameter(cls.to(backbone.device))

    def suffix(self, dtype: torch.dtype) -> Tensor:
        """``[n, L', D]``: the learned class tokens, then ".", EOT and padding."""
        rest = self.token_suffix[:, self.cls.shape[1]:].to(dtype)
        return torch.cat([self.cls.to(dtype), rest], dim=1)

    def forward(self, ctx: Tensor | None = None) -> Tensor:
        """Prompt embeddings ``[n, L, D]``."""
        ctx = self.ctx if ctx is None else ctx
        n = self.token_embeds.shape[0]
        return torch.cat([self.token_prefix.to(ctx.dtype), ctx.unsqueeze(0).expand(n, -1, -1),
                          self.suffix(ctx.dtype)], dim=1)

    def encode(self, backbone: Backbone) -> Tensor:
        """Text features ``[n, E]`` (unnormalised; the exact shared-prefix pass where the tower allows it)."""
        prefix = torch.cat([self.token_prefix[:1].to(self.ctx.dtype), self.ctx.unsqueeze(0)], dim=1)  # [1, s+M, D]
        return backbone.encode_text_shared_prefix(prefix, self.suffix(self.ctx.dtype),
                                                  self.eot_index - (self.ctx_start + self.n_ctx),
                                                  ids=self.token_ids)[0]


# ---------------------------------------------------------------------------------- the method
class IDLike(CoOp):
    """CoOp's ID prompts plus learned OOD prompts, trained on ID and ID-like crops of the few-shot images."""

    crop_round: Tensor  # buffers (register_buffer)
    train_features: Tensor
    train_labels: Tensor
    id_crops: Tensor
    ood_crops: Tensor

    def __init__(self, backbone: Backbone, classnames: list[str], config: IDLikeConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.ood_prompt_learner = OODPromptLearner(backbone, config.n_ex_prompts, n_ctx=config.n_ex_ctx,
                                                   ctx_init=config.ex_ctx_init, init_std=config.init_std)
        dev, dim = backbone.device, backbone.embed_dim
        #: epochs trained (``on_epoch_end``): which crop round the next epoch uses (saved, for resumption)
        self.register_buffer("crop_round", torch.zeros((), dtype=torch.long, device=dev))
        # fitted crops, recomputed (seeded) by ``fit`` in every run, never stored
        self.register_buffer("train_features", torch.zeros(0, dim, device=dev), persistent=False)
        self.register_buffer("train_labels", torch.zeros(0, dtype=torch.long, device=dev), persistent=False)
        self.register_buffer("id_crops", torch.zeros(0, 0, 0, dim, device=dev), persistent=False)
        self.register_buffer("ood_crops", torch.zeros(0, 0, 0, dim, device=dev), persistent=False)
        self._text_cache: tuple[tuple[Any, ...], Tensor] | None = None

    # ------------------------------------------------------------------ prompts
    def ood_prompt_features(self) -> Tensor:
        """``[n_ex_prompts, E]`` normalised features of the learned OOD prompts (differentiable)."""
        return F.normalize(self.ood_prompt_learner.encode(self.backbone).float(), dim=-1)

    def all_text_features(self) -> Tensor:
        """``T = [T_id; T_ood]`` ``[n_cls + n_ex_prompts, E]``, normalised (differentiable)."""
        return torch.cat([self.text_features(), self.ood_prompt_features()])

    # ------------------------------------------------------------------ crops
    @torch.no_grad()
    def fit(self, data: FitData) -> dict[str, Any]:
        """Draw ``crop_rounds x n_crop`` crops of every training image and keep each round's ``n_selection`` ID
        and ID-like crops (:func:`select_crops`), ranked against the hand-crafted ``select_template`` prompt."""
        cfg, dev = self.config, self.backbone.device
        rounds, n_crop = cfg.crop_rounds, cfg.n_crop
        views, labels = data.augmented_features(rounds * n_crop, crop_scale=tuple(cfg.crop_scale))  # [R V, N, E]
        feats, train_labels = data.features("train")
        labels, train_labels = labels.to(dev, torch.long), train_labels.to(dev, torch.long)
        if not torch.equal(labels, train_labels):
            raise RuntimeError("the augmented views and the training features list the images in another order")
        text = template_text_features(self.backbone, self.classnames, [cfg.select_template]).to(dev)
        crops = F.normalize(views.to(dev).float(), dim=-1)
        crops = crops.view(rounds, n_crop, *crops.shape[1:])  # [R, V, N, E]
        self.id_crops, self.ood_crops = select_crops(crops, text[labels], cfg.n_selection)
        self.train_features = F.normalize(feats.to(dev).float(), dim=-1)
        self.train_labels = train_labels
        return {"images": int(labels.shape[0]), "crops": rounds * n_crop, "selected": cfg.n_selection}

    def image_indices(self, features: Tensor, labels: Tensor) -> Tensor:
        """``[B]`` the fitted training image each of ``features [B, E]`` (labels ``[B]``) is: among the images of
        its class, the one with the largest cosine (the identical cached feature when training on cached ones)."""
        if self.id_crops.numel() == 0:
            raise RuntimeError("ID-Like's crops are not drawn: fit the method first (vlprompt train)")
        f = F.normalize(features.float(), dim=-1)
        same = labels.unsqueeze(1) == self.train_labels.unsqueeze(0)  # [B, N]
        if not bool(same.any(dim=1).all()):
            missing = sorted({int(y) for y, ok in zip(labels, same.any(dim=1)) if not ok})
            raise ValueError(f"ID-Like has no fitted training image of class(es) {missing}")
        sim = (f @ self.train_features.t()).masked_fill(~same, float("-inf"))
        return sim.argmax(dim=1)

    def on_epoch_end(self, epoch: int, max_epoch: int) -> None:
        """The next epoch takes the next round of crops (fresh crops each epoch, as the authors' loader)."""
        self.crop_round += 1

    # ------------------------------------------------------------------ training
    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Terms ``in`` (``lam_in`` x summed CE of the batch images' ID crops), ``out`` (``lam_out`` x summed log ID
        mass of their ID-like crops), each counted by its crops, and ``diff`` (``lam_diff`` x ``L_diff``, a per-batch
        value). Logits ``[B, n_cls]``: the batch images' own features over the ID prompts (accuracy log only)."""
        cfg = self.config
        idx = self.image_indices(features, labels)
        r = int(self.crop_round) % self.id_crops.shape[0]
        k = self.id_crops.shape[2]
        crops_in = self.id_crops[r, idx].flatten(0, 1)  # [B k, E]
        crops_out = self.ood_crops[r, idx].flatten(0, 1)
        text_id, text_ood = self.text_features(), self.ood_prompt_features()
        text = torch.cat([text_id, text_ood])
        ce, log_mass = crop_loss_sums(self.logits(crops_in, text), labels.repeat_interleave(k),
                                      self.logits(crops_out, text), self.n_cls)
        n, b = int(crops_in.shape[0]), int(labels.shape[0])
        terms = {"in": (cfg.lam_in * ce, n), "out": (cfg.lam_out * log_mass, n),
                 "diff": (cfg.lam_diff * ood_prompt_diversity(text_ood) * b, b)}
        with torch.no_grad():
            logits = self.logits(features, text_id)
        return LossTerms(terms, logits)

    # ------------------------------------------------------------------ OOD score
    @torch.no_grad()
    def _score_text(self) -> Tensor:
        """``T`` for scoring, re-encoded only when a learned tensor changed (in-place updates bump versions)."""
        key = tuple((p.data_ptr(), p._version, p.device) for _, p in self.learned_parameters())
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, self.all_text_features())
        return self._text_cache[1]

    def ood_score(self, features: Tensor, kind: str, *, temperature: float = 1.0) -> Tensor:
        """``"idlike"``: :func:`id_probability_mass` of ``logit_scale * cos(f, T) / temperature`` (``temperature`` 1
        = the authors'); other kinds (MCM, ... over the ID prompts): the default."""
        if kind != IDLIKE_SCORE:
            return super().ood_score(features, kind, temperature=temperature)
        glob = features[:, 0] if features.dim() == 3 else features
        with torch.no_grad():
            return id_probability_mass(self.logits(glob, self._score_text().to(glob.device)), self.n_cls,
                                       temperature)

    def ood_record(self) -> dict[str, Any]:
        return {"ood_prompts": int(self.config.n_ex_prompts)}
