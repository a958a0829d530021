"""ProGrad options: CoOp's plus LOSS.LAMBDA and LOSS.T."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_float
from vlprompt.methods.coop.config import CoOpConfig


@dataclass
class ProGradConfig(CoOpConfig):
    """CoOp's options plus ProGrad's ``lambda_value`` (LOSS.LAMBDA) and ``temperature`` (LOSS.T)."""

    lambda_value: float = field(
        default=1.0, metadata={"help": "strength of the projection (LOSS.LAMBDA; the README uses 0.8 for "
                               "8/16 shots on Flowers102, DTD, EuroSAT)"}
    )
    temperature: float = field(default=1.0, metadata={"help": "distillation temperature T (LOSS.T)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self.lambda_value, "method.lambda_value", minimum=0.0)
        check_float(self.temperature, "method.temperature", minimum=0.0, strict=True)
