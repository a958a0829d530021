"""Small validators used by config dataclasses' ``__post_init__``; each names the option at fault."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlprompt.core.errors import ConfigError


def check_int(value: Any, option: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"option {option} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"option {option} must be >= {minimum}, got {value}")
    return value


def check_float(value: Any, option: str, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"option {option} must be a number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"option {option} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(f"option {option} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_choice(value: Any, option: str, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"option {option} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def check_bool(value: Any, option: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"option {option} must be true or false, got {value!r}")
    return value
