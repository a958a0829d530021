"""From a :class:`~vlprompt.config.DataConfig` to the images a run uses.

``prepare_data`` builds the dataset, then takes the K-shot train split and ``min(K, 4)``-shot val
split from (in order of preference) the run folder's own ``fewshot.json`` (a resumed run reuses
exactly what it sampled), the user's ``data.fewshot_file``, or fresh seeded sampling, which it
saves to the run folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from vlprompt.config import DataConfig
from vlprompt.core.errors import DataError
from vlprompt.data.fewshot import check_split_file_entries, load_fewshot_json, make_fewshot, save_fewshot_json
from vlprompt.data.registry import build_dataset
from vlprompt.data.subsample import subsample_classes
from vlprompt.data.types import DatasetSplits, Datum


@dataclass
class PreparedData:
    """The full dataset (``splits``; test untouched) and the train / val items actually used."""

    splits: DatasetSplits
    train: list[Datum]
    val: list[Datum]
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)


def load_dataset(cfg: DataConfig, *, report: list[dict[str, str]] | None = None) -> DatasetSplits:
    """Build the dataset named by ``cfg`` (all splits, no few-shot sampling).

    With ``data.on_bad_image: skip`` every image is decoded once up front; unreadable ones are
    dropped and appended to ``report`` (``{"path", "split", "error"}``) instead of stopping the run.
    """
    splits = subsample_classes(build_dataset(cfg.dataset, cfg.root, **cfg.options), cfg.subsample_classes)
    if cfg.on_bad_image == "skip":
        splits = drop_unreadable(splits, report if report is not None else [])
    return splits


def drop_unreadable(splits: DatasetSplits, report: list[dict[str, str]]) -> DatasetSplits:
    """Copy of ``splits`` without the images ``splits.loader`` cannot read; each one is added to ``report``."""
    kept = {}
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


def prepare_data(cfg: DataConfig, *, seed: int, fewshot_path: Path | None = None) -> PreparedData:
    """Dataset + few-shot selection for a training run (see module doc)."""
    bad: list[dict[str, str]] = []
    splits = load_dataset(cfg, report=bad)
    source = None
    if fewshot_path is not None and fewshot_path.exists():
        source = fewshot_path
    elif cfg.fewshot_file:
        source = Path(cfg.fewshot_file)
    if source is not None:
        train, val, meta = load_fewshot_json(source)
        if list(meta.get("classnames", [])) != list(splits.classnames):
            raise DataError(
                f"few-shot file '{source}' lists other classes than dataset '{cfg.dataset}'; "
                "it was made for another dataset (option data.fewshot_file)."
            )
        check_split_file_entries(train, val, splits, root=cfg.root, source=source,
                                 allow_outside_root=bool(cfg.options.get("allow_outside_root", False)))
    else:
        sampled = make_fewshot(splits, None if cfg.shots == -1 else cfg.shots, seed)
        train, val = sampled.train, sampled.val
    if fewshot_path is not None and source != fewshot_path:
        save_fewshot_json(fewshot_path, (train, val), dataset=cfg.dataset, shots=cfg.shots, seed=seed,
                          classnames=splits.classnames)
    return PreparedData(splits, train, val, bad)
