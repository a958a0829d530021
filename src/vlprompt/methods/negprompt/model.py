"""NegPrompt: Learning Transferable Negative Prompts for OOD Detection (Li, Pang, Bai, Miao, Zheng; CVPR 2024).

What the authors' code computes (mala-lab/NegPrompt at d4569a9: ``models/models.py``, ``core/train_clip.py``
``train_nega_clip``, ``core/test_clip.py`` ``get_ood_score``), on one shared context per prompt kind (CSC 0):

* Prompts. Class c has a positive prompt ``[SOS][ctx+][name_c][EOT]`` and ``K = nega_ctx`` negative prompts
  ``[SOS][ctx-_k][name_c][EOT]`` with their own contexts ``ctx-_k`` (models.py:259-296); no "." after the name
  (models.py:272-273). The contexts start from the words "a photo of a" (models.py:226-243).
* Stage 1 (``--stage 1``): the positive context by cross-entropy on the positive logits
  ``logit_scale * cos(f(x), t+_c)`` (train_clip.py:73, 78; the text features of every prompt are computed,
  models.py:484-496, the negatives get a zero gradient).
* Stage 3 (``--stage 3``): the positive context frozen, every negative context set to it plus U(-1e-5, 1e-5)
  noise (models.py:391-401); then, with ``o [B, C(1+K)]`` the scaled logits of every prompt, class-major
  (positive first, models.py:465-480) and ``n_ck`` the normalised negative text features::

      L = 1e-8 CE(o+, y)                                                           # train_clip.py:88
          + negative_weight * L_img                                                # :114-121, :156
          + distance_weight * s * mean_c mean_k (1 - cos(t+_c, n_ck))              # :138-153
          + nega_nega_weight * -mean_c mean_k (1 - ||n_ck|| ||mean_k' n_ck'||)       # :90-105
      L_img = MultiLabelSoftMarginLoss(o, T), T[b, y_b, all 1+K prompts] = 1, else 0    (MSP, :110-116)
            = mean_b -(mean_j o_bj - logsumexp_j o_bj)                                  (OE, :121)
      s = -1 for MSP (pushes the negatives away from their positive), +1 for OE (:148-153)

  (the diversity term reads the norm of the mean of the class's negatives, since ``negative_features_norm`` is
  the features' norm, 1, not the normalised features: train_clip.py:92-104).
* OOD score (``get_ood_score`` with ``open_score`` msp, test_clip.py:251-264, and the max over classes,
  test_clip.py:151): the logits divided by the logit scale (cosines, test_clip.py:113-116), softmax over all
  C(1+K) prompts at T = 1, the largest probability of a positive prompt::

      S(x) = max_c softmax_j(cos(f(x), t_j) / T)[c+]        # higher = more in-distribution

vlprompt trains both stages in one run: the first ``positive_epochs`` epochs are stage 1, the rest of
``optim.max_epoch`` stage 3 (a persistent ``stage`` buffer, saved in checkpoints and prompt files, says which;
:meth:`NegPrompt.on_epoch_end` makes the switch). Inference (``forward``, ID accuracy) is the positive prompts';
the ``negprompt`` OOD score is the method's own (capability ``ood_scores``), MCM / GL-MCM read the positive ones.

Differences from the authors' code (stated in docs/methods.md): the authors run two processes with a fresh
SGD (lr 0.1, no momentum, no weight decay, osr_nega_prompt.py:64, :269) and a cosine schedule of period 50
*batches* stepped every batch and again every epoch (osr_nega_prompt.py:270, :336; train_clip.py:162); vlprompt's
one optimiser and schedule span both stages. Stage 3's ``options['max-epoch'] = 15`` (osr_nega_prompt.py:179)
sets a key the loop never reads (it reads ``max_epoch``, :308), so their stage 3 runs the default 100 epochs and
keeps the epoch with the best AUROC on the OOD test set (:329-332); vlprompt keeps the last epoch. The stage-3
noise comes from a generator seeded with the epoch (the same on every rank), not the global RNG; everything is
fp32 (the authors cast the negative context to fp16, models.py:399). Their script ``train_test_ood.py`` passes
``--open_score OE``, which ``get_ood_score`` does not handle (its ``ood_score`` would be unbound), and formats
``{POMP}`` / ``{CSC}`` without values; the parser's defaults (msp, POMP 0, CSC 0) are what runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ModelError
from vlprompt.methods.base import LossTerms, MethodContext, PromptMethod
from vlprompt.methods.coop.prompt import PromptLearner
from vlprompt.methods.negprompt.config import NegPromptConfig

#: Stage numbers as the authors' ``--stage`` (1: positive prompts, 3: negative prompts).
POSITIVE_STAGE, NEGATIVE_STAGE = 1, 3
#: Weight of the positive CE in stage 3 (``loss_positive *= 1e-8``, train_clip.py:88).
STAGE3_CE_WEIGHT = 1e-8
#: Half-width of the uniform noise added to the copied positive context (models.py:392).
NOISE_RANGE = 1e-5


def negprompt_scores(features: Tensor, text: Tensor, temperature: float = 1.0) -> Tensor:
    """NegPrompt's OOD score ``[B]``: ``features [B, E]``, ``text [1 + K, C, E]`` (positive first); the largest
    softmax probability of a positive prompt, the softmax of ``cos / T`` taken over all ``C (1 + K)`` prompts."""
    img = F.normalize(features.float(), dim=-1)
    txt = F.normalize(text.float(), dim=-1)
    probs = torch.einsum("be,kce->bkc", img, txt).div(temperature).flatten(1).softmax(dim=-1)  # [B, (1+K) C]
    return probs[:, : text.shape[1]].max(dim=-1).values


class NegPrompt(PromptMethod):
    """A positive context shared by the classes and ``nega_ctx`` negative contexts, trained in two stages."""

    stage: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: NegPromptConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.prompt_learner = PromptLearner(backbone, self.classnames, n_ctx=config.n_ctx, ctx_init=config.ctx_init,
                                            init_std=config.init_std, name_suffix="")
        if not self.prompt_learner.shares_prefix:
            raise ModelError(f"NegPrompt needs prompts that start alike for every class; the tokenizer of "
                             f"'{backbone.name}' pads them differently")
        pos = self.prompt_learner.ctx.detach()
        if config.ctx_init:  # every context starts from the same words (models.py:241-242)
            neg = pos.unsqueeze(0).repeat(config.nega_ctx, 1, 1)
        else:
            neg = torch.empty(config.nega_ctx, *pos.shape, device=pos.device)
            nn.init.normal_(neg, std=config.init_std)
        self.ctx_negative = nn.Parameter(neg.clone())  # [K, M, D]
        self.register_buffer("stage", torch.tensor(POSITIVE_STAGE, dtype=torch.long, device=pos.device))
        self._ood_cache: tuple[Any, Tensor] | None = None
        if config.positive_epochs == 0:
            self.start_negative_stage(seed=0)

    @property
    def ctx(self) -> Tensor:
        """The positive context ``[M, D]``."""
        return self.prompt_learner.ctx

    @property
    def in_negative_stage(self) -> bool:
        return int(self.stage) == NEGATIVE_STAGE

    # ------------------------------------------------------------------ prompts
    def all_text_features(self, *, freeze_positive: bool = False) -> Tensor:
        """Normalised text features of every prompt ``[1 + K, C, E]``: index 0 the positive prompts, 1..K the
        negative ones (one shared-prefix pass over the ``1 + K`` contexts); ``freeze_positive`` detaches the
        positive context (stage 3)."""
        pos: Tensor = self.prompt_learner.ctx
        pos = pos.detach() if freeze_positive else pos
        ctx = torch.cat([pos.unsqueeze(0), self.ctx_negative.to(pos.dtype)])  # [1 + K, M, D]
        return F.normalize(self.prompt_learner.encode_grouped(self.backbone, ctx).float(), dim=-1)

    def text_features(self) -> Tensor:
        """``[C, E]`` normalised features of the positive prompts (inference, MCM / GL-MCM)."""
        pl = self.prompt_learner
        return F.normalize(pl.encode_grouped(self.backbone, pl.ctx.unsqueeze(0))[0].float(), dim=-1)

    @torch.no_grad()
    def start_negative_stage(self, seed: int) -> None:
        """Stage 3 begins: each negative context = the positive one + U(-1e-5, 1e-5) noise (models.py:391-401),
        drawn from a CPU generator seeded with ``seed`` (identical on every rank and after a resume)."""
        pos = self.prompt_learner.ctx.detach().float().cpu()
        g = torch.Generator().manual_seed(int(seed))
        noise = (torch.rand((self.config.nega_ctx, *pos.shape), generator=g) * 2 - 1) * NOISE_RANGE
        self.ctx_negative.copy_((pos.unsqueeze(0) + noise).to(self.ctx_negative))
        self.stage.fill_(NEGATIVE_STAGE)

    def on_epoch_end(self, epoch: int, max_epoch: int) -> None:
        """After the last stage-1 epoch (``positive_epochs``), start stage 3 (:meth:`start_negative_stage`)."""
        if not self.in_negative_stage and epoch + 1 >= self.config.positive_epochs:
            self.start_negative_stage(seed=epoch)

    # ------------------------------------------------------------------ training
    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Stage 1: ``ce`` (the positive logits' CE). Stage 3: ``ce`` (x 1e-8), ``image`` (negative_weight x the
        MSP / OE loss per image), ``distance`` and ``diversity`` (per-batch values given as ``(v B, B)``)."""
        cfg, b = self.config, labels.shape[0]
        stage3 = self.in_negative_stage
        text = self.all_text_features(freeze_positive=stage3)  # [1 + K, C, E]
        logits = self.logits(features, text[0])  # [B, C] positive
        ce = F.cross_entropy(logits.float(), labels, reduction="sum")
        if not stage3:
            return LossTerms({"ce": (ce, b)}, logits)
        k1, c = text.shape[0], text.shape[1]
        prompts = text.transpose(0, 1).reshape(c * k1, -1)  # class-major [C (1+K), E], positive first
        out = self.logits(features, prompts)  # [B, C (1+K)]
        if cfg.open_set_method == "MSP":  # MultiLabelSoftMarginLoss: mean over prompts of the sigmoid BCE
            target = torch.zeros(b, c, k1, device=out.device)
            target[torch.arange(b, device=out.device), labels] = 1.0
            per_image = F.binary_cross_entropy_with_logits(out, target.flatten(1), reduction="none").mean(dim=1)
        else:  # OE: cross-entropy against the uniform distribution over all prompts
            per_image = -(out.mean(dim=1) - torch.logsumexp(out, dim=1))
        pos, neg = text[0], text[1:].transpose(0, 1)  # [C, E], [C, K, E]
        dist = (1 - torch.einsum("ce,cke->ck", pos, neg)).mean()  # mean_c mean_k (1 - cos)
        distance = -dist if cfg.open_set_method == "MSP" else dist
        diversity = -(1 - neg.norm(dim=-1) * neg.mean(dim=1).norm(dim=-1, keepdim=True)).mean()
        terms = {
            "ce": (STAGE3_CE_WEIGHT * ce, b),
            "image": (cfg.negative_weight * per_image.sum(), b),
            "distance": (cfg.distance_weight * distance * b, b),
            "diversity": (cfg.nega_nega_weight * diversity * b, b),
        }
        return LossTerms(terms, logits)

    # ------------------------------------------------------------------ OOD
    def _ood_all_text(self) -> Tensor:
        """Every prompt's text features ``[1 + K, C, E]`` for scoring, re-encoded only when a context changed."""
        key = (self.prompt_learner.ctx._version, self.ctx_negative._version, self.prompt_learner.ctx.data_ptr(),
               self.ctx_negative.data_ptr())
        if self._ood_cache is None or self._ood_cache[0] != key:
            with torch.no_grad():
                self._ood_cache = (key, self.all_text_features())
        return self._ood_cache[1]

    def ood_score(self, features: Tensor, kind: str, *, temperature: float = 1.0) -> Tensor:
        """``negprompt`` (:func:`negprompt_scores` of the global features), else the generic scores of the positive
        prompts (MCM, GL-MCM, ...)."""
        if kind != "negprompt":
            return super().ood_score(features, kind, temperature=temperature)
        glob = features[:, 0] if features.dim() == 3 else features
        return negprompt_scores(glob, self._ood_all_text().to(glob.device), temperature)

    def ood_record(self) -> dict[str, Any]:
        """The stage the prompt file was saved in (3: negative prompts learned) and the number per class."""
        return {"negprompt_stage": int(self.stage), "negative_prompts_per_class": self.config.nega_ctx,
                "negative_prompts_learned": self.in_negative_stage}
