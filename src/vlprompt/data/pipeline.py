"""From a :class:`~vlprompt.config.DataConfig` to the images a run uses.

``prepare_data`` builds the dataset, then takes the K-shot train split and ``min(K, 4)``-shot val
split from (in order of preference) the run folder's own ``fewshot.json`` (a resumed run reuses
exactly what it sampled), the user's ``data.fewshot_file`` (vlprompt JSON, or the reference's
``split_fewshot/shot_K-seed_S.pkl``), or fresh seeded sampling (:func:`fewshot_splits`, sampler
``data.fewshot_sampler``), which it saves to the run folder.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.config import DataConfig
from vlprompt.core.errors import DataError
from vlprompt.data.fewshot import check_split_file_entries, load_fewshot_json, make_fewshot, save_fewshot_json
from vlprompt.data.lpclip_fewshot import make_fewshot_lpclip
from vlprompt.data.reference_fewshot import make_fewshot_reference, resolve_sampler
from vlprompt.data.reference_splits import is_pickle_file, load_reference_fewshot
from vlprompt.data.registry import DatasetInfo, build_dataset, get_dataset_info
from vlprompt.data.subsample import subsample_classes
from vlprompt.data.types import DatasetSplits, Datum


@dataclass
class PreparedData:
    """The full dataset (``splits``; test untouched) and the train / val items actually used."""

    splits: DatasetSplits
    train: list[Datum]
    val: list[Datum]
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)


def load_dataset(
    cfg: DataConfig, *, report: list[dict[str, str]] | None = None, subsample: bool = True
) -> DatasetSplits:
    """Build the dataset named by ``cfg`` (all splits, no few-shot sampling).

    ``subsample`` False keeps every class (ignores ``data.subsample_classes``). With
    ``data.on_bad_image: skip`` every image is decoded once up front; unreadable ones are dropped and
    appended to ``report`` (``{"path", "split", "error"}``) instead of stopping the run.
    """
    splits = build_dataset(cfg.dataset, cfg.root, **cfg.options)
    if subsample:
        splits = subsample_classes(splits, cfg.subsample_classes)
    if cfg.on_bad_image == "skip":
        splits = drop_unreadable(splits, report if report is not None else [])
    return splits


def drop_unreadable(splits: DatasetSplits, report: list[dict[str, str]]) -> DatasetSplits:
    """Copy of ``splits`` without the images ``splits.loader`` cannot read; each one is added to ``report``."""
    kept: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        good = []
        for d in getattr(splits, split):
            try:
                splits.loader(d.path)
            except DataError as exc:
                report.append({"path": d.path, "split": split, "error": str(exc)})
                continue
            good.append(d)
        kept[split] = good
    return dataclasses.replace(splits, **kept)


def fewshot_splits(
    full: DatasetSplits, *, shots: int | None, seed: int, sampler: str = "auto", subsample: str = "all",
    dataset: str | None = None,
) -> DatasetSplits:
    """K-shot train / ``min(K, 4)``-shot val of ``full`` (every class), then the ``subsample`` classes.

    ``sampler`` (``data.fewshot_sampler``): ``reference`` samples as CoOp's code does for the same
    seed, over all classes before subsampling (:mod:`vlprompt.data.reference_fewshot`); ``stable``
    subsamples first and then samples independently of the listing order
    (:func:`vlprompt.data.fewshot.make_fewshot`); ``auto`` is the sampler the dataset declares
    (``DatasetInfo.sampler``: ``reference`` for the CoOp datasets); ``lpclip`` subsamples first and then
    draws as CoOp's linear-probe script (:mod:`vlprompt.data.lpclip_fewshot`). ``dataset`` is the registered
    name the facts are looked up by (default ``full.name``). Test is the ``subsample`` classes' whole
    test split either way.
    """
    info = get_dataset_info(full.name if dataset is None else dataset)
    kind = resolve_sampler(sampler, info)
    if kind == "reference":
        return subsample_classes(make_fewshot_reference(full, shots, seed, val_is_test=info.val_is_test), subsample)
    if kind == "lpclip":
        return make_fewshot_lpclip(subsample_classes(full, subsample), shots, seed)
    return make_fewshot(subsample_classes(full, subsample), shots, seed)


def _subsample_lists(full: DatasetSplits, train: list[Datum], val: list[Datum], which: str) -> tuple[list, list]:
    part = subsample_classes(dataclasses.replace(full, train=train, val=val), which)
    return part.train, part.val


def read_fewshot_file(
    source: Path, full: DatasetSplits, splits: DatasetSplits, subsample: str, info: DatasetInfo
) -> tuple[list[Datum], list[Datum]]:
    """Train / val from a saved split for ``splits`` (= ``full``, the dataset ``info``, with the
    ``subsample`` classes).

    A reference pickle (CoOp's ``split_fewshot/*.pkl``) is matched against ``full`` and then
    subsampled, as the reference does; a vlprompt JSON must list ``splits``' classes, or all of
    ``full``'s (then it is subsampled the same way).
    """
    if is_pickle_file(source):
        train, val = load_reference_fewshot(source, full, val_is_test=info.val_is_test)
        return _subsample_lists(full, train, val, subsample)
    train, val, meta = load_fewshot_json(source)
    names = list(meta.get("classnames", []))
    if names == list(splits.classnames):
        return train, val
    if subsample != "all" and names == list(full.classnames):
        return _subsample_lists(full, train, val, subsample)
    raise DataError(
        f"few-shot file '{source}' lists other classes than dataset '{full.name}'; "
        "it was made for another dataset (option data.fewshot_file)."
    )


def prepare_data(cfg: DataConfig, *, seed: int, fewshot_path: Path | None = None) -> PreparedData:
    """Dataset + few-shot selection for a training run (see module doc)."""
    bad: list[dict[str, str]] = []
    full = load_dataset(cfg, report=bad, subsample=False)
    splits = subsample_classes(full, cfg.subsample_classes)
    source = None
    if fewshot_path is not None and fewshot_path.exists():
        source = fewshot_path
    elif cfg.fewshot_file:
        source = Path(cfg.fewshot_file)
    if source is not None:
        train, val = read_fewshot_file(source, full, splits, cfg.subsample_classes, get_dataset_info(cfg.dataset))
        if not train:
            raise DataError(
                f"few-shot file '{source}' lists no training images for the classes of this run "
                f"(data.subsample_classes: {cfg.subsample_classes}); use a split file with at least one image "
                "per class, or leave data.fewshot_file unset to sample data.shots images per class."
            )
        check_split_file_entries(train, val, splits, root=cfg.root, source=source,
                                 allow_outside_root=bool(cfg.options.get("allow_outside_root", False)))
    else:
        sampled = fewshot_splits(full, shots=None if cfg.shots == -1 else cfg.shots, seed=seed,
                                 sampler=cfg.fewshot_sampler, subsample=cfg.subsample_classes, dataset=cfg.dataset)
        train, val = sampled.train, sampled.val
    if fewshot_path is not None and source != fewshot_path:
        save_fewshot_json(fewshot_path, (train, val), dataset=cfg.dataset, shots=cfg.shots, seed=seed,
                          classnames=splits.classnames)
    return PreparedData(splits, train, val, bad)


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether paths ``a`` and ``b`` name the same file (symbolic links and ``..`` resolved)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, case-insensitive file systems
    except OSError:  # either does not exist (yet)
        return False


_SPLIT_NAME = re.compile(r"shot_(\d+)-seed_(\d+)\.pkl$")


def import_reference_split(
    pickle_path: str | os.PathLike[str], cfg: DataConfig, output: str | os.PathLike[str]
) -> dict[str, Any]:
    """Convert CoOp's ``split_fewshot/shot_K-seed_S.pkl`` for dataset ``cfg`` into vlprompt's few-shot JSON.

    The JSON lists all classes (the reference saves its split before subsampling base / new
    classes; ``data.fewshot_file`` subsamples it like the reference). Shots and seed come from the
    file name when it has the reference's form. Returns ``{"train", "val", "classes", "shots", "seed"}``.
    ``output`` may not be the pickle itself (under any spelling or through a symbolic link): the
    reference's file is never written over.
    """
    if _same_file(pickle_path, output):
        raise DataError(
            f"output '{output}' (option -o/--output) is the split file '{pickle_path}' itself; writing the JSON "
            "there would replace the reference pickle. Choose another output path, e.g. fewshot.json."
        )
    full = load_dataset(cfg, subsample=False)
    train, val = load_reference_fewshot(pickle_path, full, val_is_test=get_dataset_info(cfg.dataset).val_is_test)
    m = _SPLIT_NAME.search(os.path.basename(os.fspath(pickle_path)))
    shots, seed = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    save_fewshot_json(output, (train, val), dataset=cfg.dataset, shots=shots, seed=seed,  # type: ignore[arg-type]
                      classnames=full.classnames)
    return {"train": len(train), "val": len(val), "classes": full.num_classes, "shots": shots, "seed": seed}
