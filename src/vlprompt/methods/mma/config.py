"""MMA options, named as in the authors' configs (TRAINER.MMADAPTER.TEXT_CTX_INIT, ADAPTER_START, ADAPTER_END,
ADAPTER_DIM, ADAPTER_SCALE).

Defaults: ZjjConan/Multi-Modal-Adapter @ 547ee34, configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml l.32-37 (the
file of every base-to-new run, run_examples.sh l.8; vit_b16_ep5_imnet.yaml l.32-37 has the same values). train.py
l.88-96 has other fallbacks (ADAPTER_START 4, ADAPTER_SCALE 0.1, TEXT_CTX_INIT "") that both config files override.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int


@dataclass
class MMAConfig:
    """Multi-Modal Adapter: adapters with a shared middle projection at the higher blocks of both towers."""

    text_ctx_init: str = field(default="a photo of a", metadata={
        "help": "the fixed words before the class name: the text prompt is '{text_ctx_init} {class}.' for every "
                "dataset (vit_b16_ep5.yaml l.33; trainers/mmadapter.py l.102-103)"})
    adapter_start: int = field(default=5, metadata={
        "help": "first adapted layer, 1-based block index; 0 also adapts the input (the text token embeddings, the "
                "image tokens after ln_pre) (vit_b16_ep5.yaml l.34; mmadapter.py l.116). Indices past a tower's "
                "depth are clamped to its last block"})
    adapter_end: int = field(default=12, metadata={
        "help": "last adapted layer, inclusive (vit_b16_ep5.yaml l.35), clamped to each tower's depth"})
    adapter_dim: int = field(default=32, metadata={
        "help": "r: width of the shared space (down D -> r, shared r -> r, up r -> D) (vit_b16_ep5.yaml l.36)"})
    adapter_scale: float = field(default=0.001, metadata={
        "help": "alpha: the adapter's output is multiplied by it and its gradient divided by it "
                "(vit_b16_ep5.yaml l.37; clip/model.py l.196-202)"})

    def __post_init__(self) -> None:
        if not isinstance(self.text_ctx_init, str):
            raise ConfigError(f"option method.text_ctx_init must be text, got {self.text_ctx_init!r:.80}")
        check_int(self.adapter_start, "method.adapter_start", minimum=0)
        check_int(self.adapter_end, "method.adapter_end", minimum=0)
        check_int(self.adapter_dim, "method.adapter_dim", minimum=1)
        check_float(self.adapter_scale, "method.adapter_scale", minimum=0.0, strict=True)
        if not math.isfinite(self.adapter_scale):
            raise ConfigError(f"option method.adapter_scale must be finite, got {self.adapter_scale}")
        if self.adapter_end < self.adapter_start:
            raise ConfigError(f"option method.adapter_end ({self.adapter_end}) is before method.adapter_start "
                              f"({self.adapter_start}): no layer would be adapted")
