"""C-TPT options: TPT's (as hee-suk-yoon/C-TPT's scripts run it) plus the weight of the dispersion term."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_float
from vlprompt.methods.tpt.config import TPTConfig


@dataclass
class CTPTConfig(TPTConfig):
    """TPT's options (the C-TPT scripts keep TPT's: ``ctx_init=a_photo_of_a``, ``bs=64``, lr / steps / selection
    from ``tpt_classification.py`` l.459-469) plus ``lambda_term``."""

    lambda_term: float = field(
        default=50.0,
        metadata={"help": "weight of the average text feature dispersion (ATFD) subtracted from TPT's loss "
                          "(--lambda_term; scripts/test_tpt_ctpt_fg.sh l.10: 50 on the fine-grained sets; "
                          "scripts/test_tpt_ctpt_ds.sh l.10: 20 on the ImageNet sets)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self.lambda_term, "method.lambda_term", minimum=0.0)
