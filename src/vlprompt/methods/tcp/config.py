"""TCP options: KgCoOp's (``n_ctx``, ``ctx_init``, ``w``, ...) with TCP's defaults, plus the Textual Knowledge
Embedding and where its class-aware tokens enter the text tower.

Every default is the authors' (htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec): ``trainers/tcp.py``,
``trainers/clip_text/model.py``, ``configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml``, ``scripts/base2new_train.sh``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int
from vlprompt.methods.kgcoop.config import KgCoOpConfig


@dataclass
class TCPConfig(KgCoOpConfig):
    """Textual-based Class-aware Prompt tuning (Yao, Zhang, Xu; CVPR 2024)."""

    n_ctx: int = field(default=4, metadata={
        "help": "M learned context tokens, also the number of class-aware tokens (scripts/base2new_train.sh l.12 "
                "NCTX=4; trainers/tcp.py l.172 emits 4 tokens)"})
    ctx_init: str | None = field(default=None, metadata={
        "help": "initial context words; null = N(0, init_std) (vit_b16_ep100_ctxv1.yaml l.33 CTX_INIT False -> "
                "trainers/tcp.py l.139-148)"})
    w: float = field(default=8.0, metadata={
        "help": "weight of KgCoOp's penalty 1 - mean cos(t_c, t_c^clip) (trainers/tcp.py l.257, hard-coded 8.0; the "
                "script's TRAINER.COOP.W goes to the text encoder, where clip_text/model.py l.269 overrides it)"})
    insert_layer: int = field(default=8, metadata={
        "help": "text block (0-based) whose input takes the class-aware tokens at positions 1..M "
                "(trainers/clip_text/model.py l.268 layers=[8]; clamped to the tower's last block)"})
    insert_weight: float = field(default=1.0, metadata={
        "help": "blend of the class-aware tokens with the hidden states they overwrite, 1 = replace "
                "(trainers/clip_text/model.py l.269 weights=[1.0], l.278)"})
    hidden_ratio: int = field(default=4, metadata={
        "help": "Textual Knowledge Embedding E -> E/hidden_ratio -> M*D (trainers/tcp.py l.170 vis_dim // 4)"})
    prompt_template: str = field(default="{}.", metadata={
        "help": "text after the learned context, {} = class name (trainers/tcp.py l.60-76 without the 4 context "
                "words: e.g. '{}, a type of pet.', UCF101 'person doing {}.')"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.csc or self.class_token_position != "end":
            raise ConfigError("method tcp learns one shared context followed by the class name (trainers/tcp.py "
                              "l.193-208): set method.csc=false and method.class_token_position=end")
        check_int(self.insert_layer, "method.insert_layer", minimum=0)
        check_float(self.insert_weight, "method.insert_weight", minimum=0.0)
        check_int(self.hidden_ratio, "method.hidden_ratio", minimum=1)
        if not isinstance(self.prompt_template, str) or self.prompt_template.count("{}") != 1:
            raise ConfigError(f"option method.prompt_template must be text with exactly one '{{}}' (the class name), "
                              f"got {self.prompt_template!r}")
