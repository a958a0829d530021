"""Hugging Face datasets (the ``datasets`` library, extra ``hf-datasets``): ``data.dataset: hf:<source>``.

``<source>`` is, in this order:

* a folder written by ``DatasetDict.save_to_disk`` (it holds ``dataset_dict.json``), read with
  ``datasets.load_from_disk``;
* another folder or a ``.parquet`` file (a folder of parquet files, a dataset repository's snapshot, an
  image folder ``datasets`` recognises), read with ``datasets.load_dataset`` (its packaged readers only: no
  dataset script runs); relative paths are looked up under ``data.root`` first, then the working folder;
* ``owner/name[@revision]``: a dataset repository in the local Hugging Face cache (put there by
  ``hf download owner/name --repo-type dataset``), read as its snapshot folder. Nothing is downloaded.

``data.dataset: hf`` with ``data.root`` (or ``data.options.source``) set to the folder is the same.

Options (``data.options.*``):

* ``image_column``: the column of images; default the one column whose feature is ``datasets.Image``.
* ``label_column``: the column of labels; default ``label``, else the one ``ClassLabel`` column.
  Class names are the ``ClassLabel``'s ``names`` (as written: ``golden_retriever`` stays so); a column of
  strings gives the sorted labels of the train split; integers without ``ClassLabel`` need
  ``classnames_file`` (one name per line, index = label).
* ``train_split`` / ``val_split`` / ``test_split``: split names (default ``train``, the first of
  ``validation`` / ``val`` / ``valid`` present, and ``test``). Without a validation split val is empty, as
  for ``imagefolder`` and ``csv`` (few-shot validation images then come from nowhere: training selects no
  epoch by val).
* ``classnames_file``, ``template``: as for ``imagefolder`` / ``csv``.

Items are ``Datum``s whose ``path`` is a key ``hf-dataset://<id>/<split>/<row>``: ``<id>`` is a digest of the
source and of each split's ``datasets`` fingerprint, so features cached under one dataset never serve
another (:func:`vlprompt.engine.features.encode_items` keys its cache by path). The dataset's ``loader`` decodes
a row's image (RGB, alpha composited onto white as :func:`vlprompt.data.images.to_rgb`). Few-shot sampling is
the generic one (``stable``). Importing vlprompt never imports ``datasets``; reading such a dataset does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vlprompt.core.errors import DataError, VlpromptError
from vlprompt.data.coop_layouts import read_text_lines, take_options
from vlprompt.data.registry import TinyTree, register_dataset
from vlprompt.data.templates import check_template
from vlprompt.data.tiny_trees import TINY_CLASSES, TINY_COUNTS, write_class_images
from vlprompt.data.types import DatasetSplits, Datum

HF_OPTIONS: dict[str, Any] = {
    "source": None, "image_column": None, "label_column": None, "train_split": "train", "val_split": None,
    "test_split": "test", "classnames_file": None, "template": None,
}
KEY_PREFIX = "hf-dataset://"
VAL_NAMES = ("validation", "val", "valid")
_INSTALL = 'pip install -e ".[hf-datasets]" (in the vlprompt clone)'


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"Hugging Face datasets (data.dataset: hf:...) need the package datasets: {_INSTALL}") from exc
    return datasets


def datasets_cache_dir() -> Path:
    """Where ``datasets`` keeps what it prepares from local files: ``HF_DATASETS_CACHE``, else ``HF_HOME/datasets``,
    else ``~/.cache/huggingface/datasets`` (read now, not when ``datasets`` was imported)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_DATASETS_CACHE"]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "datasets"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "datasets"


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """``datasets`` offline (its flag is read from the environment only at import) and without progress bars, for
    the duration."""
    old = getattr(datasets.config, "HF_HUB_OFFLINE", None)
    bars = datasets.is_progress_bar_enabled()
    datasets.config.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = old
        if bars:
            datasets.enable_progress_bars()


