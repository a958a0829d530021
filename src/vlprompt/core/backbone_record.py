"""The identity of a backbone in result files: :class:`BackboneRecord` (family, model, pretrained).

Result files of the current release spell a backbone two ways: run metrics (``metrics.json``) and
prompt files write the mapping ``{"family": "hf", "model": "/models/clip", "pretrained": null, ...}``,
protocol and OOD results write the model string as given to ``--model`` (``{"model": "hf:/models/clip",
"pretrained": null}``), whose ``family:`` prefix names the family (none for open_clip, the default).
:meth:`BackboneRecord.parse` reads both to the same record, so one backbone is one group in a report.

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
#: What a family name may be: it is also the prefix of its model strings (``name:``).
FAMILY_NAME = re.compile(r"[a-z][a-z0-9_]*")
_PREFIXED = re.compile(r"([a-z][a-z0-9_]*):(.+)", re.DOTALL)


@dataclass(frozen=True)
class BackboneRecord:
    """Which backbone a result was obtained with.

    Attributes:
        family: the backbone family (``"open_clip"``, ``"hf"``, a plugin's family).
        model: the model name within that family, without the family prefix.
        pretrained: the pretrained tag or weights file, None for random init or a family whose
            weights come with the model (``hf``).
    """

    family: str
    model: str
    pretrained: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """``{"family", "model", "pretrained"}``, the spelling every result file writes."""
        return {"family": self.family, "model": self.model, "pretrained": self.pretrained}

    def key(self) -> tuple[str, str, str | None]:
        """What results are grouped by: ``(family, model, pretrained)``."""
        return (self.family, self.model, self.pretrained)

    def label(self) -> str:
        """One line for tables: ``"open_clip:ViT-B-16 (openai)"``, ``"hf:/models/clip"``."""
        return f"{self.family}:{self.model}" + (f" ({self.pretrained})" if self.pretrained else "")

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
    def parse(cls, value: Any) -> BackboneRecord:
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
