"""Zero-shot CLIP (Radford et al., ICML 2021) with hand-crafted prompts or a prompt ensemble."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import PromptMethod
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

    def __init__(self, backbone: Backbone, classnames: list[str], config: ZeroShotConfig) -> None:
        super().__init__(backbone, classnames, config)
        self.register_buffer("classifier", self._build_classifier(), persistent=False)

    @torch.no_grad()
    def _build_classifier(self) -> Tensor:
        names = [c.replace("_", " ") for c in self.classnames]
        chunk = self.config.class_chunk
        feats = []
        for start in range(0, len(names), chunk):
            part = names[start : start + chunk]
            acc = None
            for template in self.config.templates:
                ids = self.backbone.tokenize([template.format(n) for n in part], what="the prompt")
                f = F.normalize(self.backbone.encode_text(ids).float(), dim=-1)  # [chunk, E]
                acc = f if acc is None else acc + f
            feats.append(F.normalize(acc / len(self.config.templates), dim=-1))
        return torch.cat(feats)  # [n_cls, E]

    def text_features(self) -> Tensor:
        return self.classifier


register_method("zeroshot", ZeroShotConfig, ZeroShotCLIP, training="none", supervision="none")

__all__ = ["ZeroShotCLIP", "ZeroShotConfig"]
