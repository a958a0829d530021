"""One way to build a backbone from a config section: :func:`build_backbone`.

Every workflow (training, evaluation, zero-shot, OOD, pseudo-labelling, the demo) builds its frozen
backbone here, so the weight dtype and download cache of ``backbone:`` are honoured everywhere, and
every family shares one per-process cache of loaded backbones.
"""

from __future__ import annotations

from typing import Protocol

import torch

from vlprompt.backbones.base import Backbone, family_of

#: (family, model, pretrained, device, weight dtype, cache dir) -> the backbone loaded for it.
_CACHE: dict[tuple[str, str, str | None, str, str, str | None], Backbone] = {}


class BackboneSpec(Protocol):
    """What :func:`build_backbone` reads: the ``backbone:`` config section (``BackboneConfig``)."""

    model: str
    pretrained: str | None
    weight_dtype: str
    cache_dir: str | None


def build_backbone(spec: BackboneSpec, *, device: str | torch.device = "cpu",
                   shared: bool = True) -> Backbone:
    """The frozen backbone described by ``spec`` on ``device``, loaded by its family.

    ``spec.model`` names the family (:func:`vlprompt.backbones.base.family_of`): ``<family>:<model>``
    (``hf:<dir or hub id>``, a plugin's ``toy:...``); any other string is an open_clip model name.

    Args:
        spec: the ``backbone:`` section (model name, pretrained tag or file, weight dtype, cache dir).
        device: where the weights go.
        shared: reuse one instance per process for equal family, model, pretrained, device, weight
            dtype and cache dir (frozen backbones are safely shared between runs, so their feature
            cache serves every seed and method of a sweep); False builds a private copy.
    """
    family, model = family_of(spec.model)
    key = (family.name, model, spec.pretrained, str(torch.device(device)), spec.weight_dtype, spec.cache_dir)
    if shared and key in _CACHE:
        return _CACHE[key]
    backbone = family.load(model, spec.pretrained, device=device, precision=spec.weight_dtype,
                           cache_dir=spec.cache_dir)
    if shared:
        _CACHE[key] = backbone
    return backbone
