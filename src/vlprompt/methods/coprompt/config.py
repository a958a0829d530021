"""CoPrompt options, named as in the authors' config (TRAINER.CoPrompt.N_CTX, CTX_INIT, PROMPT_DEPTH; TRAINER.W,
TRAINER.DISTILL).

Defaults: ShuvenduRoy/CoPrompt@a2a6c12 ``configs/trainers/coprompt.yaml`` l.32-39 (N_CTX 2, CTX_INIT "a photo of a",
PROMPT_DEPTH 9, W 1.0, DISTILL "cosine"); the adapters are fixed in ``trainers/coprompt.py`` l.267-302. The
per-dataset values that override them (``trainers/constants.py`` l.3-60, merged last by ``train.py`` l.116-117) are
in the shipped configs (configs/coprompt/base2new/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_choice, check_float, check_int
from vlprompt.methods.maple.config import MaPLeConfig


@dataclass
class CoPromptConfig(MaPLeConfig):
    """Consistency-guided prompt learning (Roy & Etemad, ICLR 2024): MaPLe prompts + adapters + consistency terms."""

    w: float = field(default=1.0, metadata={
        "help": "lambda: weight of the consistency terms (TRAINER.W, configs/trainers/coprompt.yaml l.38; "
                "per dataset in trainers/constants.py)"})
    distill: str = field(default="cosine", metadata={
        "help": "distance of the consistency terms: cosine (1 - mean cos) or mse (TRAINER.DISTILL, coprompt.yaml "
                "l.39; trainers/coprompt.py l.352-364)"})
    adapter_reduction: int = field(default=4, metadata={
        "help": "bottleneck E / r of both adapters (Adapter(512, 4), trainers/coprompt.py l.299-300)"})
    image_adapter_ratio: float = field(default=0.1, metadata={
        "help": "residual ratio a of the image adapter: a * A(f) + (1 - a) * f (coprompt.py l.301)"})
    text_adapter_ratio: float = field(default=0.2, metadata={
        "help": "residual ratio of the text adapter (coprompt.py l.302)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self.w, "method.w", minimum=0.0)
        check_choice(self.distill, "method.distill", ("cosine", "mse"))
        check_int(self.adapter_reduction, "method.adapter_reduction", minimum=1)
        for option in ("image_adapter_ratio", "text_adapter_ratio"):
            if not 0.0 <= check_float(getattr(self, option), f"method.{option}", minimum=0.0) <= 1.0:
                raise ConfigError(f"option method.{option} must be between 0 and 1, got {getattr(self, option)}")
