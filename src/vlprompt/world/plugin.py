"""The synthetic world as a vlprompt plugin (entry point ``vlprompt.plugins: world``).

``register()`` adds what the world provides through the same public registries a third-party
package would use: its datasets (``world_shapes``, ``world_objects``, ...), its open_clip model
configs (``vlprompt-world-rn``, ``vlprompt-world-vit``) and the shipped weights of
``vlprompt-world-rn`` under the pretrained tag ``world``. (``vlprompt-world-vit`` is registered as a
config only: it can be trained with ``python -m vlprompt.world.pretrain`` but no weights are shipped.)
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
WEIGHTS_DIR = HERE / "weights"
SHIPPED = {"vlprompt-world-rn": WEIGHTS_DIR / "vlprompt-world-rn.safetensors"}
TAG = "world"


def register() -> None:
    """Register the world's datasets, model configs and shipped weights."""
    from vlprompt.backbones.configs import register_model_config_dir, register_pretrained

    register_model_config_dir(HERE / "model_configs")
    for model, path in SHIPPED.items():
        register_pretrained(model, TAG, path)
    import vlprompt.world.datasets  # noqa: F401  (its import registers the datasets)
