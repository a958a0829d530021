"""CoOp: Context Optimization (Zhou, Yang, Loy, Liu; IJCV 2022, "Learning to Prompt for VLMs")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.coop.config import CoOpConfig
from vlprompt.methods.coop.prompt import PromptLearner


class CoOp(PromptMethod):
    """Learned context vectors, frozen image and text encoders, cross-entropy.

    ``p(y=c|x) = softmax_c( logit_scale * cos(f(x), g(t_c)) )`` with
    ``t_c = [SOS][V]1..[V]M[CLASS_c].[EOT]`` (Eq. 2-3 of the paper).
    """

    def __init__(self, backbone: Backbone, classnames: list[str], config: CoOpConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.prompt_learner = PromptLearner(
            backbone,
            self.classnames,
            n_ctx=config.n_ctx,
            ctx_init=config.ctx_init,
            csc=config.csc,
            class_token_position=config.class_token_position,
            init_std=config.init_std,
        )

    @property
    def ctx(self) -> Tensor:
        """The learned context: ``[n_ctx, D]`` (unified) or ``[n_cls, n_ctx, D]`` (CSC)."""
        return self.prompt_learner.ctx

    def raw_text_features(self) -> Tensor:
        """``[n_cls, E]`` features of the learned prompts before L2 normalisation (the text tower's projected EOT
        token; differentiable w.r.t. ctx). Unified context at the end: exact shared-prefix encoding; otherwise
        (CSC, middle / front) the full prompts, cut after the last EOT."""
        pl = self.prompt_learner
        if pl.shares_prefix:
            return pl.encode_grouped(self.backbone, pl.ctx.unsqueeze(0))[0]
        return self.backbone.encode_text_embeddings(pl(), pl.eot_index, ids=pl.token_ids)

    def text_features(self) -> Tensor:
        """``[n_cls, E]`` normalised features of the learned prompts (:meth:`raw_text_features`, normalised)."""
        return F.normalize(self.raw_text_features().float(), dim=-1)
