"""The methods and models vlprompt knows, read from ``catalog.json`` without importing torch.

``vlprompt methods`` and ``vlprompt models`` answer from this snapshot in well under a second. It is written by
``scripts/make_catalog.py`` from the live library (method registry, open_clip's configs and pretrained tags, and
which methods really run on a tiny model of each pair of tower kinds) and ``tests/test_catalog.py`` fails when it
no longer matches. Where the snapshot cannot be trusted — another open_clip release is installed, or a plugin
package adds methods or models — :func:`snapshot_usable` says so and the CLI asks the live library instead.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata, resources
from typing import Any

__all__ = ["BUILTIN_PLUGINS", "load_catalog", "method_names", "model_methods", "snapshot_usable", "support_key"]

#: entry points of the ``vlprompt.plugins`` group that vlprompt itself declares (its embedded world)
BUILTIN_PLUGINS = frozenset({"world"})


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, Any]:
    """The snapshot: ``{"open_clip_version", "methods": {name: {...}}, "models": [...], "support": {...}}``."""
    text = resources.files("vlprompt.core").joinpath("catalog.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def snapshot_usable() -> tuple[bool, str]:
    """``(True, "")`` when the snapshot describes this installation, else ``(False, why)``: the installed
    open_clip differs from the one it was made with, or a plugin package (an entry point of the
    ``vlprompt.plugins`` group other than vlprompt's own) may register methods, backbones or models."""
    try:
        installed = metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:
        installed = ""
    made_with = str(load_catalog().get("open_clip_version", ""))
    if installed != made_with:
        return False, f"open_clip {installed or '(not installed)'} is installed, the catalogue lists {made_with}"
    plugins = sorted(ep.name for ep in metadata.entry_points(group="vlprompt.plugins")
                     if ep.name not in BUILTIN_PLUGINS)
    if plugins:
        return False, f"plugin packages are installed ({', '.join(plugins)})"
    return True, ""


def method_names() -> list[str]:
    """The built-in methods, sorted."""
    return sorted(load_catalog()["methods"])


def support_key(image_tower: str, text_kind: str) -> str:
    """``"<image kind>|<text kind>"``: the key of :func:`model_methods` (``timm:<name>`` counts as ``timm``)."""
    image = "timm" if image_tower.startswith("timm:") else image_tower
    return f"{image}|{text_kind}"


def model_methods(image_tower: str, text_kind: str) -> list[str] | None:
    """The methods measured to run on a model with these towers (None: the pair was not measured)."""
    found = load_catalog()["support"].get(support_key(image_tower, text_kind))
    return None if found is None else list(found)
