"""vlprompt: prompt learning on frozen CLIP-family vision-language models.

Quick use::

    import vlprompt
    backbone = vlprompt.load_backbone("ViT-B-16-quickgelu", pretrained="openai")  # or a local file
    model = vlprompt.build_method("coop", backbone, classnames, n_ctx=16, csc=False,
                                  class_token_position="end", ctx_init=None)
    logits = model(images)   # [B, n_cls]; model.ctx: [n_ctx, dim] or [n_cls, n_ctx, dim]

Training from a config returns the run's result (a :class:`~vlprompt.core.results.RunResult`, the record
``metrics.json`` holds)::

    result = vlprompt.train(vlprompt.load_config("cfg.yaml"))
    result.test["accuracy"], result.backbone.label, result.config_digest   # result.to_dict(): the JSON

Test-time adaptation on target datasets (TPT's tables; accuracy, ECE and cost per target)::

    out = vlprompt.tta(vlprompt.load_config("tpt.yaml"), "imagenet_shifts", "runs/tta/tpt")
    out["per_target"]["imagenet_a"]["accuracy"], out["per_target"]["imagenet_a"]["ece"]

OOD detection per OOD set and near / far group (a prompt file, a training-free OOD method such as NegLabel, or
zero-shot CLIP); on features, any built method scores images itself::

    out = vlprompt.ood(vlprompt.load_config("configs/neglabel/imagenet.yaml"), None, ["ssb_hard", "inaturalist"])
    out["group_average"]["near"]["neglabel"]["auroc"], out["per_set"]["inaturalist"]["neglabel"]["fpr95"]
    scores = method.ood_score(method.ood_features(images), "neglabel")   # [B], higher = more in-distribution

Online adaptation of a stream, image after image (TDA's cache grows as it goes)::

    adapter = vlprompt.online("tda", "ViT-B-16", classnames, pretrained="openai")
    logits = adapter.predict(pil_images)   # [B, n_cls]; adapter.save("state.safetensors") to continue later
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlprompt.core.version import __version__

_LAZY = {
    "load_backbone": ("vlprompt.backbones.openclip", "load_backbone"),
    "OpenClipBackbone": ("vlprompt.backbones.openclip", "OpenClipBackbone"),
    "Backbone": ("vlprompt.backbones.base", "Backbone"),
    "load_any_backbone": ("vlprompt.backbones.base", "load_any_backbone"),
    "register_backbone_family": ("vlprompt.backbones.base", "register_backbone_family"),
    "build_method": ("vlprompt.methods.registry", "build_method"),
    "list_methods": ("vlprompt.methods.registry", "list_methods"),
    "register_method": ("vlprompt.methods.registry", "register_method"),
    "build_dataset": ("vlprompt.data.registry", "build_dataset"),
    "list_datasets": ("vlprompt.data.registry", "list_datasets"),
    "load_config": ("vlprompt.config", "load_config"),
    "ExperimentConfig": ("vlprompt.config", "ExperimentConfig"),
    "train": ("vlprompt.engine.trainer", "train"),
    "RunResult": ("vlprompt.core.results", "RunResult"),
    "BackboneRecord": ("vlprompt.core.results", "BackboneRecord"),
    "evaluate": ("vlprompt.tasks.api", "evaluate"),
    "zeroshot": ("vlprompt.tasks.api", "zeroshot"),
    "predict": ("vlprompt.tasks.api", "predict"),
    "tta": ("vlprompt.tasks.test_time", "tta"),
    "ood": ("vlprompt.tasks.ood", "ood_evaluate"),
    "online": ("vlprompt.tasks.online", "online"),
    "TestTimeAdapter": ("vlprompt.engine.test_time", "TestTimeAdapter"),
    "save_prompt": ("vlprompt.engine.checkpoint", "save_prompt"),
    "load_prompt": ("vlprompt.engine.checkpoint", "load_prompt"),
    "nearest_words": ("vlprompt.methods.coop.interpret", "nearest_words"),
    "VlpromptError": ("vlprompt.core.errors", "VlpromptError"),
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from vlprompt.backbones.base import Backbone, load_any_backbone, register_backbone_family  # noqa: F401
    from vlprompt.backbones.openclip import OpenClipBackbone, load_backbone  # noqa: F401
    from vlprompt.config import ExperimentConfig, load_config  # noqa: F401
    from vlprompt.core.errors import VlpromptError  # noqa: F401
    from vlprompt.core.results import BackboneRecord, RunResult  # noqa: F401
    from vlprompt.data.registry import build_dataset, list_datasets  # noqa: F401
    from vlprompt.engine.checkpoint import load_prompt, save_prompt  # noqa: F401
    from vlprompt.engine.test_time import TestTimeAdapter  # noqa: F401
    from vlprompt.engine.trainer import train  # noqa: F401
    from vlprompt.methods.coop.interpret import nearest_words  # noqa: F401
    from vlprompt.methods.registry import build_method, list_methods, register_method  # noqa: F401
    from vlprompt.tasks.api import evaluate, predict, zeroshot  # noqa: F401
    from vlprompt.tasks.online import online  # noqa: F401
    from vlprompt.tasks.ood import ood_evaluate as ood  # noqa: F401
    from vlprompt.tasks.test_time import tta  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import the public API lazily so ``import vlprompt`` stays fast (no torch until needed)."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vlprompt' has no attribute {name!r}")
