"""NegPrompt options, named as the authors' arguments (mala-lab/NegPrompt ``osr_nega_prompt.py``).

Defaults are those of the authors' conventional-OOD script ``scripts/train_test_ood.py`` where it sets them, else
the argument parser's:

* ``nega_ctx`` 2 (``NEGA_CTX``, train_test_ood.py:3; parser default 1, osr_nega_prompt.py:98): negative prompts
  per class.
* ``distance_weight`` 0.1 (train_test_ood.py:5), ``negative_weight`` 1 (:6), ``nega_nega_weight`` 0.05 (:7),
  ``open_set_method`` MSP (:8; parser default MSP, osr_nega_prompt.py:104).
* ``ctx_init`` "a photo of a" (``CTX_INIT = 'a photo of a "{}"'`` for ImageNet, osr_nega_prompt.py:183, with the
  quoted placeholder removed in models.py:228); ``n_ctx`` 16 (osr_nega_prompt.py:196) only without ``ctx_init``;
  random context N(0, 0.02) (models.py:253).
* ``positive_epochs`` 100: the stage-1 epochs (``--max-epoch`` default 100, osr_nega_prompt.py:66).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_choice, check_float, check_int

OPEN_SET_METHODS = ("MSP", "OE")


@dataclass
class NegPromptConfig:
    """Learning Transferable Negative Prompts for OOD Detection (Li et al., CVPR 2024)."""

    ctx_init: str | None = field(
        default="a photo of a",
        metadata={"help": "words initialising the shared context (the authors' CTX_INIT without its class slot); "
                  "null = n_ctx random tokens"})
    n_ctx: int = field(default=16, metadata={"help": "context tokens when ctx_init is null (N_CTX)"})
    init_std: float = field(default=0.02, metadata={"help": "std of the random context initialisation"})
    nega_ctx: int = field(default=2, metadata={"help": "negative prompts per class (NEGA_CTX)"})
    negative_weight: float = field(
        default=1.0, metadata={"help": "weight of the negative-image term (open_set_method's loss)"})
    distance_weight: float = field(
        default=0.1, metadata={"help": "weight of the negative-to-positive prompt distance term"})
    nega_nega_weight: float = field(
        default=0.05, metadata={"help": "weight of the negative-to-negative prompt diversity term"})
    open_set_method: str = field(
        default="MSP", metadata={"help": "negative-image loss: MSP (multi-label soft margin) or OE (uniform CE)"})
    positive_epochs: int = field(
        default=100,
        metadata={"help": "epochs of stage 1 (positive prompts by CE); the rest of optim.max_epoch is stage 3 "
                  "(negative prompts, the positive ones frozen)"})

    def __post_init__(self) -> None:
        check_int(self.n_ctx, "method.n_ctx", minimum=1)
        check_float(self.init_std, "method.init_std", minimum=0.0, strict=True)
        check_int(self.nega_ctx, "method.nega_ctx", minimum=1)
        for name in ("negative_weight", "distance_weight", "nega_nega_weight"):
            check_float(getattr(self, name), f"method.{name}", minimum=0.0)
        check_choice(self.open_set_method, "method.open_set_method", OPEN_SET_METHODS)
        check_int(self.positive_epochs, "method.positive_epochs", minimum=0)
        if self.ctx_init is not None and not isinstance(self.ctx_init, str):
            raise ConfigError(f"option method.ctx_init must be text or null, got {self.ctx_init!r}")
        if isinstance(self.ctx_init, str) and not self.ctx_init.strip():
            self.ctx_init = None
