"""vlprompt's own open_clip model configs (tiny test models and the synthetic-world model).

They live as open_clip JSON configs in ``model_configs/`` and are added to open_clip's registry
on first use, so they load through exactly the same factory as real models.
"""

from __future__ import annotations

from pathlib import Path

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Add ``model_configs/*.json`` to open_clip's model registry (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True


def vlprompt_model_names() -> list[str]:
    """Names of the configs vlprompt ships (``vlprompt-test-vit``, ``vlprompt-test-rn``, ...)."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
