"""UPL options (Huang et al., 2022, "Unsupervised Prompt Learning for Vision-Language Models")."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_float, check_int


@dataclass
class UPLConfig:
    """CoOp-style prompts trained on pseudo-labels; an ensemble of ``n_prompts`` random inits."""

    n_ctx: int = field(default=16, metadata={"help": "M, context tokens per prompt (random init)"})
    n_prompts: int = field(default=16, metadata={"help": "prompt-representation ensemble size (1 = single prompt)"})
    init_std: float = field(default=0.02, metadata={"help": "std of the random context initialisation"})

    def __post_init__(self) -> None:
        check_int(self.n_ctx, "method.n_ctx", minimum=1)
        check_int(self.n_prompts, "method.n_prompts", minimum=1)
        check_float(self.init_std, "method.init_std", minimum=0.0, strict=True)