# -------------------------------------------------------------------------------------------- source
def resolve_source(source: str | None, root: str | None) -> tuple[Path, str]:
    """``(local path, how to show it)`` of a dataset source (module doc); a cached ``owner/name`` id is its
    snapshot folder."""
    from vlprompt.core.hub import REPO_ID, cached_snapshot, parse_repo_id

    if source is None:
        if root is None or not str(root).strip():
            raise DataError("dataset 'hf' needs a source: data.dataset: hf:<folder, .parquet file or owner/name> "
                            "(or data.root: the dataset's folder)")
        source, root = str(root), None
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"data.options.source (dataset 'hf') must be a folder, file or owner/name, got {source!r}")
    path = os.path.expanduser(source)
    candidates = [path] if os.path.isabs(path) else ([os.path.join(root, path)] if root else []) + [path]
    for candidate in candidates:
        if os.path.exists(candidate):
            return Path(os.path.abspath(candidate)), source
    if REPO_ID.fullmatch(source.partition("@")[0]):
        repo, revision = parse_repo_id(source, f"dataset 'hf:{source}'")
        try:
            folder = cached_snapshot(repo, revision=revision, repo_type="dataset", shown=f"hf:{source}")
        except VlpromptError as exc:
            raise DataError(str(exc)) from None
        return folder, f"hf:{source}"
    raise DataError(f"dataset source '{source}' (data.dataset hf:{source}) is not a folder or file"
                    f"{' under ' + repr(root) + ' or' if root else ''} in '{os.getcwd()}', nor a dataset id "
                    "(owner/name) in the local Hugging Face cache")


def _first_line(exc: Exception) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)[:300]


def load_splits(path: Path, shown: str) -> dict[str, Any]:
    """The splits (name -> ``datasets.Dataset``) stored at ``path``."""
    datasets = _datasets()
    try:
        with _offline(datasets):
            if path.is_dir() and (path / "dataset_dict.json").is_file():
                loaded = datasets.load_from_disk(str(path))
            elif path.is_dir() and (path / "state.json").is_file():
                raise DataError(f"Hugging Face dataset '{shown}' is one split saved with Dataset.save_to_disk; save a "
                                "DatasetDict with train and test splits (DatasetDict(train=..., test=...)"
                                ".save_to_disk(folder))")
            elif path.is_file() and path.suffix.lower() == ".parquet":
                loaded = datasets.load_dataset("parquet", data_files={"train": str(path)},
                                               cache_dir=str(datasets_cache_dir()))
            elif path.is_dir():
                loaded = datasets.load_dataset(str(path), cache_dir=str(datasets_cache_dir()))
            else:
                raise DataError(f"Hugging Face dataset '{shown}' ('{path}') is not a folder or a .parquet file")
    except DataError:
        raise
    except Exception as exc:  # datasets raises many kinds (FileNotFoundError, DatasetNotFoundError, ValueError...)
        raise DataError(f"cannot read Hugging Face dataset '{shown}' ('{path}'): {_first_line(exc)}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"Hugging Face dataset '{shown}' has no named splits; save a DatasetDict")
    return dict(loaded)


# -------------------------------------------------------------------------------------------- columns
def _pick_split(splits: dict[str, Any], option: str, name: Any, shown: str) -> Any:
    if not isinstance(name, str) or name not in splits:
        raise DataError(f"Hugging Face dataset '{shown}' has no split {name!r} (data.options.{option}); its splits "
                        f"are: {', '.join(splits) or 'none'}")
    return splits[name]


def _column(features: Any, option: str, given: Any, default: str | None, kind: Any, what: str, shown: str) -> str:
    """The column named by ``given``, else ``default`` when present, else the one column of feature type ``kind``."""
    if given is not None:
        if given not in features:
            raise DataError(f"Hugging Face dataset '{shown}' has no column {given!r} (data.options.{option}); its "
                            f"columns are: {', '.join(features)}")
        return str(given)
    if default is not None and default in features:
        return default
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) == 1:
        return found[0]
    detail = f"several {what} columns ({', '.join(found)})" if found else f"no {what} column"
    raise DataError(f"Hugging Face dataset '{shown}' has {detail}; name it with data.options.{option} (its columns "
                    f"are: {', '.join(features)})")


