"""KgCoOp options: CoOp's with KgCoOp's defaults plus the penalty weight ``w`` (TRAINER.COOP.W)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_float
from vlprompt.methods.coop.config import CoOpConfig


@dataclass
class KgCoOpConfig(CoOpConfig):
    """CoOp's options with KgCoOp's defaults (4 context tokens initialised from 'a photo of a') plus ``w``."""

    n_ctx: int = field(default=4, metadata={"help": "M (KgCoOp's base-to-new scripts: NCTX=4)"})
    ctx_init: str | None = field(
        default="a photo of a",
        metadata={"help": "initial context words (KgCoOp's trainer uses 'a photo of a'); null = N(0, 0.02)"},
    )
    w: float = field(default=8.0, metadata={"help": "weight of the knowledge-guided penalty (TRAINER.COOP.W)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self.w, "method.w", minimum=0.0)
