"""Zero-shot CLIP (Radford et al., ICML 2021): the classifier of hand-crafted prompts (one template or an
ensemble); nothing is learned."""

from __future__ import annotations

from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodContext, PromptMethod, template_text_features
from vlprompt.methods.zeroshot.config import ZeroShotConfig


class ZeroShotCLIP(PromptMethod):
    """Zero-shot classifier: ``t_c = normalise(mean_k normalise(g(template_k(c))))``.

    Nothing is learned; text features are computed once and kept as a buffer ``[n_cls, E]``.
    """


    def __init__(self, backbone: Backbone, classnames: list[str], config: ZeroShotConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.register_buffer("classifier", self._build_classifier(), persistent=False)

    def _build_classifier(self) -> Tensor:
        return template_text_features(self.backbone, self.classnames, self.config.templates, self.config.class_chunk)

    def text_features(self) -> Tensor:
        return self.classifier


def zeroshot_classifier(backbone: Backbone, classnames: list[str], templates: list[str]) -> ZeroShotCLIP:
    """The zero-shot CLIP classifier of ``classnames`` with ``templates`` (what workflows use as the baseline,
    the OOD reference and UPL's pseudo-labeller)."""
    return ZeroShotCLIP(backbone, classnames, ZeroShotConfig(templates=list(templates)))
