"""K-shot sampling and few-shot split files.

:func:`sample_fewshot` follows Dassl's ``DatasetBase.generate_fewshot_dataset`` (used by every CoOp
dataset: ``train = generate_fewshot_dataset(train, num_shots=K)`` and
``val = generate_fewshot_dataset(val, num_shots=min(K, 4))``) but is deterministic and does not
depend on the order of its input: items are grouped by label, each group is sorted by path, labels
are visited in ascending order and sampled with one ``random.Random(seed)``; the result is sorted
by ``(label, path)``. Unlike Dassl, a class with fewer than K images is an error in strict mode
(training split) instead of silently giving that class fewer shots.

:func:`save_fewshot_json` / :func:`load_fewshot_json` store a sampled split so that a run can be
repeated on exactly the same images (the role of CoOp's ``split_fewshot/shot_K-seed_S.pkl``, but
as JSON, never pickle).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.core.io import atomic_write_text
from vlprompt.data.coop_layouts import read_json_file
from vlprompt.data.types import DatasetSplits, Datum

FEWSHOT_FORMAT = "vlprompt-fewshot"
FEWSHOT_VERSION = 1
MAX_VAL_SHOTS = 4  # CoOp: val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))


def check_shots(shots: Any) -> int | None:
    """Validate ``data.shots``: a positive int, or -1 / None for "all images" (returned as None)."""
    if shots is None:
        return None
    if isinstance(shots, bool) or not isinstance(shots, int):
        raise DataError(
            f"data.shots must be a whole number of images per class (or -1 for all), got {shots!r}."
        )
    if shots == -1:
        return None
    if shots <= 0:
        raise DataError(
            f"data.shots must be a positive number of images per class (or -1 for all images), got {shots}."
        )
    return shots


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"the few-shot sampling seed (train.seed) must be an integer, got {seed!r}.")
    return seed


def _sort_key(d: Datum) -> tuple[int, str]:
    return (d.label, d.path)


def _group_by_label(items: Iterable[Datum]) -> dict[int, list[Datum]]:
    groups: dict[int, list[Datum]] = defaultdict(list)
    for d in items:
        groups[d.label].append(d)
    return {label: sorted(groups[label], key=lambda d: d.path) for label in sorted(groups)}


def _check_enough(
    groups: dict[int, list[Datum]], shots: int, split_name: str, classnames: Sequence[str] | None
) -> None:
    counts = {label: len(g) for label, g in groups.items()}
    names = {label: g[0].classname for label, g in groups.items()}
    for label, name in enumerate(classnames or ()):
        counts.setdefault(label, 0)
        names.setdefault(label, name)
    short = sorted(label for label, n in counts.items() if n < shots)
    if short:
        label = short[0]
        smallest = min(counts.values())
        more = f" ({len(short)} classes are short)" if len(short) > 1 else ""
        raise DataError(
            f"class '{names[label]}' (label {label}) has only {counts[label]} image(s) in the {split_name} "
            f"split, fewer than data.shots={shots}{more}; use a smaller data.shots (the smallest class has "
            f"{smallest}) or add images to that class."
        )


def sample_fewshot(
    items: Iterable[Datum],
    shots: int | None,
    seed: int,
    *,
    strict: bool = True,
    split_name: str = "train",
    classnames: Sequence[str] | None = None,
) -> list[Datum]:
    """Sample ``shots`` items per label (Dassl's ``generate_fewshot_dataset``, deterministic).

    Args:
        items: the split to sample from (any order; the result does not depend on it).
        shots: images per class; ``None`` or ``-1`` keeps every item.
        seed: seed of the ``random.Random`` used for the sampling.
        strict: a class with fewer than ``shots`` items raises DataError; otherwise all its items
            are kept (as Dassl does; used for val).
        split_name: named in error messages.
        classnames: if given (with ``strict``), classes with no items at all are errors too.

    Returns:
        The sampled items sorted by ``(label, path)``.
    """
    k = check_shots(shots)
    rng = random.Random(_check_seed(seed))
    groups = _group_by_label(items)
    if k is None:
        return [d for g in groups.values() for d in g]
    if strict:
        _check_enough(groups, k, split_name, classnames)
    out: list[Datum] = []
    for group in groups.values():
        out.extend(rng.sample(group, k) if len(group) >= k else group)
    return sorted(out, key=_sort_key)


def make_fewshot(splits: DatasetSplits, shots: int | None, seed: int) -> DatasetSplits:
    """Return a copy of ``splits`` with a K-shot train split and a ``min(K, 4)``-shot val split.

    Train sampling is strict (every class needs K images); val sampling is not, and an empty val
    stays empty (ImageNet's reader sets val = test, so its val is sampled from the test images).
    ``shots`` None / -1 keeps everything. Test is never touched. The result has the same type
    as ``splits`` (e.g. :class:`~vlprompt.data.coop_layouts.DGSplits`).
    """
    k = check_shots(shots)
    if k is None:
        return dataclasses.replace(splits, train=list(splits.train), val=list(splits.val))
    train = sample_fewshot(
        splits.train,
        k,
        seed,
        strict=True,
        split_name="train",
        classnames=splits.classnames if splits.train else None,
    )
    val = sample_fewshot(splits.val, min(k, MAX_VAL_SHOTS), seed, strict=False, split_name="val")
    return dataclasses.replace(splits, train=train, val=val)


# --------------------------------------------------------------------------------------------
# Few-shot split files
# --------------------------------------------------------------------------------------------


def _classnames_from_items(items: Iterable[Datum]) -> list[str]:
    names: dict[int, str] = {}
    for d in items:
        names.setdefault(d.label, d.classname)
    if sorted(names) != list(range(len(names))):
        raise ValueError("cannot infer class names from items whose labels are not 0..n-1; pass classnames=")
    return [names[i] for i in range(len(names))]


def _dump_items(items: Sequence[Datum]) -> str:
    if not items:
        return "[]"
    rows = ",\n".join("  " + json.dumps([d.path, d.label, d.classname], ensure_ascii=False) for d in items)
    return "[\n" + rows + "\n ]"


def save_fewshot_json(
    path: str | os.PathLike[str],
    splits_or_lists: DatasetSplits | tuple[Sequence[Datum], Sequence[Datum]],
    *,
    dataset: str,
    shots: int | None,
    seed: int,
    classnames: Sequence[str] | None = None,
) -> None:
    """Write a sampled train/val split to ``path`` (atomically).

    ``splits_or_lists`` is a :class:`DatasetSplits` (its train, val and class names are saved) or a
    ``(train, val)`` pair (class names from ``classnames`` or inferred from the items). The file is
    ``{"format": "vlprompt-fewshot", "version": 1, "dataset", "shots", "seed", "classnames",
    "train": [[path, label, classname], ...], "val": [...]}``.
    """
    if isinstance(splits_or_lists, DatasetSplits):
        train, val = list(splits_or_lists.train), list(splits_or_lists.val)
        names = list(classnames if classnames is not None else splits_or_lists.classnames)
    else:
        train, val = (list(x) for x in splits_or_lists)
        names = list(classnames) if classnames is not None else _classnames_from_items([*train, *val])
    head = {
        "format": FEWSHOT_FORMAT,
        "version": FEWSHOT_VERSION,
        "dataset": dataset,
        "shots": shots,
        "seed": seed,
        "classnames": names,
    }
    fields = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in head.items()]
    fields += [f' "train": {_dump_items(train)}', f' "val": {_dump_items(val)}']
    text = "{\n" + ",\n".join(fields) + "\n}\n"
    atomic_write_text(os.fspath(path), text)


def _load_items(entries: Any, key: str, path: str, classnames: Sequence[str]) -> list[Datum]:
    if not isinstance(entries, list):
        raise DataError(f"few-shot file '{path}': '{key}' must be a list of [path, label, classname].")
    out = []
    for i, entry in enumerate(entries):
        where = f"few-shot file '{path}', '{key}' entry #{i}"
        if not (isinstance(entry, list) and len(entry) == 3):
            raise DataError(f"{where}: expected [path, label, classname], got {json.dumps(entry)[:200]}.")
        p, label, name = entry
        if not isinstance(p, str) or isinstance(label, bool) or not isinstance(label, int):
            raise DataError(f"{where}: expected [path, label, classname], got {json.dumps(entry)[:200]}.")
        if not 0 <= label < len(classnames):
            raise DataError(f"{where}: label {label} is outside the class list (0..{len(classnames) - 1}).")
        if name != classnames[label]:
            raise DataError(
                f"{where}: class name '{name}' does not match classnames[{label}] = '{classnames[label]}'."
            )
        out.append(Datum(p, label, name))
    return out


def load_fewshot_json(path: str | os.PathLike[str]) -> tuple[list[Datum], list[Datum], dict[str, Any]]:
    """Read a file written by :func:`save_fewshot_json`.

    Returns ``(train, val, meta)`` where ``meta`` holds format, version, dataset, shots, seed and
    classnames.

    Raises:
        DataError: missing file, invalid JSON (with line and column), not a vlprompt few-shot file,
            a newer format version, or malformed entries.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"few-shot file '{path}' not found; check the path or sample the split again.")
    data = read_json_file(path, "few-shot file")
    if not isinstance(data, dict) or data.get("format") != FEWSHOT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(
            f"'{path}' is not a vlprompt few-shot file (format {found!r}, expected '{FEWSHOT_FORMAT}')."
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DataError(f"few-shot file '{path}' has an invalid version {version!r}.")
    if version > FEWSHOT_VERSION:
        raise DataError(
            f"few-shot file '{path}' has version {version}, newer than this vlprompt supports "
            f"({FEWSHOT_VERSION}); upgrade vlprompt or sample the split again."
        )
    classnames = data.get("classnames")
    if not isinstance(classnames, list) or not all(isinstance(c, str) for c in classnames):
        raise DataError(f"few-shot file '{path}': 'classnames' must be a list of strings.")
    train = _load_items(data.get("train"), "train", path, classnames)
    val = _load_items(data.get("val", []), "val", path, classnames)
    meta = {k: data.get(k) for k in ("format", "version", "dataset", "shots", "seed", "classnames")}
    return train, val, meta


# --------------------------------------------------------------------------------------------
# Confinement of split-file entries
# --------------------------------------------------------------------------------------------


def check_split_file_entries(
    train: Sequence[Datum],
    val: Sequence[Datum],
    splits: DatasetSplits,
    *,
    root: str | None,
    allow_outside_root: bool = False,
    source: str | os.PathLike[str] = "few-shot file",
) -> None:
    """Refuse a few-shot / pseudo-label file whose entries leave the dataset or leak test images.

    Called when a split file is loaded (``data.fewshot_file`` or a run's ``fewshot.json``):

    * an entry that is not one of the dataset's own images must lie inside ``data.root`` once
      symbolic links are resolved (``root`` None: it must be one of the dataset's images), unless
      ``allow_outside_root`` (``data.options.allow_outside_root``, the explicit escape hatch);
    * a training entry may never be an image of the test split (nor a validation entry, unless the
      dataset itself lists it as validation, as ImageNet's reader does), whatever the options.
    """
    from vlprompt.data.coop_layouts import is_inside

    own_train = {d.path for d in splits.train}
    own_val = {d.path for d in splits.val}
    test_paths = {d.path for d in splits.test}
    unknown = [d for d in (*train, *val) if d.path not in own_train and d.path not in own_val]
    real_test: set[str] = set()
    if unknown:  # compare real paths too: a symlink or '..' spelling of a test image is still that image
        real_test = {os.path.realpath(p) for p in test_paths if "://" not in p}
    for key, items, allowed in (("train", train, own_train), ("val", val, own_train | own_val)):
        for i, d in enumerate(items):
            where = f"few-shot file '{source}', '{key}' entry #{i} '{d.path}'"
            if d.path in allowed:
                continue
            if d.path in test_paths or ("://" not in d.path and os.path.realpath(d.path) in real_test):
                raise DataError(f"{where} is an image of the test split; test images may never be used for "
                                "training (test leakage). Remove it from the file or sample the split again.")
            if allow_outside_root or d.path in own_val:
                continue
            if root is None:
                raise DataError(f"{where} is not an image of dataset '{splits.name}' and data.root is not set; "
                                "use the dataset's images (or set data.options.allow_outside_root: true).")
            if not is_inside(d.path, root):
                raise DataError(f"{where} lies outside data.root '{root}' (symbolic links resolved); move the image "
                                "under data.root or set data.options.allow_outside_root: true.")
