"""TCP: Textual-based Class-aware Prompt tuning (Yao, Zhang, Xu; CVPR 2024).

KgCoOp's learned context, plus class-aware tokens made from each class's frozen hand-crafted text feature by the
Textual Knowledge Embedding (TKE) and written into the text tower at block ``l`` (htyao89/Textual-based_Class-aware_
prompt_tuning @ bd97bec, ``trainers/tcp.py`` and ``trainers/clip_text/model.py``)::

    w_c^clip = normalise(g("a photo of a {c}."))                          [n_cls, E]  (tcp.py l.159-166)
    T_c      = TKE(w_c^clip) = W_2 QuickGELU(W_1 w_c^clip + b_1) + b_2,   E -> E/4 -> M*D, as [M, D]
                                                                          (l.168-173, l.194-195)
    prompt_c = [SOS] v_1 .. v_M  <template text around c> [EOT]           (l.177-186, l.196-207)
    t_c      = g(prompt_c) with positions 1..M of block l's input set to
               a T_c + (1 - a) h_{1..M}   (l = 8, a = 1: clip_text/model.py l.268-278)
    logits   = logit_scale * cos(f(x), t_c)                                                  (tcp.py l.252)
    L        = CE(logits, y) + W (1 - 1/C sum_c cos(t_c, w_c^clip)),   W = 8.0                (l.254-257)

The loss is KgCoOp's (this class subclasses :class:`~vlprompt.methods.kgcoop.model.KgCoOp`; its ``w_c^clip`` buffer
comes from the build context's templates). ``T_c`` depends only on the class's name, so new classes get theirs at
test time (tcp.py builds the prompt learner from the evaluated classes). Learned: ``prompt_learner.ctx [M, D]`` and
``meta_net`` (TKE). Needs an open_clip text tower (run block by block, :mod:`vlprompt.backbones.deep_prompts`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import encode_text_class_tokens, text_depth
from vlprompt.methods.base import MethodContext
from vlprompt.methods.coop.prompt import PromptLearner
from vlprompt.methods.kgcoop.model import KgCoOp
from vlprompt.methods.tcp.config import TCPConfig


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (trainers/tcp.py l.109-111, the TKE's activation)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class TCP(KgCoOp):
    """KgCoOp + class-aware tokens ``TKE(w_c^clip) [n_cls, M, D]`` at the input of text block ``insert_layer``."""

    def __init__(self, backbone: Backbone, classnames: list[str], config: TCPConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        # TCP's own prompt text (tcp.py l.60-76, l.177-186): "X X X X" + the template's words around the class name;
        # it replaces the CoOp prompt learner built by CoOp.__init__ ("X X X X {name}.")
        before, after = config.prompt_template.split("{}")
        self.prompt_learner = PromptLearner(backbone, [before + name for name in self.classnames], n_ctx=config.n_ctx,
                                            ctx_init=config.ctx_init, csc=False, class_token_position="end",
                                            init_std=config.init_std, name_suffix=after)
        #: the block whose input takes the class-aware tokens: clamped to the tower's last block
        self.insert_layer = min(config.insert_layer, text_depth(backbone) - 1)
        embed, width, m = backbone.embed_dim, backbone.text_width, self.prompt_learner.n_ctx
        hidden = max(1, embed // config.hidden_ratio)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(embed, hidden)),
            ("relu", QuickGELU()),
            ("linear2", nn.Linear(hidden, m * width)),
        ])).to(backbone.device)

    def class_tokens(self) -> Tensor:
        """TKE: ``[n_cls, E]`` frozen normalised hand-crafted text features -> ``[n_cls, M, D]`` class-aware tokens."""
        knowledge = self.clip_text_features.to(next(self.meta_net.parameters()).device)
        return self.meta_net(knowledge).view(self.n_cls, self.prompt_learner.n_ctx, -1)

    def text_features(self) -> Tensor:
        """``[n_cls, E]`` normalised text features of the prompts with the class-aware tokens inserted."""
        pl = self.prompt_learner
        feats = encode_text_class_tokens(self.backbone, pl(), pl.eot_index, self.class_tokens(),
                                         layer=self.insert_layer, weight=self.config.insert_weight)
        return F.normalize(feats.float(), dim=-1)
