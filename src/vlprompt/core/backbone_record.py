"""The identity of a backbone in result files: :class:`BackboneRecord` (family, model, pretrained).

Result files of the current release spell a backbone two ways: run metrics (``metrics.json``) and
prompt files write the mapping ``{"family": "hf", "model": "/models/clip", "pretrained": null, ...}``,
protocol and OOD results write the model string as given to ``--model`` (``{"model": "hf:/models/clip",
"pretrained": null}``), whose ``family:`` prefix names the family (none for open_clip, the default).
:meth:`BackboneRecord.from_any` reads both to the same record, so one backbone is one group in a report.

A backbone family's name is lowercase letters, digits and ``_`` and its model strings are written
``<family>:<model>`` (``hf:...``, ``toy:...``); every other model string belongs to the default family
``open_clip`` (including open_clip's own ``hf-hub:`` and ``local-dir:`` schemes, which are not family
names). This module is plain data, so every layer (results, report) can read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The family that loads every model string without a family prefix.
DEFAULT_FAMILY = "open_clip"
#: What a family name may be: it is also the prefix of its model strings (``name:``). At least two
#: characters, so that a drive letter (``c:/models/x``) or open_clip's own ``hf-hub:`` scheme is no family.
FAMILY_NAME = re.compile(r"[a-z][a-z0-9_]+")
_PREFIXED = re.compile(r"([a-z][a-z0-9_]+):(.+)", re.DOTALL)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{what}' must be non-empty text, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class BackboneRecord:
    """Which frozen backbone a result was computed with: the one backbone record of every result kind.

    Attributes:
        family: the backbone family (``"open_clip"``, ``"hf"``, a plugin's family).
        model: the model name within that family, without the family prefix.
        pretrained: the pretrained tag or weights file, None for random init or a family whose
            weights come with the model (``hf``).
    """

    family: str
    model: str
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _text(self.family, "backbone.family")
        _text(self.model, "backbone.model")
        if self.pretrained is not None and not isinstance(self.pretrained, str):
            raise ValueError(f"'backbone.pretrained' must be text or null, got {type(self.pretrained).__name__}")

    def as_dict(self) -> dict[str, Any]:
        """``{"family", "model", "pretrained"}``, the spelling every result file writes."""
        return {"family": self.family, "model": self.model, "pretrained": self.pretrained}

    def key(self) -> tuple[str, str, str | None]:
        """What results are grouped by: ``(family, model, pretrained)``."""
        return (self.family, self.model, self.pretrained)

    @property
    def label(self) -> str:
        """How reports name (and group) the backbone: the model for open_clip, else ``<family>:<model>`` (the
        ``backbone.model`` that selects it); one backbone with several pretrained tags is one row."""
        return self.model_string()

    def model_string(self) -> str:
        """The ``--model`` / ``backbone.model`` value that loads it (no prefix for the default family)."""
        return self.model if self.family == DEFAULT_FAMILY else f"{self.family}:{self.model}"

    @classmethod
    def from_model_string(cls, model: str, pretrained: str | None = None) -> BackboneRecord:
        """The record of a ``--model`` value: ``"hf:/models/clip"`` -> family ``hf``, model ``/models/clip``;
        ``"ViT-B-16"`` (or ``"open_clip:ViT-B-16"``) -> family ``open_clip``."""
        match = _PREFIXED.fullmatch(model)
        if match:
            return cls(match.group(1), match.group(2), pretrained)
        return cls(DEFAULT_FAMILY, model, pretrained)

    @classmethod
    def from_any(cls, value: Any) -> BackboneRecord:
        """Read a backbone as any result file of this or an earlier release spells it.

        Accepts a record, a mapping with ``family`` and ``model`` (run metrics, prompt files), a mapping
        with a ``"family:model"`` model string and no ``family`` (protocol and OOD results), or such a
        string alone. Raises ValueError naming what is wrong with any other value.
        """
        if isinstance(value, BackboneRecord):
            return value
        if isinstance(value, str):
            if not value:
                raise ValueError("'backbone' must name a model, got an empty string")
            return cls.from_model_string(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"'backbone' must be a mapping with 'model', got {type(value).__name__}")
        model, pretrained, family = value.get("model"), value.get("pretrained"), value.get("family")
        if not isinstance(model, str) or not model:
            raise ValueError(f"'backbone.model' must be a non-empty string, got {model!r}")
        if pretrained is not None and not isinstance(pretrained, str):
            raise ValueError(f"'backbone.pretrained' must be a string or null, got {pretrained!r}")
        if family is None:
            return cls.from_model_string(model, pretrained)
        if not isinstance(family, str) or not FAMILY_NAME.fullmatch(family):
            raise ValueError(f"'backbone.family' must be a family name (lowercase letters, digits, '_'), "
                             f"got {family!r}")
        return cls(family, model, pretrained)
