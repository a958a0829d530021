"""LoCoOp options: CoOp's plus the OOD regulariser's (LAMBDA, TOPK)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_float, check_int
from vlprompt.methods.coop.config import CoOpConfig


@dataclass
class LoCoOpConfig(CoOpConfig):
    """CoOp's options plus the OOD regulariser's."""

    lambda_value: float = field(default=0.25, metadata={"help": "weight of the OOD regulariser (LoCoOp's LAMBDA)"})
    top_k: int | None = field(
        default=None, metadata={"help": "K of the top-K rule (LoCoOp's TOPK: 200 of 1000); null = 20% of classes"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self.lambda_value, "method.lambda_value", minimum=0.0)
        if self.top_k is not None:
            check_int(self.top_k, "method.top_k", minimum=1)
