"""The synthetic world as a vlprompt plugin (entry point ``vlprompt.plugins: world``).

``register()`` adds what the world provides through the same public registries a third-party
package would use: its datasets (``world_shapes``, ``world_objects``, ...), its open_clip model
configs (``vlprompt-world-rn``, ``vlprompt-world-vit``), their shipped weights under the pretrained
tag ``world`` and its word corpus ``world`` (NegLabel / CSP, :mod:`vlprompt.world.words`). The ViT ships
only its image tower (distilled from the ResNet by :mod:`vlprompt.world.distill`); the rest of its
weights, the text tower the two models share, is read from the ResNet's file, so ``--model vlprompt-world-vit
--pretrained world`` loads the assembled model.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
WEIGHTS_DIR = HERE / "weights"
RN_WEIGHTS = WEIGHTS_DIR / "vlprompt-world-rn.safetensors"
#: model -> weights file, or parts (state-dict key prefix -> file; see backbones.configs.register_pretrained)
SHIPPED: dict[str, Path | dict[str, Path]] = {
    "vlprompt-world-rn": RN_WEIGHTS,
    "vlprompt-world-vit": {"visual.": WEIGHTS_DIR / "vlprompt-world-vit-visual.safetensors", "": RN_WEIGHTS},
}
TAG = "world"


def register() -> None:
    """Register the world's datasets, model configs and shipped weights."""
    from vlprompt.backbones.configs import register_model_config_dir, register_pretrained

    register_model_config_dir(HERE / "model_configs")
    for model, path in SHIPPED.items():
        register_pretrained(model, TAG, path)
    import vlprompt.world.datasets  # noqa: F401  (its import registers the datasets)
    from vlprompt.methods.neglabel.corpus import register_word_corpus
    from vlprompt.world.words import world_corpus

    register_word_corpus("world", world_corpus)  # NegLabel / CSP: method.corpus: world
