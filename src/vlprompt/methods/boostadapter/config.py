"""BoostAdapter options: TDA's (named and nested as in taolinzhang/BoostAdapter's ``configs/*.yaml``, the same keys
as kdiAAA/TDA's) plus ``delta`` and ``infer_ori_image``.

Defaults: ``configs/imagenet_a.yaml`` (the dataset ``scripts/run.sh`` runs, ``--datasets A``): ``positive``
l.1-5 (enabled, shot_capacity 3, alpha 2.0, beta 5.0), ``negative`` l.6-16 (enabled, shot_capacity 2, alpha 0.117,
beta 1.0, entropy_threshold 0.2-0.5, mask_threshold 0.03-1.0), ``delta`` 3 (l.17; also ``--delta 3`` of
``scripts/run.sh``). These positive / negative values are TDA's ImageNet defaults
(:mod:`vlprompt.methods.tda.config`). Per-dataset values are shipped as ``configs/boostadapter/<dataset>.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_bool, check_int
from vlprompt.methods.tda.config import TDAConfig


@dataclass
class BoostAdapterConfig(TDAConfig):
    """BoostAdapter (Zhang, Wang, Guo, Dai, Chen, Xia; NeurIPS 2024): TDA's caches plus regional bootstrapping."""

    delta: int = field(default=3, metadata={
        "help": "extra entries per class of the per-image cache that adds the boosting samples: shot_capacity + "
                "delta (runner.py l.147, cfg['delta']; configs/imagenet_a.yaml l.17)"})
    infer_ori_image: bool | None = field(default=None, metadata={
        "help": "the historical cache and the base logits use the original view alone (true) or the mean of the "
                "10% most confident views (false); null = as the authors (runner.py l.120-125): the original alone "
                "except on the ImageNet sets (imagenet, imagenet_a, imagenetv2, imagenet_r, imagenet_sketch; a stream "
                "without a dataset name: data of the 'crop' kind)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.delta, "method.delta", minimum=0)
        if self.infer_ori_image is not None:
            check_bool(self.infer_ori_image, "method.infer_ori_image")
