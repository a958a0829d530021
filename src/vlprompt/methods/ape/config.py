"""APE / APE-T options, named as in APE's ``configs/*.yaml`` (yangyangyang127/APE@70460de).

Defaults: ``configs/imagenet.yaml`` — ``search_hp: True`` (l.10), ``search_scale: [7, 7, 0.5]`` (l.12),
``search_step: [200, 20, 5]`` (l.13), ``init_beta: 1`` (l.15), ``init_alpha: 2`` (l.16), ``init_gamma: 0.1``
(l.17), ``training_feat_num: 500`` (l.20), ``training_free_feat_num: 500`` (l.21), ``w_training_free: [0.7,
0.3]`` (l.23), ``w_training: [0.2, 0.8]`` (l.24), ``augment_epoch: 10`` (l.31); the cache's augmentation
``RandomResizedCrop(scale=(0.5, 1))`` + flip: ``extract_features.py`` l.120-124. APE-T's ``lr``, ``eps`` and
``train_epoch`` are optimiser settings (the shipped configs' ``optim`` section, configs/ape_t/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_bool, check_float, check_int
from vlprompt.methods.tip_adapter.config import crop_scale_option, numbers


@dataclass
class ApeConfig:
    """Training-free APE (``main.py`` ``APE`` l.28-103): refined channels, cache, three-term logits, search."""

    init_beta: float = field(default=1.0, metadata={"help": "beta before / without the search (init_beta)"})
    init_alpha: float = field(default=2.0, metadata={"help": "alpha before / without the search (init_alpha)"})
    init_gamma: float = field(default=0.1, metadata={"help": "gamma before / without the search (init_gamma)"})
    search_hp: bool = field(default=True, metadata={"help": "search beta, alpha, gamma on the validation split"})
    search_scale: list[float] = field(default_factory=lambda: [7.0, 7.0, 0.5],
                                      metadata={"help": "[S_beta, S_alpha, S_gamma]: largest values searched"})
    search_step: list[int] = field(default_factory=lambda: [200, 20, 5],
                                   metadata={"help": "[N_beta, N_alpha, N_gamma]: number of values searched"})
    training_free_feat_num: int = field(default=500, metadata={
        "help": "refined feature channels kept (at most the backbone's embedding width)"})
    w_training_free: list[float] = field(default_factory=lambda: [0.7, 0.3], metadata={
        "help": "[w_similarity, w_variance] of the channel criterion"})
    augment_epoch: int = field(default=10, metadata={"help": "augmented passes over the few-shot set for the keys"})
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0],
                                    metadata={"help": "RandomResizedCrop scale of the cache's augmentation"})

    def __post_init__(self) -> None:
        for name in ("init_beta", "init_alpha", "init_gamma"):
            check_float(getattr(self, name), f"method.{name}", minimum=0.0)
        check_bool(self.search_hp, "method.search_hp")
        self.search_scale = numbers(self.search_scale, "search_scale", (3,))
        self.search_step = numbers(self.search_step, "search_step", (3,), integer=True)
        check_int(self.training_free_feat_num, "method.training_free_feat_num", minimum=1)
        self.w_training_free = numbers(self.w_training_free, "w_training_free", (2,), positive=False)
        check_int(self.augment_epoch, "method.augment_epoch", minimum=1)
        self.crop_scale = crop_scale_option(self.crop_scale)


@dataclass
class ApeTConfig:
    """APE-T (``main.py`` ``APE_T`` l.106-209, ``utils.py`` ``APE_Training`` l.115-139): a trained category
    residual on the refined channels and trained value weights; beta / alpha searched after training.
    The optimiser (AdamW, lr, epochs, batch 256) is the ``optim`` section."""

    init_beta: float = field(default=1.0, metadata={"help": "beta while training and without the search"})
    init_alpha: float = field(default=2.0, metadata={"help": "alpha while training and without the search"})
    search_hp: bool = field(default=True, metadata={"help": "search beta and alpha on val after training"})
    search_scale: list[float] = field(default_factory=lambda: [7.0, 7.0, 0.5], metadata={
        "help": "[S_beta, S_alpha(, S_gamma)]: largest values searched (APE-T has no gamma: a third entry, as in "
                "the authors' files, is ignored)"})
    search_step: list[int] = field(default_factory=lambda: [200, 20, 5], metadata={
        "help": "[N_beta, N_alpha(, N_gamma)]: number of values searched (a third entry is ignored)"})
    training_feat_num: int = field(default=500, metadata={
        "help": "refined channels that get the trained residual (at most the backbone's embedding width)"})
    w_training: list[float] = field(default_factory=lambda: [0.2, 0.8], metadata={
        "help": "[w_similarity, w_variance] of the channel criterion"})
    augment_epoch: int = field(default=10, metadata={"help": "augmented passes over the few-shot set for the keys"})
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0],
                                    metadata={"help": "RandomResizedCrop scale of the cache's augmentation"})
    select_best_epoch: bool = field(default=True, metadata={
        "help": "keep the epoch with the best validation accuracy (at init_alpha / init_beta), as main.py "
                "l.158-175; false keeps the last epoch"})

    def __post_init__(self) -> None:
        for name in ("init_beta", "init_alpha"):
            check_float(getattr(self, name), f"method.{name}", minimum=0.0)
        check_bool(self.search_hp, "method.search_hp")
        self.search_scale = numbers(self.search_scale, "search_scale", (2, 3))
        self.search_step = numbers(self.search_step, "search_step", (2, 3), integer=True)
        check_int(self.training_feat_num, "method.training_feat_num", minimum=1)
        self.w_training = numbers(self.w_training, "w_training", (2,), positive=False)
        check_int(self.augment_epoch, "method.augment_epoch", minimum=1)
        self.crop_scale = crop_scale_option(self.crop_scale)
        check_bool(self.select_best_epoch, "method.select_best_epoch")
