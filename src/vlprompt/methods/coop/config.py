"""CoOp options, named as in CoOp's configs (TRAINER.COOP.N_CTX, CSC, CTX_INIT, CLASS_TOKEN_POSITION)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_bool, check_choice, check_float, check_int

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


@dataclass
class CoOpConfig:
    """Context Optimization (Zhou et al., IJCV 2022)."""

    n_ctx: int = field(default=16, metadata={"help": "M, number of learned context tokens [V]1..[V]M"})
    ctx_init: str | None = field(
        default=None,
        metadata={"help": "words to initialise the context (e.g. 'a photo of a'; sets n_ctx to their "
                  "token count, as in CoOp); None = N(0, 0.02)"},
    )
    csc: bool = field(
        default=False, metadata={"help": "class-specific context [n_cls, M, dim] (else unified [M, dim])"}
    )
    class_token_position: str = field(
        default="end", metadata={"help": "where the class-name tokens go: end, middle or front"}
    )
    init_std: float = field(default=0.02, metadata={"help": "std of the random context initialisation"})

    def __post_init__(self) -> None:
        check_int(self.n_ctx, "method.n_ctx", minimum=1)
        check_bool(self.csc, "method.csc")
        check_float(self.init_std, "method.init_std", minimum=0.0, strict=True)
        check_choice(self.class_token_position, "method.class_token_position", CLASS_TOKEN_POSITIONS)
        if self.ctx_init is not None and not isinstance(self.ctx_init, str):
            raise ConfigError(f"option method.ctx_init must be text or null, got {self.ctx_init!r}")
        if isinstance(self.ctx_init, str) and not self.ctx_init.strip():
            self.ctx_init = None

