"""TPT: Test-Time Prompt Tuning (Shu, Nie, Huang, Yu, Goldstein, Anandkumar, Xiao; NeurIPS 2022).

For every test image x, its V views (``views[0]`` the original, ``views[1:]`` augmented: TPT's batch of 64,
:mod:`vlprompt.data.test_time_views`) and a context ``ctx [M, D]`` started from its initial value
(azshue/TPT ``tpt_classification.py`` l.270-276: prompt and AdamW state reset before each image):

    z_v      = logit_scale * cos(f(view_v), g(t_c(ctx)))                      # [V, n_cls]
    S        = the int(V * selection_p) views of lowest entropy H(softmax(z_v))              (l.41-44)
    L(ctx)   = H( mean_{v in S} softmax(z_v) )                                 (avg_entropy, l.46-51)
    ctx     <- AdamW step on L, ``tta_steps`` times (l.54-80; S chosen at the first step, kept after, l.68-71)
    logits   = logit_scale * cos(f(x), g(t_c(ctx)))                            # the prediction, l.289-294

with ``t_c(ctx) = [SOS] ctx [CLASS_c] . [EOT]`` (``clip/custom_clip.py`` PromptLearner, class token at the end).

How it is computed here (same mathematics as the authors' code, which is fp16 autocast on GPU):

* the image tower is frozen, so the V views are encoded once, without a graph; the authors call the image
  encoder again in every step (``model(inputs)``, l.66; ``inference`` l.310-312) and once more for the
  prediction on the original image (``model(image)``, l.294, the same tensor as ``views[0]``), which gives
  the same features: here the prediction reuses ``views[0]``'s feature;
* the text pass over all classes is the exact shared-prefix encoding of CoOp's prompt learner
  (:meth:`~vlprompt.methods.coop.prompt.PromptLearner.encode_grouped`: SOS + context once, each class only
  its name + "." + EOT tokens), forward and backward; the authors run the n_cls full 77-token prompts;
* only ``ctx`` gets a gradient (``torch.autograd.grad`` with respect to it alone); no backbone tensor
  ever requires one.

Starting points (:meth:`TPT.start_from`): a CoOp prompt with unified context (TPT+CoOp: its context becomes
the initial one, l.113-119) or a CoCoOp prompt (TPT+CoCoOp, ``clip/cocoop.py`` ``gen_ctx`` l.172-182 and
``forward_ctx`` l.184-217, ``tpt_classification.py`` l.55-58, 278-282: per image the start context is
``ctx + meta_net(f(x))`` of the original view, and that tensor alone is tuned, with a fresh AdamW); or a prompt
whose image tower is prompted too (TPT+MaPLe as jameelhassan/PromptAlign ``trainers/prompt_align.py`` runs it
without its alignment loss: ``tpt`` l.617-636 tunes all of MaPLe's prompt-learner parameters with AdamW,
``reset`` l.236-252 restores all of them before each image, and every step re-encodes the views through the
prompted image tower, ``model(inputs)`` l.744-748, with gradients to the vision prompts; the prediction
re-encodes the original, l.711-716).
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import Adapted, MethodContext, PromptMethod, check_start_source, cosine_over_text_features
from vlprompt.methods.coop.prompt import PromptLearner
from vlprompt.methods.tpt.config import TPTConfig
from vlprompt.methods.view_entropy import average_prediction_entropy, select_confident_views

#: Methods whose prompt files TPT starts from (:meth:`TPT.start_from`).
STARTS_FROM = ("a 'coop' prompt with unified context (csc false), a 'cocoop' prompt, or a prompt whose image tower "
               "is prompted too (maple, ivlp, vpt_deep, promptsrc)")


class TPT(PromptMethod):
    """Episodic test-time prompt tuning of a unified context ``ctx [M, D]`` (see the module docstring).

    Without adaptation (``forward``) it is the prompt classifier of its initial context (``"a photo of a"`` by
    default, or the starting prompt's). Its state (``ctx`` and the AdamW moments) changes only inside
    :meth:`adapt_and_predict`; :meth:`reset_adaptation` restores both.
    """

    initial_ctx: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: TPTConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        prompt_learner = PromptLearner(backbone, self.classnames, n_ctx=config.n_ctx, ctx_init=config.ctx_init,
                                       csc=False, class_token_position="end", init_std=config.init_std)
        self._adopt(prompt_learner, None)

    # -------------------------------------------------------------- state
    def _adopt(self, prompt_learner: PromptLearner, meta_net: nn.Module | None) -> None:
        """Make ``prompt_learner``'s context the initial one (tuned only in :meth:`adapt_and_predict`, frozen
        otherwise: the method learns nothing before test time) and ``meta_net`` (CoCoOp's) the start's shift."""
        prompt_learner.ctx.requires_grad_(False)
        self.prompt_learner = prompt_learner
        self.register_buffer("initial_ctx", prompt_learner.ctx.detach().clone(), persistent=False)  # [M, D]
        if meta_net is not None:
            meta_net = meta_net.to(prompt_learner.ctx.device).eval()
            meta_net.requires_grad_(False)
        self.meta_net = meta_net
        self._optimizer: torch.optim.AdamW | None = None
        self._optimizer_start: dict[str, Any] | None = None
        # a started-from method whose prompts change the image tower (MaPLe, ...): tuned whole, kept out of the
        # module tree (its tensors are not this method's learned state); see :meth:`_start_from_prompted_tower`
        self._tower: tuple[PromptMethod, ...] = ()
        self._tower_params: list[nn.Parameter] = []
        self._tower_init: list[Tensor] = []

    @property
    def ctx(self) -> nn.Parameter:
        """The context being tuned: ``[M, D]``."""
        return self.prompt_learner.ctx

    def _optim(self) -> torch.optim.AdamW:
        """The AdamW over ``ctx`` (tpt_classification.py l.144-146: AdamW(lr), its initial state kept)."""
        params = self._tower_params or [self.ctx]
        if self._optimizer is None or self._optimizer.param_groups[0]["params"][0] is not params[0]:
            self._optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
            self._optimizer_start = copy.deepcopy(self._optimizer.state_dict())
        return self._optimizer

    def _reset_optimizer(self) -> None:
        """AdamW's state back to that of a fresh optimiser (l.275 ``optimizer.load_state_dict(optim_state)``;
        a new AdamW per image for TPT+CoCoOp, l.58: the same)."""
        optimizer = self._optim()
        assert self._optimizer_start is not None  # set with the optimiser
        optimizer.load_state_dict(self._optimizer_start)

    def reset_adaptation(self) -> None:
        """Context back to its initial value and AdamW's moments and step count to none (l.270-275)."""
        with torch.no_grad():
            self.ctx.copy_(self.initial_ctx)
            for p, init in zip(self._tower_params, self._tower_init):
                p.copy_(init)
        self._reset_optimizer()

    def start_from(self, source: PromptMethod) -> None:
        """Start from a CoOp prompt with unified context or from a CoCoOp prompt (see the module docstring).

        ``source`` must be built for this method's class names on this backbone (a prompt file loaded for
        them). Its context length and class-token position are adopted (the authors require ``--n_ctx`` to
        equal the file's, l.116). Anything else is refused with one ``ValueError`` line.
        """
        name = source.method_name
        if name not in ("coop", "cocoop") and source.capabilities.modifies_encoders:
            self._start_from_prompted_tower(source)
            return
        if name not in ("coop", "cocoop"):
            raise ValueError(f"method '{self.method_name}' starts from {STARTS_FROM}, not a '{name}' prompt")
        source_pl = source.prompt_learner
        if not isinstance(source_pl, PromptLearner) or source_pl.ctx.dim() != 2:
            raise ValueError(f"method '{self.method_name}' starts from {STARTS_FROM}, not a '{name}' prompt with "
                             "class-specific context")
        check_start_source(self, source)
        if source_pl.ctx.shape[-1] != self.backbone.text_width:
            raise ValueError(f"the '{name}' prompt's context width {source_pl.ctx.shape[-1]} is not the text width "
                             f"{self.backbone.text_width} of {self.backbone.name}")
        device = self.initial_ctx.device
        prompt_learner = copy.deepcopy(source_pl).to(device)
        meta_net = copy.deepcopy(cast(nn.Module, source.meta_net)) if name == "cocoop" else None
        self._adopt(prompt_learner, meta_net)
        self.reset_adaptation()

    def _start_from_prompted_tower(self, source: PromptMethod) -> None:
        """TPT on a prompt that changes the image tower (PromptAlign's TPT+MaPLe, module docstring): a copy of
        ``source`` (sharing the frozen backbone) whose learned parameters are all tuned per image and restored by
        :meth:`reset_adaptation`. Its logits must be CLIP's cosine classifier over ``text_features()``."""
        caps = source.capabilities
        if (not cosine_over_text_features(source) or caps.class_specific or caps.image_conditional
                or caps.local_features):
            raise ValueError(f"method '{self.method_name}' starts from {STARTS_FROM}, not a '{source.method_name}' "
                             "prompt")
        check_start_source(self, source)
        tower = copy.deepcopy(source, memo={id(source.backbone): source.backbone}).eval()
        params = [p for _, p in tower.learned_parameters()]
        if not params:
            raise ValueError(f"the '{source.method_name}' prompt has no learned tensors to tune")
        for p in params:
            p.requires_grad_(False)  # tuned only inside adapt_and_predict
        self._tower = (tower,)
        self._tower_params = params
        self._tower_init = [p.detach().clone() for p in params]
        self._optimizer = None
        self.reset_adaptation()

    def encode_images(self, images: Tensor) -> Tensor:
        """Image features ``[B, E]``: the frozen tower's, or the prompted tower's of a MaPLe-like start."""
        return self._tower[0].encode_images(images) if self._tower else super().encode_images(images)

    def _adapt_prompted_tower(self, views: Tensor) -> Adapted:
        """TPT on a prompted-tower start: every step encodes the V views through the prompted image tower and the
        class prompts through the text tower, both differentiable w.r.t. all the start's learned tensors (the
        authors' ``model(inputs)``); one AdamW step per ``tta_steps``; then the original view re-encoded with the
        tuned prompts (cost: V image forwards per step + 1, tta_steps + 1 text passes, tta_steps backward)."""
        tower, params, cfg = self._tower[0], self._tower_params, self.config
        steps = int(cfg.tta_steps)
        optimizer = self._optim()
        selected: Tensor | None = None
        for p in params:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                for _ in range(steps):
                    text = F.normalize(tower.text_features().float(), dim=-1)  # [n_cls, E]
                    logits = tower.logits(tower.encode_images(views), text)  # [V, n_cls]
                    if selected is None:
                        selected = select_confident_views(logits.detach(), cfg.selection_p)
                    loss = self.test_time_loss(logits[selected], text)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    for p, g in zip(params, grads):
                        p.grad = g
                    optimizer.step()
                    for p in params:
                        p.grad = None
        finally:
            for p in params:
                p.requires_grad_(False)
        with torch.no_grad():
            out = tower.logits(tower.encode_images(views[:1]), tower.text_features())[0]
        v = int(views.shape[0])
        return Adapted(out, {"image_forward": v * steps + 1, "text_forward": steps + 1, "backward": steps})

    # -------------------------------------------------------------- prediction
    def text_features_of(self, ctx: Tensor) -> Tensor:
        """Normalised text features of every class for the context ``ctx [M, D]`` -> ``[n_cls, E]``
        (differentiable w.r.t. ctx; exact shared-prefix pass when the class token is at the end)."""
        return F.normalize(self.prompt_learner.encode_grouped(self.backbone, ctx.unsqueeze(0))[0].float(), dim=-1)

    def text_features(self) -> Tensor:
        if self._tower:
            return F.normalize(self._tower[0].text_features().float(), dim=-1)
        if self.meta_net is not None:
            raise TypeError("started from CoCoOp, TPT's text features depend on the image: use forward_features")
        return self.text_features_of(self.ctx)

    def start_context(self, image_features: Tensor) -> Tensor:
        """The context each image starts from: ``[B, E] -> [B, M, D]``: the current one (the initial one after a
        reset), or with a CoCoOp start ``initial_ctx + meta_net(f)`` (cocoop.py l.118-127 with ``ctx_only``,
        on the raw feature as ``gen_ctx`` l.175-180, or normalised with ``cocoop_meta_input: normalized``)."""
        b = image_features.shape[0]
        if self.meta_net is None:
            return self.ctx.detach().unsqueeze(0).expand(b, -1, -1)
        x = image_features.float()
        if self.config.cocoop_meta_input == "normalized":
            x = F.normalize(x, dim=-1)
        bias = self.meta_net(x.to(next(self.meta_net.parameters()).dtype)).float()  # [B, D]
        return self.initial_ctx.unsqueeze(0) + bias.unsqueeze(1)

    def forward_features(self, image_features: Tensor) -> Tensor:
        """Logits ``[B, n_cls]`` of the starting prompt, without adaptation."""
        if self.meta_net is None:
            return super().forward_features(image_features)
        with torch.no_grad():
            ctx = self.start_context(image_features)  # [B, M, D]
        img = F.normalize(image_features.float(), dim=-1)
        rows = [self.logits(img[b : b + 1], self.text_features_of(ctx[b]))[0] for b in range(ctx.shape[0])]
        return torch.stack(rows)

    # -------------------------------------------------------------- test time
    def test_time_loss(self, selected_logits: Tensor, text_features: Tensor) -> Tensor:
        """The loss of one tuning step: the entropy of the averaged prediction of the selected views
        (``selected_logits [k, n_cls]``; ``text_features [n_cls, E]`` for subclasses: C-TPT)."""
        return average_prediction_entropy(selected_logits)

    def adapt_and_predict(self, views: Tensor) -> Adapted:
        """Tune ``ctx`` on the views of one image (``views [V, 3, H, W]``, ``views[0]`` the original) and predict
        the original: logits ``[n_cls]`` and the cost (V image forwards, tta_steps + 1 text passes over all
        classes, tta_steps backward passes)."""
        if self._tower:
            return self._adapt_prompted_tower(views)
        cfg = self.config
        steps = int(cfg.tta_steps)
        with torch.no_grad():
            feats = self.encode_images(views)  # [V, E]: the frozen image tower, once per image
        img = F.normalize(feats.float(), dim=-1)
        if self.meta_net is not None:  # TPT+CoCoOp: this image's start, a fresh optimiser (l.55-58, 278-282)
            with torch.no_grad():
                self.ctx.copy_(self.start_context(feats[:1])[0])
            self._reset_optimizer()
        ctx = self.ctx
        optimizer = self._optim()
        selected: Tensor | None = None
        ctx.requires_grad_(True)
        try:
            with torch.enable_grad():
                for _ in range(steps):
                    text = self.text_features_of(ctx)  # [n_cls, E]
                    logits = self.logits(img, text)  # [V, n_cls]
                    if selected is None:  # chosen at the first step, kept for the next ones (l.68-71)
                        selected = select_confident_views(logits.detach(), cfg.selection_p)
                    loss = self.test_time_loss(logits[selected], text)
                    (grad,) = torch.autograd.grad(loss, [ctx])
                    ctx.grad = grad
                    optimizer.step()
                    ctx.grad = None
        finally:
            ctx.requires_grad_(False)
        with torch.no_grad():
            out = self.logits(img[:1], self.text_features_of(ctx))[0]
        return Adapted(out, {"image_forward": int(views.shape[0]), "text_forward": steps + 1, "backward": steps})
