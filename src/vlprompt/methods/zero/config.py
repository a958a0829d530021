"""Zero options: the confident-view fraction of FarinaMatteo/zero and the classifier's templates.

Defaults: FarinaMatteo/zero ``ttas/zero.py`` lines 20-24 (``num_views = 64``, ``gamma = 0.3``; the views are
the test-time protocol's, not an option here) and the prompt ``"a photo of a {}."`` of ``scripts/zero.sh``
line 6 (``CTX="a_photo_of_a"``) formatted by ``clip/custom_clip.py`` line 113.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int


def check_templates(templates: list[str] | None, option: str) -> list[str] | None:
    """None, or a non-empty list of templates with exactly one ``{}`` each (one string is one template)."""
    if templates is None:
        return None
    if isinstance(templates, str):
        templates = [templates]
    if not isinstance(templates, list) or not templates:
        raise ConfigError(f"option {option} must be null (the dataset's templates) or a non-empty list of templates")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(f"option {option}: template {t!r} must contain exactly one '{{}}'")
    return templates


@dataclass
class ZeroConfig:
    """Zero (Farina, Franchi, Iacca, Mancini, Ricci; NeurIPS 2024): the zero-temperature marginal of the
    confident views."""

    gamma: float = field(default=0.3, metadata={
        "help": "fraction of the views kept as confident (lowest entropy): int(V * gamma) of V (ttas/zero.py l.24)"})
    templates: list[str] | None = field(default=None, metadata={
        "help": "class prompt template(s), several ensembled; null = the dataset's (data.templates). "
                "The authors use ['a photo of a {}.'] on every dataset"})
    class_chunk: int = field(default=256, metadata={"help": "classes encoded per text pass (memory bound)"})

    def __post_init__(self) -> None:
        gamma = check_float(self.gamma, "method.gamma", minimum=0.0, strict=True)
        if gamma > 1.0:
            raise ConfigError(f"option method.gamma is the fraction of views kept, in (0, 1]; got {self.gamma}")
        self.templates = check_templates(self.templates, "method.templates")
        check_int(self.class_chunk, "method.class_chunk", minimum=1)
