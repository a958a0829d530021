"""Zero-shot CLIP (Radford et al., ICML 2021): the classifier of hand-crafted prompts (one template or an
ensemble), or of the classes' descriptions (CuPL, Pratt et al., ICCV 2023: ``method.descriptions``); nothing is
learned."""

from __future__ import annotations

from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import MethodContext, PromptMethod, description_text_features, template_text_features
from vlprompt.methods.zeroshot.config import ZeroShotConfig


class ZeroShotCLIP(PromptMethod):
    """Zero-shot classifier: ``t_c = normalise(mean_k normalise(g(template_k(c))))``.

    With ``method.descriptions`` ``only`` the mean runs over the class's description sentences instead (the
    context's descriptions, option data.descriptions_file), with ``with_templates`` over the templates and the
    sentences together (CuPL ``classify_imagenet.py`` l.39-63). Nothing is learned; text features are computed once
    and kept as a buffer ``[n_cls, E]``.
    """

    classifier: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: ZeroShotConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.register_buffer("classifier", self._build_classifier(), persistent=False)

    def _build_classifier(self) -> Tensor:
        mode = self.config.descriptions
        if mode == "off":
            return template_text_features(self.backbone, self.classnames, self.config.templates,
                                          self.config.class_chunk)
        if not self.context.descriptions:
            raise ConfigError(f"method.descriptions: {mode} needs class descriptions: give data.descriptions_file "
                              "(a JSON file {class name: [sentence, ...]}) or put the file at "
                              "<data.root>/descriptions/<dataset>.json")
        by_class = dict(self.context.descriptions)
        sentences = []
        for name in self.classnames:
            found = by_class.get(name)
            if found is None:
                raise ConfigError(f"method.descriptions: {mode}: the class descriptions have no sentences for "
                                  f"class '{name}'")
            sentences.append(found)
        templates = self.config.templates if mode == "with_templates" else ()
        return description_text_features(self.backbone, self.classnames, sentences, templates,
                                         chunk=self.config.class_chunk)

    def text_features(self) -> Tensor:
        return self.classifier


def zeroshot_classifier(backbone: Backbone, classnames: list[str], templates: list[str], *,
                        descriptions: str = "off", context: MethodContext | None = None) -> ZeroShotCLIP:
    """The zero-shot CLIP classifier of ``classnames`` with ``templates`` (what workflows use as the baseline,
    the OOD reference and UPL's pseudo-labeller); ``descriptions`` (``method.descriptions``) with the
    ``context``'s class descriptions."""
    return ZeroShotCLIP(backbone, classnames, ZeroShotConfig(templates=list(templates), descriptions=descriptions),
                        context)
