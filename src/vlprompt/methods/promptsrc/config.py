"""PromptSRC options, named as in the authors' configs (TRAINER.PROMPTSRC.*).

Defaults: muzairkhattak/PromptSRC, configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml (base-to-new):
N_CTX_VISION 4, N_CTX_TEXT 4, CTX_INIT "a photo of a", PROMPT_DEPTH_VISION 9, PROMPT_DEPTH_TEXT 9,
TEXT_LOSS_WEIGHT 25, IMAGE_LOSS_WEIGHT 10, GPA_MEAN 15, GPA_STD 1 (optimiser there: SGD LR 0.0025,
MAX_EPOCH 20, batch 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_float, check_int
from vlprompt.methods.ivlp.config import IVLPConfig


@dataclass
class PromptSRCConfig(IVLPConfig):
    """Self-regulating prompts (Khattak, Wasim, Naseer, Khan, Yang, Khan; ICCV 2023)."""

    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    prompt_depth_text: int = 9
    prompt_depth_vision: int = 9
    text_loss_weight: float = field(default=25.0, metadata={"help": "weight of the L1 text consistency term"})
    image_loss_weight: float = field(default=10.0, metadata={"help": "weight of the L1 image consistency term"})
    gpa_mean: float = field(default=15.0, metadata={"help": "mean (epoch) of the Gaussian prompt aggregation"})
    gpa_std: float = field(default=1.0, metadata={"help": "std (epochs) of the Gaussian prompt aggregation"})
    n_templates: int = field(default=60, metadata={
        "help": "textual diversity: the first N of CLIP's 80 ImageNet templates (PromptSRC uses 60)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self.text_loss_weight, "method.text_loss_weight", minimum=0.0)
        check_float(self.image_loss_weight, "method.image_loss_weight", minimum=0.0)
        check_float(self.gpa_mean, "method.gpa_mean")
        check_float(self.gpa_std, "method.gpa_std", minimum=0.0, strict=True)
        check_int(self.n_templates, "method.n_templates", minimum=1)
