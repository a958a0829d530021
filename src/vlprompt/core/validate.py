"""Small validators used by config dataclasses' ``__post_init__``; each names the option at fault."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlprompt.core.errors import ConfigError

#: Largest float an option may hold: float32's maximum (learned tensors and their optimiser are float32).
FLOAT_MAX = 3.4028234663852886e38
#: Integer options must fit in 64 bits (torch seeds, sizes).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def shown(value: Any, limit: int = 200) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 40]}... ({len(text):,} characters)"



def check_int(value: Any, option: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"option {option} must be an integer, got {shown(value)}")
    if not INT_MIN <= value <= INT_MAX:
        raise ConfigError(f"option {option} must fit in 64 bits (at most {INT_MAX}), got {shown(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"option {option} must be >= {minimum}, got {value}")
    return value


def check_float(value: Any, option: str, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"option {option} must be a number, got {shown(value)}")
    value = float(value) if abs(value) < 1e309 else float("inf")
    if not abs(value) <= FLOAT_MAX:  # also NaN
        raise ConfigError(f"option {option} must be a finite number within ±{FLOAT_MAX:.3g} (float32), got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(f"option {option} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_choice(value: Any, option: str, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"option {option} must be one of {', '.join(map(str, choices))}; got {shown(value)}")
    return value


def check_bool(value: Any, option: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"option {option} must be true or false, got {shown(value)}")
    return value


def path_part(name: str) -> str:
    """``name`` as one file or folder name: characters other than letters, digits, ``.``, ``_`` and ``-`` become
    ``_`` (a dataset named ``hf:owner/name`` gives ``hf_owner_name``, ``hf:/data/x`` gives ``hf_data_x``);
    a registered dataset name is unchanged."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"
