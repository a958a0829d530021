"""An online test-time method for the stream tests (registered by :func:`register`, also in a subprocess).

``cache_probe`` keeps, per predicted class, the sum of the original views' features and their count (state
``sums [n_cls, E]``, ``counts [n_cls]``, carried across the stream like TDA's cache); its logits are the views'
mean zero-shot logits plus ``10 * cos(f, mean feature of the class)`` for every class seen so far, so every
prediction depends on the images before it (the stream's order) and on a state a resume must restore exactly.
``sleep`` slows each image down (a process can then be killed mid-stream).
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F

from vlprompt.methods.base import Adapted, PromptMethod, template_text_features
from vlprompt.methods.capabilities import Capabilities

NAME = "cache_probe"


@dataclasses.dataclass
class CacheProbeConfig:
    sleep: float = 0.0


class CacheProbe(PromptMethod):
    def __init__(self, backbone, classnames, config, context=None):
        super().__init__(backbone, classnames, config, context)
        feats = template_text_features(backbone, self.classnames, list(self.context.templates))
        self.register_buffer("classifier", feats, persistent=False)
        self.reset_adaptation()

    def text_features(self):
        return self.classifier

    def reset_adaptation(self):
        self.sums = torch.zeros(self.n_cls, self.backbone.embed_dim)
        self.counts = torch.zeros(self.n_cls, dtype=torch.long)

    def adaptation_state(self):
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_adaptation_state(self, state):
        self.sums = state["sums"].clone().float()
        self.counts = state["counts"].clone().long()

    def adaptation_size(self):
        return int(self.counts.sum())

    def adapt_and_predict(self, views):
        if self.config.sleep:
            time.sleep(self.config.sleep)
        with torch.no_grad():
            feats = F.normalize(self.encode_images(views).float(), dim=-1)
            logits = self.logits(feats, self.classifier).mean(dim=0)
            seen = self.counts > 0
            if bool(seen.any()):
                means = F.normalize(self.sums, dim=-1)
                logits = logits + 10.0 * torch.where(seen, feats[0] @ means.t(), torch.zeros_like(logits))
            pred = int(logits.argmax())
            self.sums[pred] += feats[0]
            self.counts[pred] += 1
        return Adapted(logits, {"image_forward": int(views.shape[0]), "text_forward": 0, "backward": 0})


def register() -> str:
    from vlprompt.methods import registry

    registry.list_methods()
    if NAME not in registry._METHODS:
        registry.register_method(NAME, CacheProbeConfig, CacheProbe, capabilities=Capabilities(
            training="none", supervision="none", adaptation="online"))
    return NAME
