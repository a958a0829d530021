"""The few-shot images of the reference code (CoOp / CoCoOp on Dassl) for the same seed.

What the reference computes (KaiyangZhou/CoOp and KaiyangZhou/Dassl.pytorch, files and lines cited):

1. ``train.py`` L130-132 seeds Python's ``random`` once with ``cfg.SEED`` (``set_random_seed``,
   ``dassl/utils/tools.py`` L73-77) and then builds the trainer, whose data manager builds the dataset
   first (``dassl/engine/trainer.py`` L324, ``dassl/data/data_manager.py`` L61); nothing in between
   draws from ``random``.
2. Each CoOp dataset (``datasets/oxford_pets.py`` L33-49; the same lines in caltech101, dtd,
   eurosat, fgvc_aircraft, food101, oxford_flowers, stanford_cars, sun397, ucf101) calls
   ``generate_fewshot_dataset(train, num_shots=K)`` and then
   ``generate_fewshot_dataset(val, num_shots=min(K, 4))`` on the lists in split-file order, both
   drawing from that one stream. ImageNet (``datasets/imagenet.py`` L52, L61) samples only train; its
   val is the whole test set.
3. ``generate_fewshot_dataset`` (``dassl/data/datasets/base_dataset.py`` L167-209) groups the items by
   label in a dict filled in input order (``split_dataset_by_label``, L211-223), so labels are visited
   in order of first appearance; each group gives ``random.sample(items, K)`` (selection order kept),
   or, when it has fewer than K items, all of them without drawing anything (``repeat=False``, the
   default since Dassl commit e3a15da of 2021-10-09; before it, ``random.choices(items, k=K)``).
4. Base-to-new (``DATASET.SUBSAMPLE_CLASSES``): ``subsample_classes`` runs *after* the few-shot
   sampling (``datasets/oxford_pets.py`` L51-52), so the K shots are drawn over all classes first.

:func:`make_fewshot_reference` does 1-3 with a private ``random.Random(seed)`` (the same stream as
``random.seed(seed)``, without touching the global one); the caller subsamples classes afterwards
(:func:`vlprompt.data.pipeline.prepare_data`). The result depends on the order of the split lists,
which vlprompt's CoOp readers keep as the reference reads them (split-file order; ImageNet: see
``data.options.order`` of the ``imagenet`` reader). A dataset declares that it is read this way with
``register_dataset(..., sampler="reference")`` (and ImageNet's val = test with ``val_is_test=True``);
``data.fewshot_sampler: auto`` then picks this sampler for it.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Sequence

from vlprompt.core.errors import ConfigError, DataError
from vlprompt.data.fewshot import MAX_VAL_SHOTS, check_shots
from vlprompt.data.registry import DatasetInfo
from vlprompt.data.types import DatasetSplits, Datum

SAMPLERS = ("auto", "reference", "stable", "lpclip")
"""``data.fewshot_sampler``: ``reference`` (this module), ``stable`` (:func:`vlprompt.data.fewshot.make_fewshot`,
independent of the listing order), ``lpclip`` (CoOp's linear-probe script, :mod:`vlprompt.data.lpclip_fewshot`)
or ``auto`` (the sampler the dataset declares, ``DatasetInfo.sampler``)."""


class ShortClassWarning(UserWarning):
    """Some classes have fewer than K images; like the reference, all of them are kept."""


def resolve_sampler(sampler: str, info: DatasetInfo) -> str:
    """``reference``, ``stable`` or ``lpclip`` for ``data.fewshot_sampler`` = ``sampler`` on the dataset ``info``."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"option data.fewshot_sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    return info.sampler if sampler == "auto" else sampler


def sample_per_label(items: Sequence[Datum], shots: int, rng: random.Random) -> tuple[list[Datum], dict[int, int]]:
    """Dassl's per-label sampling of one list (see module doc, point 3).

    Returns the sampled items (labels in order of first appearance, each label's items in
    ``rng.sample``'s selection order) and ``{label: count}`` for the labels with fewer than
    ``shots`` items, which are kept whole.
    """
    groups: dict[int, list[Datum]] = {}
    for d in items:
        groups.setdefault(d.label, []).append(d)
    out: list[Datum] = []
    short: dict[int, int] = {}
    for label, group in groups.items():
        if len(group) >= shots:
            out.extend(rng.sample(group, shots))
        else:
            out.extend(group)
            short[label] = len(group)
    return out, short


def _warn_short(splits: DatasetSplits, split: str, shots: int, short: dict[int, int]) -> None:
    if not short:
        return
    names = ", ".join(f"'{splits.classnames[label]}' ({n})" for label, n in sorted(short.items())[:10])
    more = f" and {len(short) - 10} more" if len(short) > 10 else ""
    warnings.warn(
        f"{splits.name}: {len(short)} class(es) have fewer than {shots} {split} images and are kept whole, "
        f"as the reference code does: {names}{more}.",
        ShortClassWarning,
        stacklevel=3,
    )


def make_fewshot_reference(
    splits: DatasetSplits, shots: int | None, seed: int, *, val_is_test: bool = False
) -> DatasetSplits:
    """Copy of ``splits`` with the reference's K-shot train and ``min(K, 4)``-shot val for ``seed``.

    ``splits`` must hold every class (subsample base / new classes afterwards, as the reference
    does) with its lists in the reference's order. ``shots`` None / -1 keeps everything. Classes
    with fewer images than asked for are kept whole, with a :class:`ShortClassWarning` naming them;
    a class with no training image at all is named too. Test is never touched; with ``val_is_test``
    (the dataset's ``DatasetInfo.val_is_test``: ImageNet) neither is val (``datasets/imagenet.py`` L61).
    """
    k = check_shots(shots)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"the few-shot sampling seed (train.seed) must be an integer, got {seed!r}.")
    if k is None:
        return dataclasses.replace(splits, train=list(splits.train), val=list(splits.val))
    rng = random.Random(seed)
    train, short = sample_per_label(splits.train, k, rng)
    if splits.train:
        present = {d.label for d in splits.train}
        short.update({label: 0 for label in range(splits.num_classes) if label not in present})
    _warn_short(splits, "train", k, short)
    if val_is_test:
        val = list(splits.val)
    else:
        val, short_val = sample_per_label(splits.val, min(k, MAX_VAL_SHOTS), rng)
        _warn_short(splits, "val", min(k, MAX_VAL_SHOTS), short_val)
    return dataclasses.replace(splits, train=train, val=val)
