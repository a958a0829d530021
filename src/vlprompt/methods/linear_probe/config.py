"""Linear-probe options (lpclip's defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_float, check_int


@dataclass
class LinearProbeConfig:
    """Logistic-regression options (lpclip's defaults)."""

    C: float | None = field(default=None, metadata={"help": "inverse L2 strength; null = search on val as lpclip"})
    search_steps: int = field(default=8, metadata={"help": "bisection steps after the grid (--num_step 8)"})
    max_iter: int = field(default=1000, metadata={"help": "L-BFGS iterations (max_iter=1000)"})

    def __post_init__(self) -> None:
        if self.C is not None:
            check_float(self.C, "method.C", minimum=0.0, strict=True)
        check_int(self.search_steps, "method.search_steps", minimum=0)
        check_int(self.max_iter, "method.max_iter", minimum=1)
