"""CoCoOp options, named as in CoCoOp's configs (TRAINER.COCOOP.N_CTX, CTX_INIT)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_int


@dataclass
class CoCoOpConfig:
    """Conditional Context Optimization (Zhou et al., CVPR 2022)."""

    n_ctx: int = field(default=4, metadata={"help": "M, number of context tokens (ignored with ctx_init)"})
    ctx_init: str | None = field(default="a photo of a", metadata={"help": "initialisation words, or null"})
    init_std: float = field(default=0.02, metadata={"help": "std of random context init (ctx_init null)"})
    hidden_ratio: int = field(default=16, metadata={"help": "Meta-Net hidden size = embed_dim // hidden_ratio"})
    max_prompts_per_pass: int = field(
        default=8192, metadata={"help": "images x classes encoded per text pass (bounds memory; exact)"}
    )

    def __post_init__(self) -> None:
        check_int(self.n_ctx, "method.n_ctx", minimum=1)
        check_int(self.hidden_ratio, "method.hidden_ratio", minimum=1)
        check_int(self.max_prompts_per_pass, "method.max_prompts_per_pass", minimum=1)
        if self.ctx_init is not None and not isinstance(self.ctx_init, str):
            raise ConfigError(f"option method.ctx_init must be text or null, got {self.ctx_init!r}")
        if isinstance(self.ctx_init, str) and not self.ctx_init.strip():
            self.ctx_init = None
