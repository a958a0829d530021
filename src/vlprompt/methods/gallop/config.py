"""GalLoP options, named as the authors' ``gallop/train.py`` arguments (MarcLafon/gallop, commit f75999e).

Defaults are the values of the authors' training scripts (``scripts/run_*.sh``: every dataset uses the same
method options, only epochs and batch size differ), which is what their README reports; where the argparse
default of ``gallop/train.py`` differs, it is cited too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_bool, check_float, check_int, shown


def _int_list(value: Any, option: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"option {option} must be a non-empty list of integers, got {shown(value)}")
    return [check_int(v, option, minimum=1) for v in value]


@dataclass
class GalLoPConfig:
    """Global and local prompts (Lafon et al., ECCV 2024)."""

    n_global_prompts: int = field(default=4, metadata={
        "help": "number of global prompts (scripts/run_imagenet.sh:20; train.py:217 argparse default 1)"})
    n_local_prompts: int = field(default=4, metadata={
        "help": "number of local prompts (scripts/run_imagenet.sh:24; train.py:218 argparse default 1)"})
    topk: list[int] = field(default_factory=lambda: [5, 10, 15, 20], metadata={
        "help": "patches averaged per local prompt: one k per local prompt, or one for all (train.py:213)"})
    global_dropout_p: float = field(default=0.75, metadata={
        "help": "fraction of the global prompts dropped per image in the global loss (train.py:219)"})
    prompts_batch_size: int | None = field(default=None, metadata={
        "help": "global prompts drawn at random per training step; null = all (train.py:221, math.inf)"})
    use_global_loss: bool = field(default=True, metadata={
        "help": "cross-entropy of the global prompts (scripts/run_imagenet.sh:18; train.py:211 default false)"})
    use_local_loss: bool = field(default=True, metadata={
        "help": "cross-entropy of the top-k local logits of the local prompts (train.py:212)"})
    learn_local_proj: bool = field(default=True, metadata={
        "help": "learn the linear map (identity init) on the local features before the projection (train.py:214)"})
    ctx_init: str = field(default="a photo of a", metadata={
        "help": "words initialising every prompt, n_ctx = their token count (template 'A photo of a {}', "
                "train.py:267; gallop.py:119-121)"})

    def __post_init__(self) -> None:
        check_int(self.n_global_prompts, "method.n_global_prompts", minimum=1)
        check_int(self.n_local_prompts, "method.n_local_prompts", minimum=1)
        self.topk = _int_list(self.topk, "method.topk")
        if len(self.topk) not in (1, self.n_local_prompts):
            raise ConfigError(f"option method.topk must hold one k for all local prompts or one per local prompt "
                              f"({self.n_local_prompts}), got {self.topk}")
        check_float(self.global_dropout_p, "method.global_dropout_p", minimum=0.0)
        if self.global_dropout_p > 1.0:
            raise ConfigError(f"option method.global_dropout_p must be <= 1, got {self.global_dropout_p}")
        if self.prompts_batch_size is not None:
            check_int(self.prompts_batch_size, "method.prompts_batch_size", minimum=1)
        for flag in ("use_global_loss", "use_local_loss", "learn_local_proj"):
            check_bool(getattr(self, flag), f"method.{flag}")
        if not (self.use_global_loss or self.use_local_loss):
            raise ConfigError("options method.use_global_loss and method.use_local_loss are both false; GalLoP needs "
                              "at least one of its two losses")
        if not isinstance(self.ctx_init, str) or not self.ctx_init.strip():
            raise ConfigError(f"option method.ctx_init must be non-empty text, got {shown(self.ctx_init)}")
