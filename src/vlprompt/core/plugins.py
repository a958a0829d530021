"""Extensions: the one list of built-ins, and packages that register more through an entry point.

Every extension (a method, a backbone family, a dataset reader) is declared once, where it is
registered: importing its module runs its registration (``register_method``,
``register_backbone_family``, ``register_dataset``). :data:`BUILTINS` lists the modules of vlprompt's
own extensions, one line each, by kind; a registry calls :func:`load_extensions` with its kind before a
look-up, which imports them and then runs the plugins.

A plugin (an outside package) declares ``[project.entry-points."vlprompt.plugins"] name =
"pkg.module:register"`` and its ``register()`` calls the same public registries (``register_method``,
``register_backbone_family``, ``register_dataset``, ``register_model_config_dir``, ``register_pretrained``).
vlprompt's own synthetic world is such a plugin, so nothing in the library below it names it.

The modules are named as text and imported on demand, so this bottom layer imports nothing above it.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points

GROUP = "vlprompt.plugins"
_state = {"loaded": False}

#: vlprompt's built-in extensions by kind: the modules whose import registers them. A new built-in is one
#: module plus one line here.
BUILTINS: dict[str, tuple[str, ...]] = {
    "backbone_families": (
        "vlprompt.backbones.openclip",
        "vlprompt.backbones.hf",
    ),
    "methods": (
        "vlprompt.methods.zeroshot",
        "vlprompt.methods.coop",
        "vlprompt.methods.cocoop",
        "vlprompt.methods.upl",
        "vlprompt.methods.locoop",
        "vlprompt.methods.sct",
        "vlprompt.methods.negprompt",
        "vlprompt.methods.gallop",
        "vlprompt.methods.idlike",
        "vlprompt.methods.neglabel",
        "vlprompt.methods.csp",
        "vlprompt.methods.kgcoop",
        "vlprompt.methods.tcp",
        "vlprompt.methods.prograd",
        "vlprompt.methods.linear_probe",
        "vlprompt.methods.clip_adapter",
        "vlprompt.methods.tip_adapter",
        "vlprompt.methods.ape",
        "vlprompt.methods.gda",
        "vlprompt.methods.clip_lora",
        "vlprompt.methods.ivlp",
        "vlprompt.methods.maple",
        "vlprompt.methods.promptsrc",
        "vlprompt.methods.coprompt",
        "vlprompt.methods.dept",
        "vlprompt.methods.mma",
        "vlprompt.methods.promptkd",
        "vlprompt.methods.tpt",
        "vlprompt.methods.ctpt",
        "vlprompt.methods.zero",
        "vlprompt.methods.mta",
        "vlprompt.methods.tda",
        "vlprompt.methods.boostadapter",
        "vlprompt.methods.dpe",
    ),
    "datasets": (
        "vlprompt.data.coop_layouts",
        "vlprompt.data.custom",
        "vlprompt.data.hf_datasets",
        "vlprompt.data.ood_sets",
    ),
}
_imported: set[str] = set()


def load_extensions(kind: str) -> None:
    """Import the built-in extensions of ``kind`` (a key of :data:`BUILTINS`), then every plugin, once per
    process (idempotent, re-entrant: an extension's import may itself look up a registry)."""
    if kind not in BUILTINS:
        raise KeyError(f"unknown extension kind {kind!r}; known: {', '.join(BUILTINS)}")
    if kind not in _imported:
        _imported.add(kind)
        for module in BUILTINS[kind]:
            importlib.import_module(module)
    load_plugins()


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
