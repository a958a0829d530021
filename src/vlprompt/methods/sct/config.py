"""SCT options: LoCoOp's (CoOp's plus ``lambda_value`` and ``top_k``); SCT adds no option of its own.

Defaults of the authors' ``train.py`` (tmlr-group/SCT): ``--lambda_value`` 0.25 (train.py:178), ``--topk`` 200
for ImageNet-1K (train.py:180; vlprompt's default ``null`` is 20% of the classes, 200 of 1000, as LoCoOp's).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlprompt.methods.locoop.config import LoCoOpConfig


@dataclass
class SCTConfig(LoCoOpConfig):
    """Self-Calibrated Tuning (Yu et al., NeurIPS 2024): LoCoOp's options (``lambda_value``, ``top_k``)."""
