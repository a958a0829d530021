"""GDA options (mrflogs/ICLR24@560fe21, ``main_few_shots.py`` and ``configs/few_shots/*.yaml``).

``augment_epoch: 10`` (``configs/few_shots/imagenet.yaml`` l.10, the same in every few-shot config), the
augmentation ``RandomResizedCrop(scale=(0.5, 1))`` + flip (``main_few_shots.py`` l.24-29), the alpha grid
``[0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]`` (l.70) and the alpha kept when no value beats accuracy 0
(``best_alpha = 0.1``, l.69). The authors' configs name only ``augment_epoch``; the other names are vlprompt's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int, shown
from vlprompt.methods.tip_adapter.config import crop_scale_option


@dataclass
class GdaConfig:
    """Gaussian discriminant analysis on the few-shot features, ensembled with zero-shot CLIP."""

    augment_epoch: int = field(default=10, metadata={"help": "augmented passes over the few-shot set (each view "
                                                             "is one sample of the estimator)"})
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0],
                                    metadata={"help": "RandomResizedCrop scale of those views"})
    alpha_list: list[float] = field(default_factory=lambda: [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
                                    metadata={"help": "alphas searched on the validation split (main_few_shots.py "
                                                      "l.70); [] keeps init_alpha"})
    init_alpha: float = field(default=0.1, metadata={
        "help": "alpha without a validation split or a search, or when no alpha predicts any val image correctly"})

    def __post_init__(self) -> None:
        check_int(self.augment_epoch, "method.augment_epoch", minimum=1)
        self.crop_scale = crop_scale_option(self.crop_scale)
        if not isinstance(self.alpha_list, list | tuple):
            raise ConfigError(f"option method.alpha_list must be a list of numbers, got {shown(self.alpha_list)}")
        self.alpha_list = [check_float(a, "method.alpha_list", minimum=0.0) for a in self.alpha_list]
        check_float(self.init_alpha, "method.init_alpha", minimum=0.0)
