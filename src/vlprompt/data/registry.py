"""Dataset registry: ``build_dataset(name, root, **options) -> DatasetSplits``.

Readers register themselves with :func:`register_dataset`; names are case-insensitive and
CoOp's class names (``OxfordPets``) work as aliases of the snake-case names (``oxford_pets``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.core.plugins import load_extensions
from vlprompt.data.types import DatasetSplits

DatasetBuilder = Callable[..., DatasetSplits]
_DATASETS: dict[str, DatasetBuilder] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_dataset(name: str, *aliases: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering ``fn(root: str | None, **options) -> DatasetSplits`` under ``name``."""

    def deco(fn: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[_key(name)] = fn
        for alias in aliases:
            _ALIASES[_key(alias)] = _key(name)
        return fn

    return deco


def _ensure_builtin() -> None:
    """Register the built-in readers (:data:`vlprompt.core.plugins.BUILTINS`) and the plugins' datasets."""
    load_extensions("datasets")


def list_datasets() -> list[str]:
    _ensure_builtin()
    return sorted(_DATASETS)


def build_dataset(name: str, root: str | None = None, **options: Any) -> DatasetSplits:
    """Build the dataset registered as ``name`` from ``root``.

    Raises:
        DataError: unknown name (with close matches), or whatever the reader finds wrong.
    """
    _ensure_builtin()
    key = _ALIASES.get(_key(name), _key(name))
    if key not in _DATASETS:
        close = difflib.get_close_matches(key, list(_DATASETS) + list(_ALIASES), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DataError(
            f"unknown dataset '{name}' (option data.dataset).{hint} "
            f"Known datasets: {', '.join(sorted(_DATASETS))}."
        )
    return _DATASETS[key](root, **options)
