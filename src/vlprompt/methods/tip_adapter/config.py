"""Tip-Adapter / Tip-Adapter-F options, named as in Tip-Adapter's ``configs/*.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_bool, check_float, check_int, shown


def _pair(value: Any, name: str, kind: type) -> list:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"option method.{name} must be a list of two numbers [beta, alpha], got {value!r}")
    out = [kind(v) if not isinstance(v, bool) and isinstance(v, int | float) else None for v in value]
    if any(v is None or v <= 0 for v in out):
        raise ConfigError(f"option method.{name} must hold two positive numbers [beta, alpha], got {value!r}")
    return out


def numbers(value: Any, option: str, lengths: tuple[int, ...], *, integer: bool = False,
            positive: bool = True) -> list:
    """``value`` as a list of ``lengths`` numbers (each > 0, or >= 0 with ``positive`` False), else ConfigError."""
    what = " or ".join(str(n) for n in lengths)
    kind = "integers" if integer else "numbers"
    if not isinstance(value, list | tuple) or len(value) not in lengths:
        raise ConfigError(f"option method.{option} must be a list of {what} {kind}, got {shown(value)}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or (integer and float(v) != int(v)):
            raise ConfigError(f"option method.{option} must be a list of {what} {kind}, got {shown(value)}")
        v = check_float(v, f"method.{option}", minimum=0.0, strict=positive)
        out.append(int(v) if integer else v)
    return out


def crop_scale_option(value: Any) -> list[float]:
    """``method.crop_scale``: ``[low, high]`` with ``0 < low <= high <= 1`` (the cache views' RandomResizedCrop)."""
    lo, hi = numbers(value, "crop_scale", (2,))
    if lo > hi or hi > 1:
        raise ConfigError(f"option method.crop_scale must be [low, high] with 0 < low <= high <= 1, got {shown(value)}")
    return [lo, hi]


@dataclass
class TipAdapterConfig:
    """Tip-Adapter's options, named as in its ``configs/*.yaml`` (defaults: ``configs/imagenet.yaml``)."""

    init_beta: float = field(default=1.0, metadata={"help": "beta before / without the search (init_beta)"})
    init_alpha: float = field(default=1.17, metadata={"help": "alpha before / without the search (init_alpha)"})
    search_hp: bool = field(default=True, metadata={"help": "search alpha and beta on the validation split"})
    search_scale: list[float] = field(default_factory=lambda: [7.0, 3.0],
                                      metadata={"help": "[S_beta, S_alpha]: largest values searched"})
    search_step: list[int] = field(default_factory=lambda: [200, 20],
                                   metadata={"help": "[N_beta, N_alpha]: number of values searched"})
    augment_epoch: int = field(default=10, metadata={"help": "augmented passes over the few-shot set for the keys"})
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0],
                                    metadata={"help": "RandomResizedCrop scale of the cache's augmentation"})

    def __post_init__(self) -> None:
        check_float(self.init_beta, "method.init_beta", minimum=0.0)
        check_float(self.init_alpha, "method.init_alpha", minimum=0.0)
        check_bool(self.search_hp, "method.search_hp")
        self.search_scale = _pair(self.search_scale, "search_scale", float)
        steps = _pair(self.search_step, "search_step", float)
        if any(s != int(s) for s in steps):
            raise ConfigError(f"option method.search_step must hold two positive integers, got {self.search_step!r}")
        self.search_step = [int(s) for s in steps]
        check_int(self.augment_epoch, "method.augment_epoch", minimum=1)
        self.crop_scale = crop_scale_option(self.crop_scale)


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter-F: the same options; the optimiser comes from the ``optim`` section (AdamW, lr 0.001)."""
