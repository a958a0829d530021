"""Plugins: packages that register datasets, backbones or methods through an entry point.

A plugin declares ``[project.entry-points."vlprompt.plugins"] name = "pkg.module:register"`` and its
``register()`` calls the public registries (``register_dataset``, ``register_model_config_dir``,
``register_pretrained``, ``register_method``). vlprompt's own synthetic world is such a plugin, so
nothing in the library below it names it. Registries call :func:`load_plugins` before a look-up.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

GROUP = "vlprompt.plugins"
_state = {"loaded": False}


def load_plugins() -> None:
    """Run every installed plugin's ``register()`` once per process (idempotent, re-entrant).

    A plugin that fails to load is reported with a warning and skipped: one broken third-party
    package must not take the library down.
    """
    if _state["loaded"]:
        return
    _state["loaded"] = True  # before loading: a plugin's register() may itself look up a registry
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            ep.load()()
        except Exception as exc:  # noqa: BLE001 - any failure of foreign code becomes a warning
            warnings.warn(f"vlprompt plugin '{ep.name}' ({ep.value}) failed to load: {exc}", stacklevel=2)
