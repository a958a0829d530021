"""MaPLe options, named as in the authors' configs (TRAINER.MAPLE.N_CTX, CTX_INIT, PROMPT_DEPTH).

Defaults: muzairkhattak/multimodal-prompt-learning, configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml
(N_CTX 2, CTX_INIT "a photo of a", PROMPT_DEPTH 9; base-to-new and few-shot). The cross-dataset / domain
generalisation config vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml sets PROMPT_DEPTH 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int


@dataclass
class MaPLeConfig:
    """Multi-modal Prompt Learning (Khattak, Rasheed, Maaz, Khan, Khan; CVPR 2023)."""

    n_ctx: int = field(default=2, metadata={"help": "prompt tokens per layer (language; vision = coupled copies)"})
    ctx_init: str | None = field(default="a photo of a", metadata={
        "help": "words initialising the layer-0 language prompt when n_ctx <= 4 (its first n_ctx tokens); "
                "None = N(0, init_std)"})
    prompt_depth: int = field(default=9, metadata={
        "help": "J: prompts at blocks 0..J-1 of both towers (clamped to the shallower tower)"})
    init_std: float = field(default=0.02, metadata={"help": "std of the random deep-prompt initialisation"})

    def __post_init__(self) -> None:
        check_int(self.n_ctx, "method.n_ctx", minimum=1)
        check_int(self.prompt_depth, "method.prompt_depth", minimum=1)
        check_float(self.init_std, "method.init_std", minimum=0.0, strict=True)
        if self.ctx_init is not None and not isinstance(self.ctx_init, str):
            raise ConfigError(f"option method.ctx_init must be text or null, got {self.ctx_init!r}")
        if isinstance(self.ctx_init, str) and not self.ctx_init.strip():
            self.ctx_init = None
