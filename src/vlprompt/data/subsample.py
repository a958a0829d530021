"""CoOp / CoCoOp's base-to-new class split (``DATASET.SUBSAMPLE_CLASSES``).

As in CoOp's ``DatasetBase.subsample_classes``: the labels are sorted, the first ``ceil(n / 2)`` are
the *base* classes and the rest the *new* ones; the kept classes are relabelled from 0 in order.
"""

from __future__ import annotations

import dataclasses
import math

from vlprompt.core.errors import ConfigError
from vlprompt.data.types import DatasetSplits, Datum

SUBSAMPLE_CHOICES = ("all", "base", "new")


def subsample_classes(splits: DatasetSplits, which: str) -> DatasetSplits:
    """Keep the base (first half, rounded up) or new classes of every split, relabelled from 0."""
    if which not in SUBSAMPLE_CHOICES:
        raise ConfigError(f"option data.subsample_classes must be all, base or new; got {which!r}")
    if which == "all":
        return splits
    n = splits.num_classes
    m = math.ceil(n / 2)
    lo, hi = (0, m) if which == "base" else (m, n)

    def keep(items: list[Datum]) -> list[Datum]:
        return [Datum(d.path, d.label - lo, d.classname) for d in items if lo <= d.label < hi]

    return dataclasses.replace(
        splits, name=f"{splits.name}_{which}", classnames=list(splits.classnames[lo:hi]),
        train=keep(splits.train), val=keep(splits.val), test=keep(splits.test),
    )
