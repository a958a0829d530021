"""TDA options, named and nested as in kdiAAA/TDA's ``configs/*.yaml``.

Defaults: ``configs/imagenet.yaml`` (l.4-8 ``positive``: enabled True, shot_capacity 3, alpha 2.0, beta 5.0;
l.11-21 ``negative``: enabled True, shot_capacity 2, alpha 0.117, beta 1.0, entropy_threshold 0.2-0.5,
mask_threshold 0.03-1.0). Per-dataset values are shipped as ``configs/tda/<dataset>.yaml``.

``positive`` and ``negative`` are mappings as in the authors' files; a partial mapping (``--set
method.negative.alpha=0.2``, or a YAML ``negative: {alpha: 0.2}``) keeps the defaults of the keys it does not
give. Unknown keys, wrong types and empty threshold ranges are refused (``ConfigError``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_bool, check_float, check_int, shown
from vlprompt.methods.zero.config import check_templates

#: kdiAAA/TDA configs/imagenet.yaml l.4-8
POSITIVE_DEFAULTS: dict[str, Any] = {"enabled": True, "shot_capacity": 3, "alpha": 2.0, "beta": 5.0}
#: kdiAAA/TDA configs/imagenet.yaml l.11-21
NEGATIVE_DEFAULTS: dict[str, Any] = {"enabled": True, "shot_capacity": 2, "alpha": 0.117, "beta": 1.0,
                                     "entropy_threshold": {"lower": 0.2, "upper": 0.5},
                                     "mask_threshold": {"lower": 0.03, "upper": 1.0}}


def _number(value: Any, option: str) -> float:
    """A number (PyYAML reads ``1e-3`` inside a mapping as text: such text is read as a number)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"option {option} must be a number, got {shown(value)}") from None
    return check_float(value, option)


def _merged(given: Any, defaults: dict[str, Any], option: str) -> dict[str, Any]:
    """``defaults`` updated by the mapping ``given`` (nested mappings merged too); unknown keys refused."""
    if given is None:
        return copy.deepcopy(defaults)
    if not isinstance(given, dict):
        raise ConfigError(f"option {option} must be a mapping with keys {', '.join(defaults)}, got {shown(given)}")
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise ConfigError(f"unknown option {option}.{key}; valid keys: {', '.join(defaults)}")
        out[key] = _merged(value, defaults[key], f"{option}.{key}") if isinstance(defaults[key], dict) else value
    return out


def _range(value: dict[str, Any], option: str, *, minimum: float = 0.0) -> dict[str, float]:
    lower = _number(value["lower"], f"{option}.lower")
    upper = _number(value["upper"], f"{option}.upper")
    if lower < minimum or not lower < upper:
        raise ConfigError(f"option {option} must have {minimum} <= lower < upper, got lower {lower}, upper {upper}")
    return {"lower": lower, "upper": upper}


def check_cache_options(positive: Any, negative: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validated ``positive`` / ``negative`` mappings with the defaults filled in (TDA's and BoostAdapter's)."""
    pos = _merged(positive, POSITIVE_DEFAULTS, "method.positive")
    neg = _merged(negative, NEGATIVE_DEFAULTS, "method.negative")
    for opt, d in (("method.positive", pos), ("method.negative", neg)):
        d["enabled"] = check_bool(d["enabled"], f"{opt}.enabled")
        d["shot_capacity"] = check_int(d["shot_capacity"], f"{opt}.shot_capacity", minimum=1)
        d["alpha"] = _number(d["alpha"], f"{opt}.alpha")
        d["beta"] = _number(d["beta"], f"{opt}.beta")
    neg["entropy_threshold"] = _range(neg["entropy_threshold"], "method.negative.entropy_threshold")
    neg["mask_threshold"] = _range(neg["mask_threshold"], "method.negative.mask_threshold")
    return pos, neg


@dataclass
class TDAConfig:
    """Training-free dynamic adapter (Karmanov, Guan, Lu, El Saddik, Xing; CVPR 2024): positive and negative
    caches of confident test features."""

    positive: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(POSITIVE_DEFAULTS), metadata={
        "help": "positive cache: enabled, shot_capacity (entries per class), alpha (weight of its logits), beta "
                "(sharpness of exp(-beta (1 - cos))); configs/imagenet.yaml l.4-8"})
    negative: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(NEGATIVE_DEFAULTS), metadata={
        "help": "negative cache: enabled, shot_capacity, alpha (subtracted), beta, entropy_threshold {lower, upper} "
                "(normalised entropy gate of the entries), mask_threshold {lower, upper} (probabilities masked in "
                "its values); configs/imagenet.yaml l.11-21"})
    templates: list[str] | None = field(default=None, metadata={
        "help": "class prompt template(s), several ensembled; null = the dataset's (data.templates). The authors "
                "use their datasets/*.py `template` lists (configs/tda/*.yaml set data.templates accordingly)"})
    class_chunk: int = field(default=256, metadata={"help": "classes encoded per text pass (memory bound)"})

    def __post_init__(self) -> None:
        self.positive, self.negative = check_cache_options(self.positive, self.negative)
        self.templates = check_templates(self.templates, "method.templates")
        check_int(self.class_chunk, "method.class_chunk", minimum=1)
