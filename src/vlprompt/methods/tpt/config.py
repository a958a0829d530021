"""TPT options, named as the arguments of azshue/TPT ``tpt_classification.py`` (lines 314-336) and the values of
its script ``scripts/test_tpt.sh``."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_choice, check_float, check_int

#: What the Meta-Net of a CoCoOp starting prompt reads (TPT+CoCoOp, see :class:`TPTConfig`).
COCOOP_META_INPUTS = ("raw", "normalized")


@dataclass
class TPTConfig:
    """Test-time prompt tuning (Shu et al., NeurIPS 2022): per test image, one AdamW step on the entropy of the
    averaged prediction over its most confident augmented views; the prompt is reset before every image."""

    n_ctx: int = field(default=4, metadata={"help": "M, context tokens (--n_ctx, tpt_classification.py l.332); "
                                                    "ignored with ctx_init (its token count)"})
    ctx_init: str | None = field(
        default="a photo of a",
        metadata={"help": "initial context words (scripts/test_tpt.sh l.8 ctx_init=a_photo_of_a); "
                          "null = N(0, init_std)"},
    )
    init_std: float = field(default=0.02, metadata={"help": "std of the random context (clip/custom_clip.py l.97)"})
    lr: float = field(default=5e-3, metadata={"help": "AdamW learning rate (--lr, tpt_classification.py l.323)"})
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay: torch's default, which tpt_classification.py l.145 uses"}
    )
    tta_steps: int = field(default=1, metadata={"help": "AdamW steps per test image (--tta_steps, l.331)"})
    selection_p: float = field(
        default=0.1,
        metadata={"help": "fraction of the views kept, lowest prediction entropy first (--selection_p, l.330)"},
    )
    cocoop_meta_input: str = field(
        default="raw",
        metadata={"help": "starting from a CoCoOp prompt: the Meta-Net reads the original view's raw image "
                          "feature (raw: TPT's clip/cocoop.py gen_ctx l.175-180) or the normalised one "
                          "(normalized: as CoCoOp itself, cocoop.py l.157-160)"},
    )

    def __post_init__(self) -> None:
        check_int(self.n_ctx, "method.n_ctx", minimum=1)
        check_float(self.init_std, "method.init_std", minimum=0.0, strict=True)
        check_float(self.lr, "method.lr", minimum=0.0)
        check_float(self.weight_decay, "method.weight_decay", minimum=0.0)
        check_int(self.tta_steps, "method.tta_steps", minimum=0)
        check_float(self.selection_p, "method.selection_p", minimum=0.0, strict=True)
        if self.selection_p > 1:
            raise ConfigError(f"option method.selection_p must be at most 1 (all views), got {self.selection_p}")
        check_choice(self.cocoop_meta_input, "method.cocoop_meta_input", COCOOP_META_INPUTS)
        if self.ctx_init is not None and not isinstance(self.ctx_init, str):
            raise ConfigError(f"option method.ctx_init must be text or null, got {self.ctx_init!r}")
        if isinstance(self.ctx_init, str) and not self.ctx_init.strip():
            self.ctx_init = None
