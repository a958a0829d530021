"""DePT's options, added to its host method's (Koorye/DePT@d4ff416 ``train.py`` ``extend_cfg`` l.67-92).

Names follow the authors' config keys: ``lp_weight`` (TRAINER.LINEAR_PROBE.WEIGHT), ``lr_exp`` (OPTIM.LR_EXP),
``film`` (TRAINER.FILM.LINEAR_PROBE), ``test_time_fusion`` (TRAINER.LINEAR_PROBE.TEST_TIME_FUSION). The config
class of ``dept_<host>`` is built by :func:`vlprompt.methods.dept.model.dept_variant`: the host's dataclass with
these fields added.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_bool, check_float


@dataclass
class DePTOptions:
    """Decoupled Prompt Tuning (Zhang, Wu, Gao, Shen, Song; CVPR 2024): the channel-adjusted transfer head."""

    lp_weight: float = field(default=0.7, metadata={
        "help": "lambda: loss = (1 - lambda) CE(host) + lambda CE(head), and on the training classes the prediction "
                "(1 - lambda) host + lambda head (TRAINER.LINEAR_PROBE.WEIGHT, Koorye/DePT train.py l.87; "
                "trainers/elp_coop.py l.73-74, l.131-132)"})
    lr_exp: float = field(default=6.5, metadata={
        "help": "learning-rate multiplier of the head (its FiLM transforms and linear classifier) after the warm-up "
                "(OPTIM.LR_EXP, STAGED_LR, NEW_LAYERS ['linear_probe', 'film']: train.py l.71-73; trainers/optim.py "
                "l.37-83)"})
    film: bool = field(default=True, metadata={
        "help": "the learned per-channel transforms (FiLM: scale * x + bias) of the image and the text features "
                "before the head (TRAINER.FILM.LINEAR_PROBE, train.py l.92; trainers/elp_maple.py l.18-40); "
                "false: the linear head reads the features as they are"})
    test_time_fusion: bool = field(default=True, metadata={
        "help": "on the training classes predict (1 - lambda) host + lambda head; false: the head alone "
                "(TRAINER.LINEAR_PROBE.TEST_TIME_FUSION, train.py l.88; trainers/elp_coop.py l.69-75). Other "
                "classes always get the host's prediction (l.77-84)"})

    def __post_init__(self) -> None:
        if check_float(self.lp_weight, "method.lp_weight", minimum=0.0) > 1.0:
            raise ConfigError(f"option method.lp_weight must be <= 1 (a convex weight), got {self.lp_weight}")
        check_float(self.lr_exp, "method.lr_exp", minimum=0.0, strict=True)
        check_bool(self.film, "method.film")
        check_bool(self.test_time_fusion, "method.test_time_fusion")
        host_post_init = getattr(super(), "__post_init__", None)
        if host_post_init is not None:  # the host's own checks (the config class puts it after this one)
            host_post_init()
