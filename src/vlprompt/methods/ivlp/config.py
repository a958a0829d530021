"""IVLP / VPT-deep / deep language prompting options, named as in the authors' configs
(TRAINER.IVLP.N_CTX_TEXT, N_CTX_VISION, CTX_INIT, PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION).

Defaults are taken from muzairkhattak/multimodal-prompt-learning:

* ``ivlp``: configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml (N_CTX_VISION 2, N_CTX_TEXT 2,
  CTX_INIT "a photo of a", PROMPT_DEPTH_VISION 12, PROMPT_DEPTH_TEXT 12);
* ``deep_language``: configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml (N_CTX_VISION 0,
  N_CTX_TEXT 4, PROMPT_DEPTH_VISION 0, PROMPT_DEPTH_TEXT 12);
* ``vpt_deep``: configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml (N_CTX_VISION 8, PROMPT_DEPTH_VISION 12;
  text = the fixed prompt "a photo of a {class}." of trainers/vpt.py line 73).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int


@dataclass
class IVLPConfig:
    """Independent vision-language deep prompts (Khattak et al., MaPLe paper's IVLP baseline)."""

    n_ctx_text: int = field(default=2, metadata={"help": "language prompt tokens per layer (0 = fixed text "
                                                          "prompt 'a photo of a {class}.')"})
    n_ctx_vision: int = field(default=2, metadata={"help": "vision prompt tokens per layer (0 = frozen image tower)"})
    ctx_init: str | None = field(default="a photo of a", metadata={
        "help": "words initialising the layer-0 language prompt when n_ctx_text <= 4 (its first n_ctx_text "
                "tokens; the rest of the words stay in the prompt, as in the reference); None = N(0, init_std)"})
    prompt_depth_text: int = field(default=12, metadata={
        "help": "J: language prompts at blocks 0..J-1 (clamped to the tower's depth)"})
    prompt_depth_vision: int = field(default=12, metadata={
        "help": "J: vision prompts at blocks 0..J-1 (clamped to the tower's depth)"})
    init_std: float = field(default=0.02, metadata={"help": "std of the random prompt initialisation"})

    def __post_init__(self) -> None:
        check_int(self.n_ctx_text, "method.n_ctx_text", minimum=0)
        check_int(self.n_ctx_vision, "method.n_ctx_vision", minimum=0)
        check_int(self.prompt_depth_text, "method.prompt_depth_text", minimum=0)
        check_int(self.prompt_depth_vision, "method.prompt_depth_vision", minimum=0)
        check_float(self.init_std, "method.init_std", minimum=0.0, strict=True)
        if self.ctx_init is not None and not isinstance(self.ctx_init, str):
            raise ConfigError(f"option method.ctx_init must be text or null, got {self.ctx_init!r}")
        if isinstance(self.ctx_init, str) and not self.ctx_init.strip():
            self.ctx_init = None
        if not self.learns_text and not self.learns_vision:
            raise ConfigError("options method.n_ctx_text / prompt_depth_text and method.n_ctx_vision / "
                              "prompt_depth_vision are all 0: nothing to learn; give prompt tokens to at least "
                              "one tower (or use method zeroshot).")

    @property
    def learns_text(self) -> bool:
        return self.n_ctx_text > 0 and self.prompt_depth_text > 0

    @property
    def learns_vision(self) -> bool:
        return self.n_ctx_vision > 0 and self.prompt_depth_vision > 0


@dataclass
class VPTDeepConfig(IVLPConfig):
    """VPT-deep: vision prompts only, fixed text prompt (configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml)."""

    n_ctx_text: int = 0
    n_ctx_vision: int = 8
    prompt_depth_text: int = 0
    prompt_depth_vision: int = 12


@dataclass
class DeepLanguageConfig(IVLPConfig):
    """Deep language prompting: text prompts only
    (configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml)."""

    n_ctx_text: int = 4
    n_ctx_vision: int = 0
    prompt_depth_text: int = 12
    prompt_depth_vision: int = 0
