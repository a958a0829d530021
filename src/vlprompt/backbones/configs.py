"""Model configs and weights that vlprompt and its plugins add to open_clip's registry.

vlprompt's own tiny test towers live as open_clip JSON configs in ``model_configs/``; plugins (the
synthetic world, third-party packages) add their folders with :func:`register_model_config_dir` and
their shipped weights with :func:`register_pretrained`. Configs are added to open_clip's registry on
first use, so every model loads through exactly the same factory as real ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from vlprompt.core.plugins import load_plugins

if TYPE_CHECKING:
    import torch

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_CONFIG_DIRS: list[Path] = [MODEL_CONFIG_DIR]
_ADDED: set[Path] = set()

#: Weights of one registered tag: a whole-model file, or parts (state-dict key prefix -> file; each
#: tensor comes from the file of the longest prefix its name starts with, "" matching everything).
WeightsSpec = Path | dict[str, Path]

#: Pretrained tags that vlprompt or a plugin provides: (model name, tag) -> weights.
VLPROMPT_PRETRAINED: dict[tuple[str, str], WeightsSpec] = {}


def register_model_config_dir(path: str | Path) -> None:
    """Add a folder of open_clip JSON model configs (one ``<name>.json`` per model)."""
    path = Path(path)
    if path not in _CONFIG_DIRS:
        _CONFIG_DIRS.append(path)


def register_pretrained(model: str, tag: str, path: str | Path | Mapping[str, str | Path]) -> None:
    """Make ``--model model --pretrained tag`` load the weights file ``path``.

    ``path`` may also map state-dict key prefixes to safetensors files, for a model assembled from
    parts (the world ViT: ``{"visual.": its image tower, "": the world ResNet's file for the rest}``).
    """
    if isinstance(path, Mapping):
        VLPROMPT_PRETRAINED[(model, tag)] = {str(k): Path(v) for k, v in path.items()}
    else:
        VLPROMPT_PRETRAINED[(model, tag)] = Path(path)


def weights_files(spec: WeightsSpec) -> list[Path]:
    """Every file a registered weights spec reads."""
    return list(spec.values()) if isinstance(spec, dict) else [spec]


def load_parts(model: torch.nn.Module, parts: Mapping[str, Path]) -> None:
    """Fill ``model``'s state dict from safetensors ``parts`` (key prefix -> file, longest prefix wins).

    Raises:
        ValueError: a tensor of the model is in none of its files, or has another shape there.
    """
    from safetensors import safe_open

    prefixes = sorted(parts, key=len, reverse=True)
    handles = {p: safe_open(str(parts[p]), framework="pt") for p in prefixes}
    keys = {p: set(h.keys()) for p, h in handles.items()}
    state = {}
    for name, current in model.state_dict().items():
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None or name not in keys[prefix]:
            raise ValueError(f"tensor '{name}' is not in the weights file for prefix '{prefix}'")
        tensor = handles[prefix].get_tensor(name)
        if tensor.shape != current.shape:
            raise ValueError(f"tensor '{name}' has shape {tuple(tensor.shape)} in {parts[prefix].name}, "
                             f"the model wants {tuple(current.shape)}")
        state[name] = tensor
    model.load_state_dict(state, strict=True)


def pretrained_weights() -> dict[tuple[str, str], WeightsSpec]:
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
