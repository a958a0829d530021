"""Zero-shot CLIP (Radford et al., ICML 2021) with hand-crafted prompts or a prompt ensemble."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import MethodContext, PromptMethod, template_text_features
from vlprompt.methods.registry import register_method


@dataclass
class ZeroShotConfig:
    """Templates with one ``{}`` for the class name; several = prompt ensemble (CLIP Sec. 3.1.4)."""

    templates: list[str] = field(
        default_factory=lambda: ["a photo of a {}."],
        metadata={"help": "templates; several are ensembled (mean of normalised text features)"},
    )
    class_chunk: int = field(default=256, metadata={"help": "classes encoded per text pass (memory bound)"})

    def __post_init__(self) -> None:
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        if not isinstance(self.templates, list) or not self.templates:
            raise ConfigError("option method.templates must be a non-empty list of templates")
        for t in self.templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ConfigError(f"option method.templates: template {t!r} must contain exactly one '{{}}'")
        if isinstance(self.class_chunk, bool) or not isinstance(self.class_chunk, int) or self.class_chunk < 1:
            raise ConfigError(f"option method.class_chunk must be a positive integer, got {self.class_chunk!r}")


class ZeroShotCLIP(PromptMethod):
    """Zero-shot classifier: ``t_c = normalise(mean_k normalise(g(template_k(c))))``.

    Nothing is learned; text features are computed once and kept as a buffer ``[n_cls, E]``.
    """

    method_name = "zeroshot"

    def __init__(self, backbone: Backbone, classnames: list[str], config: ZeroShotConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.register_buffer("classifier", self._build_classifier(), persistent=False)

    def _build_classifier(self) -> Tensor:
        return template_text_features(self.backbone, self.classnames, self.config.templates, self.config.class_chunk)

    def text_features(self) -> Tensor:
        return self.classifier


register_method("zeroshot", ZeroShotConfig, ZeroShotCLIP, training="none", supervision="none")



def zeroshot_classifier(backbone: Backbone, classnames: list[str], templates: list[str]) -> ZeroShotCLIP:
    """The zero-shot CLIP classifier of ``classnames`` with ``templates`` (what workflows use as the baseline,
    the OOD reference and UPL's pseudo-labeller)."""
    return ZeroShotCLIP(backbone, classnames, ZeroShotConfig(templates=list(templates)))


__all__ = ["ZeroShotCLIP", "ZeroShotConfig", "zeroshot_classifier"]
