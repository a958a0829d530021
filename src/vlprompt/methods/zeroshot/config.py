"""Zero-shot CLIP options: the hand-crafted template(s), the class descriptions (CuPL) and the text pass size."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError

#: ``method.descriptions``: CuPL's ``classify_imagenet.py`` computes the three classifiers, standard (l.66, ``off``),
#: CuPL (l.70, ``only``) and both (l.74, ``with_templates``).
DESCRIPTION_MODES = ("off", "only", "with_templates")


@dataclass
class ZeroShotConfig:
    """Templates with one ``{}`` for the class name; several = prompt ensemble (CLIP Sec. 3.1.4)."""

    templates: list[str] = field(
        default_factory=lambda: ["a photo of a {}."],
        metadata={"help": "templates; several are ensembled (mean of normalised text features)"},
    )
    class_chunk: int = field(default=256, metadata={"help": "classes encoded per text pass (memory bound)"})
    descriptions: str | bool = field(default="off", metadata={
        "help": "class descriptions (data.descriptions_file), CuPL: off (templates only), only (the mean of each "
                "class's normalised sentence features) or with_templates (one mean over templates + sentences)"})

    def __post_init__(self) -> None:
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        if not isinstance(self.templates, list) or not self.templates:
            raise ConfigError("option method.templates must be a non-empty list of templates")
        for t in self.templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ConfigError(f"option method.templates: template {t!r} must contain exactly one '{{}}'")
        if isinstance(self.class_chunk, bool) or not isinstance(self.class_chunk, int) or self.class_chunk < 1:
            raise ConfigError(f"option method.class_chunk must be a positive integer, got {self.class_chunk!r}")
        if self.descriptions is False:  # YAML 1.1 reads a bare `off` (--set method.descriptions=off) as false
            self.descriptions = "off"
        if self.descriptions not in DESCRIPTION_MODES:
            raise ConfigError(f"option method.descriptions must be one of {', '.join(DESCRIPTION_MODES)}, "
                              f"got {self.descriptions!r}")
