"""DPE options, named as in zhangce01/DPE-CLIP's per-dataset configs (``configs/<dataset>.yaml``).

The two sections of the authors' YAML files are options of the same name here, with the same keys:

* ``positive``: ``enabled``, ``shot_capacity``, ``alpha``, ``beta`` (the priority queue of confident features
  and its cache logits, read by ``main_dpe.py`` lines 202-205);
* ``learning_rate``: ``text``, ``image`` (AdamW learning rates of the textual / visual residuals,
  ``main_dpe.py`` lines 245-251) and ``align`` (weight of the alignment loss, line 241).

A section given partly keeps the defaults of the keys it leaves out (``--set method.positive.alpha=3``).
Defaults: DPE-CLIP@fecae5a ``configs/imagenet.yaml`` lines 5-13 (``enabled: True``, ``shot_capacity: 3``,
``alpha: 6.0``, ``beta: 5.0``; ``text: 0.0006``, ``image: 0.0006``, ``align: 0.5``). Per-dataset values:
``configs/dpe/<dataset>.yaml``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_bool, check_float, check_int, shown
from vlprompt.methods.zero.config import check_templates

#: ``configs/imagenet.yaml`` lines 4-8.
POSITIVE_DEFAULTS: dict[str, Any] = {"enabled": True, "shot_capacity": 3, "alpha": 6.0, "beta": 5.0}
#: ``configs/imagenet.yaml`` lines 10-13.
LEARNING_RATE_DEFAULTS: dict[str, Any] = {"text": 0.0006, "image": 0.0006, "align": 0.5}


def _section(value: Any, option: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``value`` (a mapping of some of ``defaults``' keys, or None) completed with the defaults."""
    if value is None:
        return dict(defaults)
    if not isinstance(value, dict):
        raise ConfigError(f"option {option} must be a mapping with keys {', '.join(defaults)}, got {shown(value)}")
    for key in value:
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1)
            hint = f" Did you mean: {close[0]}?" if close else ""
            raise ConfigError(f"unknown option '{option}.{key}'.{hint} Valid keys: {', '.join(defaults)}")
    return {**defaults, **value}


@dataclass
class DPEConfig:
    """Dual Prototype Evolving (Zhang, Stepputtis, Sycara, Xie; NeurIPS 2024)."""

    positive: dict[str, Any] = field(default_factory=lambda: dict(POSITIVE_DEFAULTS), metadata={
        "help": "the priority queue of confident test features: enabled (cache on), shot_capacity (features kept "
                "per class), alpha (weight of the cache logits), beta (sharpness of their affinity) "
                "(configs/<dataset>.yaml 'positive'; main_dpe.py l.133-157, 202-205)"})
    learning_rate: dict[str, Any] = field(default_factory=lambda: dict(LEARNING_RATE_DEFAULTS), metadata={
        "help": "text / image: AdamW learning rates of the per-sample textual / visual residuals; align: weight "
                "of the alignment (InfoNCE) loss (configs/<dataset>.yaml 'learning_rate'; main_dpe.py "
                "l.240-251)"})
    predict_on_all_views: bool = field(default=False, metadata={
        "help": "the final prediction averages the confident 10% of all views (the authors do this on "
                "ImageNet-A only, main_dpe.py l.270-271) instead of using the original image alone"})
    templates: list[str] | None = field(default=None, metadata={
        "help": "class prompt template(s), ensembled; null = the dataset's (data.templates). The authors' per "
                "dataset: datasets/<dataset>.py 'template' (written out in configs/dpe/<dataset>.yaml)"})
    cupl_prompts: str | None = field(default=None, metadata={
        "help": "a CuPL JSON file {class name: [sentences]} whose sentences join the templates in each class's "
                "ensemble (the authors' gpt3_prompts/CuPL_prompts_<dataset>.json, utils.py l.81-93); null: "
                "templates only"})
    class_chunk: int = field(default=256, metadata={"help": "texts encoded per text pass (memory bound)"})

    def __post_init__(self) -> None:
        pos = _section(self.positive, "method.positive", POSITIVE_DEFAULTS)
        check_bool(pos["enabled"], "method.positive.enabled")
        check_int(pos["shot_capacity"], "method.positive.shot_capacity", minimum=1)
        pos["alpha"] = check_float(pos["alpha"], "method.positive.alpha")
        pos["beta"] = check_float(pos["beta"], "method.positive.beta")
        self.positive = pos
        lr = _section(self.learning_rate, "method.learning_rate", LEARNING_RATE_DEFAULTS)
        for key in ("text", "image", "align"):
            lr[key] = check_float(lr[key], f"method.learning_rate.{key}", minimum=0.0)
        self.learning_rate = lr
        check_bool(self.predict_on_all_views, "method.predict_on_all_views")
        self.templates = check_templates(self.templates, "method.templates")
        if self.cupl_prompts is not None:
            if not isinstance(self.cupl_prompts, (str, Path)) or not str(self.cupl_prompts).strip():
                raise ConfigError(f"option method.cupl_prompts must be null or the path of a CuPL JSON file, got "
                                  f"{shown(self.cupl_prompts)}")
            self.cupl_prompts = str(self.cupl_prompts)
        check_int(self.class_chunk, "method.class_chunk", minimum=1)