def _check_image_column(datasets: Any, features: Any, image: str, shown: str) -> None:
    if not isinstance(features[image], datasets.Image):
        images = ", ".join(n for n, f in features.items() if isinstance(f, datasets.Image)) or "none"
        raise DataError(f"column '{image}' of Hugging Face dataset '{shown}' is not an image column "
                        f"({_describe(features[image])}); its image columns: {images} (data.options.image_column)")


def _describe(feature: Any) -> str:
    return type(feature).__name__ + (f"({feature.dtype})" if hasattr(feature, "dtype") else "")


def _classnames(datasets: Any, train: Any, label: str, opts: dict[str, Any], shown: str) -> list[str]:
    feature = train.features[label]
    if isinstance(feature, datasets.ClassLabel):
        names = [str(n) for n in feature.names]
    elif opts["classnames_file"] is not None:
        from vlprompt.data.custom import resolve_user_file

        path = resolve_user_file(opts["classnames_file"], None, "classnames_file")
        names = [line for _, line in read_text_lines(path, "class-name file (data.options.classnames_file)")]
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = sorted({str(v) for v in train[label]})
    elif isinstance(feature, datasets.Value) and "int" in feature.dtype:
        raise DataError(f"label column '{label}' of Hugging Face dataset '{shown}' holds integers without class names "
                        "(no ClassLabel feature); give them with data.options.classnames_file (one per line), or cast "
                        "the column: dataset.cast_column('label', ClassLabel(names=[...]))")
    else:
        raise DataError(f"column '{label}' of Hugging Face dataset '{shown}' is not a class label "
                        f"({_describe(feature)}); name the label column with data.options.label_column")
    if not names or len(set(names)) != len(names):
        raise DataError(f"the class names of Hugging Face dataset '{shown}' (column '{label}') must be non-empty and "
                        f"unique, got {names[:10]}")
    return names


def _labels(datasets: Any, ds: Any, label: str, classnames: list[str], split: str, shown: str) -> list[int]:
    feature = ds.features[label]
    values = list(ds[label])
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        index = {n: i for i, n in enumerate(classnames)}
        bad = next((v for v in values if v not in index), None)
        if bad is not None:
            raise DataError(f"split '{split}' of Hugging Face dataset '{shown}' has label {bad!r}, which is not a "
                            "class of its train split")
        return [index[v] for v in values]
    if isinstance(feature, datasets.ClassLabel) and [str(n) for n in feature.names] != classnames:
        raise DataError(f"split '{split}' of Hugging Face dataset '{shown}' names other classes (ClassLabel) than "
                        "its train split")
    if not isinstance(feature, (datasets.ClassLabel, datasets.Value)) or (
            isinstance(feature, datasets.Value) and "int" not in feature.dtype):
        raise DataError(f"column '{label}' of split '{split}' of Hugging Face dataset '{shown}' is not a class label "
                        f"({_describe(feature)})")
    bad_row = next((i for i, v in enumerate(values) if v is None or not 0 <= int(v) < len(classnames)), None)
    if bad_row is not None:
        raise DataError(f"row {bad_row} of split '{split}' of Hugging Face dataset '{shown}' has label "
                        f"{values[bad_row]!r}, outside 0..{len(classnames) - 1}")
    return [int(v) for v in values]


# -------------------------------------------------------------------------------------------- loader
class HFImageLoader:
    """``DatasetSplits.loader`` of a Hugging Face dataset: the image of a ``hf-dataset://<id>/<split>/<row>`` key
    as an RGB PIL image. Picklable (``datasets.Dataset`` objects pickle as their memory-mapped files), so
    DataLoader workers can use it."""

    def __init__(self, prefix: str, tables: dict[str, Any], column: str, shown: str) -> None:
        self.prefix, self.tables, self.column, self.shown = prefix, tables, column, shown

    def __call__(self, key: str) -> Image.Image:
        from vlprompt.data.images import to_rgb

        split, _, row = key[len(self.prefix):].rpartition("/") if key.startswith(self.prefix) else ("", "", "")
        if split not in self.tables or not row.isdigit():
            raise DataError(f"'{key}' is not an image of Hugging Face dataset '{self.shown}'")
        where = f"row {row} of split '{split}' of Hugging Face dataset '{self.shown}'"
        try:
            image = self.tables[split][int(row)][self.column]
            if image is None:
                raise DataError(f"cannot read image at {where}: it is empty (None)")
            image.load()
            return to_rgb(image)
        except DataError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # PIL / arrow errors of a damaged row
            raise DataError(f"cannot read image at {where}: {_first_line(exc)}") from None


