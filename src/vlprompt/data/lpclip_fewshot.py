"""The few-shot images of CoOp's linear-probe baseline (``lpclip``) for the same seed.

The linear-probe numbers of CoOp's paper (and of the tables that copy them: Tip-Adapter's, CLIP-Adapter's)
come from KaiyangZhou/CoOp@ff61507 ``lpclip/``, which does not use Dassl's few-shot sampling
(:mod:`vlprompt.data.reference_fewshot`): ``feat_extractor.py`` encodes the *whole* train, val and test
splits (``dataset.train_x`` / ``.val`` / ``.test`` in the reader's order, l.124-129, ``shuffle=False``
l.136; ``DATASET.NUM_SHOTS`` is left at Dassl's -1), and ``linear_probe.py`` then draws the K shots with
numpy, for each run ``seed`` in 1 .. ``--num_run`` (3 in ``linear_probe.sh`` l.9):

1. ``np.random.seed(seed)`` (l.30);
2. for each label of ``np.unique(train_label)`` (ascending), ``np.random.choice(indices of that label,
   size=K, replace=False)`` (l.33-38), the selections concatenated in that order (l.40-41);
3. then, from the same stream, for each of those labels ``min(K, 4)`` val images the same way
   (``val_shot_list`` l.25, l.43-51). ImageNet's val is the test set in CoOp's reader
   (``datasets/imagenet.py`` l.61), so its val shots come from the test images, as in vlprompt's
   ImageNet val.

:func:`make_fewshot_lpclip` repeats 1-3 with a private ``np.random.RandomState(seed)`` (the stream of
``np.random.seed(seed)``, without touching numpy's global state). Like Dassl's sampler, it depends on
the order of the lists (vlprompt's CoOp readers keep the reference's order). Where lpclip stops with
numpy's ``ValueError`` (a class with fewer than K images), a class is kept whole without drawing and a
:class:`~vlprompt.data.reference_fewshot.ShortClassWarning` names it. ``data.fewshot_sampler: lpclip``
selects this sampler; base / new subsampling (not part of lpclip) happens first.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from vlprompt.core.errors import DataError
from vlprompt.data.fewshot import MAX_VAL_SHOTS, check_shots
from vlprompt.data.reference_fewshot import ShortClassWarning
from vlprompt.data.types import DatasetSplits, Datum


def _draw(items: Sequence[Datum], labels: Sequence[int], shots: int, rs: np.random.RandomState,
          short: dict[int, int]) -> list[Datum]:
    """For each of ``labels`` (in that order), ``rs.choice`` of ``shots`` of its positions in ``items``."""
    positions: dict[int, list[int]] = {}
    for i, d in enumerate(items):
        positions.setdefault(d.label, []).append(i)
    out: list[Datum] = []
    for label in labels:
        mine = positions.get(label, [])
        if len(mine) < shots:  # lpclip: ValueError from np.random.choice; here: kept whole, nothing drawn
            out.extend(items[i] for i in mine)
            short[label] = len(mine)
            continue
        out.extend(items[int(i)] for i in rs.choice(np.asarray(mine), size=shots, replace=False))
    return out


def _warn(splits: DatasetSplits, split: str, shots: int, short: dict[int, int]) -> None:
    if short:
        names = ", ".join(f"'{splits.classnames[label]}' ({n})" for label, n in sorted(short.items())[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        warnings.warn(f"{splits.name}: {len(short)} class(es) have fewer than {shots} {split} images and are kept "
                      f"whole (lpclip's numpy sampling would stop there): {names}{more}.", ShortClassWarning,
                      stacklevel=3)


def make_fewshot_lpclip(splits: DatasetSplits, shots: int | None, seed: int) -> DatasetSplits:
    """Copy of ``splits`` with lpclip's K-shot train and ``min(K, 4)``-shot val for ``seed`` (module doc).

    ``shots`` None / -1 keeps everything; test is never touched.
    """
    k = check_shots(shots)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"the few-shot sampling seed (train.seed) must be an integer, got {seed!r}.")
    if k is None:
        return dataclasses.replace(splits, train=list(splits.train), val=list(splits.val))
    if not 0 <= seed < 2**32:
        raise DataError(f"lpclip's numpy sampling needs a seed in [0, 2**32), got {seed} (train.seed).")
    rs = np.random.RandomState(seed)
    labels = sorted({d.label for d in splits.train})  # np.unique(train_label): ascending
    short: dict[int, int] = {}
    train = _draw(splits.train, labels, k, rs, short)
    _warn(splits, "train", k, short)
    short_val: dict[int, int] = {}
    val = _draw(splits.val, labels, min(k, MAX_VAL_SHOTS), rs, short_val)
    _warn(splits, "val", min(k, MAX_VAL_SHOTS), short_val)
    return dataclasses.replace(splits, train=train, val=val)
