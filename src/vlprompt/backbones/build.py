"""One way to build a backbone from a config section: :func:`build_backbone`.

Every workflow (training, evaluation, zero-shot, OOD, pseudo-labelling, the demo) builds its frozen
backbone here, so the weight dtype and download cache of ``backbone:`` are honoured everywhere.
"""

from __future__ import annotations

from typing import Protocol

import torch

from vlprompt.backbones.openclip import OpenClipBackbone, load_backbone, shared_backbone


class BackboneSpec(Protocol):
    """What :func:`build_backbone` reads: the ``backbone:`` config section (``BackboneConfig``)."""

    model: str
    pretrained: str | None
    weight_dtype: str
    cache_dir: str | None


def build_backbone(spec: BackboneSpec, *, device: str | torch.device = "cpu",
                   shared: bool = True) -> OpenClipBackbone:
    """The frozen backbone described by ``spec`` on ``device``.

    Args:
        spec: the ``backbone:`` section (model name, pretrained tag or file, weight dtype, cache dir).
        device: where the weights go.
        shared: reuse one instance per process for equal specs (frozen backbones are safely shared
            between runs, so their feature cache serves every seed and method of a sweep); False builds
            a private copy.
    """
    load = shared_backbone if shared else load_backbone
    return load(spec.model, spec.pretrained, device=device, precision=spec.weight_dtype, cache_dir=spec.cache_dir)
