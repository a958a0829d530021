"""The live answers behind ``vlprompt methods`` / ``vlprompt models``: the method registry and open_clip.

:mod:`vlprompt.core.catalog` serves a snapshot of these (``catalog.json``, written by ``scripts/make_catalog.py``)
without importing torch; these functions import the library and are used when the snapshot does not describe the
installation (a plugin package, another open_clip) and to write and check the snapshot.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

__all__ = ["describe_methods", "describe_models", "describe_towers"]


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, other objects as their text)."""
    return json.loads(json.dumps(value, default=str))


def describe_methods() -> dict[str, dict[str, Any]]:
    """``{name: {"summary", "options": [{"name", "default", "help"}], "training", "supervision", "adaptation",
    "local_features"}}`` for every registered method (plugins included), sorted by name."""
    from vlprompt.methods.registry import get_method, list_methods

    out: dict[str, dict[str, Any]] = {}
    for name in sorted(list_methods()):
        entry = get_method(name)
        options = []
        for f in dataclasses.fields(entry.config_cls):
            if f.default is not dataclasses.MISSING:
                default: Any = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            options.append({"name": f.name, "default": _plain(default), "help": str(f.metadata.get("help", ""))})
        caps = entry.capabilities_for()
        out[name] = {"summary": entry.summary, "options": options, "training": caps.training,
                     "supervision": caps.supervision, "adaptation": caps.adaptation,
                     "local_features": caps.local_features}
    return out


def describe_models() -> tuple[str, list[dict[str, Any]]]:
    """``(open_clip version, rows)``: every open_clip architecture (plus vlprompt's and plugins' configs) with
    its family, text-tower kind, image tower, local features, what it needs and its pretrained tags."""
    import open_clip

    from vlprompt.backbones.catalog import open_clip_catalog
    from vlprompt.backbones.openclip import list_pretrained_tags

    rows = [{"name": e.name, "family": e.family, "text_kind": e.text_kind, "image_tower": e.image_tower,
             "local_features": e.local_features, "needs": e.needs, "tags": list(list_pretrained_tags(e.name))}
            for e in open_clip_catalog()]
    return str(open_clip.__version__), rows


def describe_towers() -> dict[str, Any]:
    """``{"tower_kinds": {kind: text}, "families": [{"name", "prefix", "description"}]}`` (built-ins and plugins)."""
    from vlprompt.backbones.base import TOWER_KINDS, backbone_families

    return {"tower_kinds": dict(TOWER_KINDS),
            "families": [{"name": f.name, "prefix": f.prefix, "description": f.description}
                         for f in sorted(backbone_families().values(), key=lambda f: f.name)]}
