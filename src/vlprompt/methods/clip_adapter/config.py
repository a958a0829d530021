"""CLIP-Adapter options (gaopengcuhk/CLIP-Adapter's defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int


@dataclass
class ClipAdapterConfig:
    """The adapter's bottleneck ``reduction`` and residual ``ratio`` (CLIP-Adapter's defaults)."""

    reduction: int = field(default=4, metadata={"help": "bottleneck width E / reduction (Adapter(c_in, 4))"})
    ratio: float = field(default=0.2, metadata={"help": "residual ratio alpha: f' = alpha A(f) + (1 - alpha) f"})

    def __post_init__(self) -> None:
        check_int(self.reduction, "method.reduction", minimum=1)
        check_float(self.ratio, "method.ratio", minimum=0.0)
        if self.ratio > 1:
            raise ConfigError(f"option method.ratio must be in [0, 1], got {self.ratio}")
