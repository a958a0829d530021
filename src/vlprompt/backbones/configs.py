"""Model configs and weights that vlprompt and its plugins add to open_clip's registry.

vlprompt's own tiny test towers live as open_clip JSON configs in ``model_configs/``; plugins (the
synthetic world, third-party packages) add their folders with :func:`register_model_config_dir` and
their shipped weights with :func:`register_pretrained`. Configs are added to open_clip's registry on
first use, so every model loads through exactly the same factory as real ones.
"""

from __future__ import annotations

from pathlib import Path

from vlprompt.core.plugins import load_plugins

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_CONFIG_DIRS: list[Path] = [MODEL_CONFIG_DIR]
_ADDED: set[Path] = set()

#: Pretrained tags that vlprompt or a plugin provides: (model name, tag) -> weights file.
VLPROMPT_PRETRAINED: dict[tuple[str, str], Path] = {}


def register_model_config_dir(path: str | Path) -> None:
    """Add a folder of open_clip JSON model configs (one ``<name>.json`` per model)."""
    path = Path(path)
    if path not in _CONFIG_DIRS:
        _CONFIG_DIRS.append(path)


def register_pretrained(model: str, tag: str, path: str | Path) -> None:
    """Make ``--model model --pretrained tag`` load the weights file ``path``."""
    VLPROMPT_PRETRAINED[(model, tag)] = Path(path)


def pretrained_weights() -> dict[tuple[str, str], Path]:
    """Every registered (model, tag) -> weights file, plugins loaded."""
    load_plugins()
    return dict(VLPROMPT_PRETRAINED)


def register_model_configs() -> None:
    """Add every registered config folder to open_clip's model registry (idempotent)."""
    load_plugins()
    import open_clip

    for path in _CONFIG_DIRS:
        if path not in _ADDED:
            open_clip.add_model_config(path)
            _ADDED.add(path)


def vlprompt_model_names() -> list[str]:
    """Names of the configs vlprompt and its plugins add (``vlprompt-test-vit``, ``vlprompt-world-rn``, ...)."""
    load_plugins()
    return sorted(p.stem for d in _CONFIG_DIRS for p in d.glob("*.json"))