# -------------------------------------------------------------------------------------------- reader
def _tiny_hf(folder: Path) -> TinyTree:
    """A ``DatasetDict`` (train / validation / test, :data:`TINY_CLASSES`) saved with ``save_to_disk`` in
    ``folder/ds``."""
    datasets = _datasets()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(TINY_CLASSES))})
    parts = {}
    for split, count in TINY_COUNTS.items():
        images, labels = [], []
        for label, cls in enumerate(TINY_CLASSES):
            for path in write_class_images(folder / "images" / split / cls, label, count, ext=".png"):
                with Image.open(path) as img:
                    images.append(img.copy())
                labels.append(label)
        parts["validation" if split == "val" else split] = datasets.Dataset.from_dict(
            {"image": images, "label": labels}, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(folder / "ds"))
    return TinyTree(str(folder / "ds"))


@register_dataset("hf", "huggingface", "hf_datasets", takes_source=True, tiny_tree=_tiny_hf)
def read_hf_dataset(root: str | None = None, **options: Any) -> DatasetSplits:
    """Read a Hugging Face dataset (module doc): ``data.dataset: hf:<source>``, or ``hf`` with ``data.root``."""
    opts = take_options("hf", options, HF_OPTIONS)
    template = check_template(opts["template"], "data.options.template") if opts["template"] is not None else None
    datasets = _datasets()
    path, shown = resolve_source(opts["source"], root)
    splits = load_splits(path, shown)
    val_name = opts["val_split"]
    if val_name is None:
        val_name = next((n for n in VAL_NAMES if n in splits), None)
    chosen = {"train": _pick_split(splits, "train_split", opts["train_split"], shown),
              "test": _pick_split(splits, "test_split", opts["test_split"], shown)}
    if val_name is not None:
        chosen["val"] = _pick_split(splits, "val_split", val_name, shown)
    features = chosen["train"].features
    image = _column(features, "image_column", opts["image_column"], None, datasets.Image, "image", shown)
    label = _column(features, "label_column", opts["label_column"], "label", datasets.ClassLabel, "label", shown)
    _check_image_column(datasets, features, image, shown)
    if image == label:
        raise DataError(f"data.options.image_column and label_column name the same column '{image}'")
    classnames = _classnames(datasets, chosen["train"], label, opts, shown)
    digest = hashlib.sha256(str(path).encode())
    for part, ds in chosen.items():
        for col in (image, label):
            if col not in ds.features:
                raise DataError(f"split '{part}' of Hugging Face dataset '{shown}' has no column '{col}'; its columns "
                                f"are: {', '.join(ds.features)}")
        _check_image_column(datasets, ds.features, image, shown)
        digest.update(f"|{part}:{ds._fingerprint}:{ds.num_rows}".encode())
    prefix = f"{KEY_PREFIX}{digest.hexdigest()[:16]}/"
    items: dict[str, list[Datum]] = {"val": []}
    tables = {}
    for part, ds in chosen.items():
        if not ds.features[image].decode:
            ds = ds.cast_column(image, datasets.Image(decode=True))
        labels = _labels(datasets, ds, label, classnames, part, shown)
        items[part] = [Datum(f"{prefix}{part}/{i}", y, classnames[y]) for i, y in enumerate(labels)]
        tables[part] = ds.select_columns([image])
    for part in ("train", "test"):
        if not items[part]:
            raise DataError(f"split '{opts[part + '_split']}' of Hugging Face dataset '{shown}' has no rows")
    name = f"hf:{opts['source']}" if opts["source"] is not None else "hf"
    return DatasetSplits(name=name, classnames=classnames, train=items["train"], val=items["val"], test=items["test"],
                         template=template, loader=HFImageLoader(prefix, tables, image, shown))
