"""ID-Like options, named as in the authors' code (ycfate/ID-like@9acb908: ``eval_ood_detection.py`` arguments,
``config.py`` constants); the ID prompts take CoOp's options (``config.py`` l.7-10: ``n_ctx`` 16, no ``ctx_init``,
class token at the end, no learned class token).

Defaults (file:line of ycfate/ID-like@9acb908): ``n_crop`` 256 (``eval_ood_detection.py`` l.29),
``n_selection`` 32 (l.30), ``n_ex_prompts`` 100 (l.32), ``lam_in`` / ``lam_out`` / ``lam_diff`` 1.0 / 0.3 / 0.2
(l.36-38), ``n_ex_ctx`` 16 and ``ex_ctx_init`` None (``config.py`` l.12-13), the selection template
``"a photo of a {}."`` (``utils/id_like.py`` l.41), the crops' ``RandomResizedCrop(224)`` scale (0.08, 1)
(``utils/dataloaders_utils.py`` l.154, torchvision's default) and ``crop_rounds`` 3 = their ``n_epoch``
(``eval_ood_detection.py`` l.33: fresh crops at every epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int
from vlprompt.methods.coop.config import CoOpConfig
from vlprompt.methods.tip_adapter.config import crop_scale_option


@dataclass
class IDLikeConfig(CoOpConfig):
    """CoOp's options for the ID prompts plus ID-Like's crops, OOD prompts and loss weights."""

    n_crop: int = field(default=256, metadata={"help": "random crops of each training image (n_crop)"})
    n_selection: int = field(
        default=32, metadata={"help": "crops kept as ID (most similar to the class prompt) and as ID-like OOD "
                              "(least similar), each (n_selection)"})
    n_ex_prompts: int = field(default=100, metadata={"help": "learned OOD prompts (n_ex_prompts)"})
    n_ex_ctx: int = field(default=16, metadata={"help": "context tokens shared by the OOD prompts (n_ex_ctx)"})
    ex_ctx_init: str | None = field(
        default=None, metadata={"help": "words initialising the OOD prompts' context; None = N(0, init_std)"})
    lam_in: float = field(default=1.0, metadata={"help": "weight of the ID crops' cross-entropy (lam_in)"})
    lam_out: float = field(default=0.3, metadata={"help": "weight of the OOD crops' log ID-probability (lam_out)"})
    lam_diff: float = field(default=0.2, metadata={"help": "weight of the OOD prompts' diversity loss (lam_diff)"})
    select_template: str = field(
        default="a photo of a {}.", metadata={"help": "hand-crafted prompt the crops are ranked against"})
    crop_scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0], metadata={"help": "RandomResizedCrop scale of the crops"})
    crop_rounds: int = field(
        default=3, metadata={"help": "independent crop draws (epoch e uses draw e mod crop_rounds); the authors "
                             "draw fresh crops in each of their 3 epochs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.n_crop, "method.n_crop", minimum=1)
        check_int(self.n_selection, "method.n_selection", minimum=1)
        if self.n_selection > self.n_crop:
            raise ConfigError(f"option method.n_selection ({self.n_selection}) must be at most method.n_crop "
                              f"({self.n_crop}): it picks that many of each image's crops")
        check_int(self.n_ex_prompts, "method.n_ex_prompts", minimum=1)
        check_int(self.n_ex_ctx, "method.n_ex_ctx", minimum=1)
        check_int(self.crop_rounds, "method.crop_rounds", minimum=1)
        for name in ("lam_in", "lam_out", "lam_diff"):
            check_float(getattr(self, name), f"method.{name}", minimum=0.0)
        if self.ex_ctx_init is not None and not isinstance(self.ex_ctx_init, str):
            raise ConfigError(f"option method.ex_ctx_init must be text or null, got {self.ex_ctx_init!r}")
        if isinstance(self.ex_ctx_init, str) and not self.ex_ctx_init.strip():
            self.ex_ctx_init = None
        if not isinstance(self.select_template, str) or self.select_template.count("{}") != 1:
            raise ConfigError("option method.select_template must be text with exactly one '{}' (the class name), "
                              f"got {self.select_template!r}")
        self.crop_scale = crop_scale_option(self.crop_scale)
