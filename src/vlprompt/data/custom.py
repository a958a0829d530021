"""No-code custom datasets: an ImageFolder tree or CSV files.

``imagefolder`` (torchvision-style ImageFolder, one tree per split)::

    <root>/train/<class_folder>/*.jpg     (images may sit in sub-folders of a class folder)
    <root>/test/<class_folder>/*.jpg
    <root>/val/<class_folder>/*.jpg       (optional; without it val is empty)

Classes are the sorted folder names of ``train``; ``test``/``val`` may only use those folders. Class
names are the folder names with ``_`` replaced by spaces, or come from option ``classnames_file``:
a text file of ``<folder_name> <class name>`` lines or a JSON object ``{folder_name: class name}``.

``csv``: ``<root>/train.csv``, ``<root>/test.csv`` and optionally ``<root>/val.csv`` (or options
``train_csv`` / ``val_csv`` / ``test_csv``) with header ``path,label``. ``path`` is relative to the
CSV's folder; ``label`` is an integer index into the class list or a class name. The class list
comes from option ``classnames_file`` (one name per line) or, without it, is the sorted set of the
(string) labels of ``train.csv``. A label that looks like an integer is always an index.

Both accept option ``template`` (the zero-shot template; without it the registered default,
``"a photo of a {}."``) and the common options ``allow_outside_root`` / ``check_files`` of
:mod:`vlprompt.data.coop_layouts`. Both declare the registry's default facts (the ``stable`` few-shot
sampler: an ImageFolder or CSV listing has no canonical order).
Relative file options are looked up under ``root`` first, then relative to the working directory.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.data.coop_layouts import (
    COMMON_OPTIONS,
    check_files_exist,
    read_class_folders,
    read_json_file,
    read_text_lines,
    require_dir,
    require_root,
    resolve_entry,
    subfolders,
    take_options,
)
from vlprompt.data.registry import TinyTree, register_dataset
from vlprompt.data.templates import check_template
from vlprompt.data.tiny_trees import TINY_CLASSES, TINY_COUNTS, write_class_images
from vlprompt.data.types import DatasetSplits, Datum

IMAGEFOLDER_OPTIONS: dict[str, Any] = {**COMMON_OPTIONS, "classnames_file": None, "template": None}
CSV_OPTIONS: dict[str, Any] = {
    **COMMON_OPTIONS,
    "train_csv": None,
    "val_csv": None,
    "test_csv": None,
    "classnames_file": None,
    "template": None,
}
_IMAGEFOLDER_LAYOUT = (
    "Expected layout: <root>/train/<class>/*.jpg, <root>/test/<class>/*.jpg and optionally "
    "<root>/val/<class>/*.jpg."
)
_CSV_LAYOUT = (
    "Expected <root>/train.csv and <root>/test.csv (optionally <root>/val.csv), or options train_csv / "
    "test_csv, each with header 'path,label'."
)


def resolve_user_file(value: Any, root: str | None, option: str) -> str:
    """Absolute path of a file given as option ``option``; relative paths: under ``root``, then cwd."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise DataError(f"data.options.{option} must be a file path, got {value!r}.")
    path = os.path.expanduser(os.fspath(value))
    candidates = [path]
    if not os.path.isabs(path):
        candidates = ([os.path.join(root, path)] if root else []) + [os.path.abspath(path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise DataError(
        f"file '{os.path.abspath(candidates[0])}' (data.options.{option}) not found; check the path."
    )


def _is_index(label: str) -> bool:
    return label.lstrip("-").isdigit()


def _check_unique(names: Sequence[str], source: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(
                f"{source}: class name '{name}' is used for two classes (#{seen[name]} and #{i}); "
                f"class names must be unique."
            )
        seen[name] = i


def _template(opts: Mapping[str, Any]) -> str | None:
    """Option ``template``, checked; None (the registered template) when not given."""
    if opts["template"] is None:
        return None
    return check_template(opts["template"], "data.options.template")


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def read_folder_classnames(path: str) -> dict[str, str]:
    """Read a folder -> class name map: JSON object, or ``<folder><whitespace><class name>`` lines."""
    if path.lower().endswith(".json"):
        data = read_json_file(path, "class-name file (data.options.classnames_file)")
        if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
            raise DataError(
                f"class-name file '{path}' (data.options.classnames_file) must be a JSON object "
                f"mapping folder names to non-empty class names."
            )
        return {str(k): v.strip() for k, v in data.items()}
    out: dict[str, str] = {}
    for lineno, line in read_text_lines(path, "class-name file (data.options.classnames_file)"):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(
                f"class-name file '{path}' (data.options.classnames_file), line {lineno}: expected "
                f"'<folder_name> <class name>', got '{line}'."
            )
        if parts[0] in out:
            raise DataError(f"class-name file '{path}', line {lineno}: folder '{parts[0]}' is listed twice.")
        out[parts[0]] = parts[1].strip()
    return out


def _imagefolder_classnames(folders: Sequence[str], classnames_file: str | None, root: str) -> list[str]:
    if classnames_file is None:
        names = [f.replace("_", " ").strip() or f for f in folders]
        _check_unique(
            names, f"class folders of '{os.path.join(root, 'train')}' (folder name with '_' -> ' ')"
        )
        return names
    path = resolve_user_file(classnames_file, root, "classnames_file")
    mapping = read_folder_classnames(path)
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise DataError(
            f"class-name file '{path}' (data.options.classnames_file) has no entry for class folder "
            f"'{missing[0]}'; add a line '{missing[0]} <class name>'."
        )
    names = [mapping[f] for f in folders]
    _check_unique(names, f"class-name file '{path}'")
    return names


def _read_class_tree(
    split_dir: str, labels: Mapping[str, int], classnames: Sequence[str], train_dir: str
) -> list[Datum]:
    return read_class_folders(
        split_dir, labels, classnames,
        loose_message=lambda first: (
            f"image '{first}' sits directly in '{split_dir}'; put every image in a class folder "
            f"('{split_dir}/<class>/'). {_IMAGEFOLDER_LAYOUT}"),
        unknown_message=lambda path: (
            f"class folder '{path}' has no matching folder in '{train_dir}'; every val/test class "
            f"needs training images (rename or remove the folder)."),
        empty_hint="Add images to it or remove the folder.",
        recursive=True,
    )


def _tiny_imagefolder(folder: Path) -> TinyTree:
    """``folder/{train,val,test}/<class>/*.png`` with :data:`TINY_CLASSES`."""
    for split, count in TINY_COUNTS.items():
        for label, cls in enumerate(TINY_CLASSES):
            write_class_images(folder / split / cls, label, count, prefix=f"{split}_{cls}", ext=".png")
    return TinyTree(str(folder))


@register_dataset("imagefolder", "ImageFolder", "image_folder", tiny_tree=_tiny_imagefolder)
def read_imagefolder(root: str | None = None, **options: Any) -> DatasetSplits:
    """Read an ImageFolder tree: ``<root>/{train,test[,val]}/<class_folder>/images``.

    Options: ``classnames_file``, ``template`` (plus the common ``allow_outside_root`` /
    ``check_files``, which have nothing to check here).
    """
    opts = take_options("imagefolder", options, IMAGEFOLDER_OPTIONS)
    template = _template(opts)
    root = require_root(root, "imagefolder")
    train_dir = require_dir(os.path.join(root, "train"), "train folder", _IMAGEFOLDER_LAYOUT)
    test_dir = require_dir(os.path.join(root, "test"), "test folder", _IMAGEFOLDER_LAYOUT)
    val_dir = os.path.join(root, "val")
    folders = subfolders(train_dir)
    if not folders:
        raise DataError(f"train folder '{train_dir}' has no class folders. {_IMAGEFOLDER_LAYOUT}")
    classnames = _imagefolder_classnames(folders, opts["classnames_file"], root)
    labels = {f: i for i, f in enumerate(folders)}
    train = _read_class_tree(train_dir, labels, classnames, train_dir)
    test = _read_class_tree(test_dir, labels, classnames, train_dir)
    val = _read_class_tree(val_dir, labels, classnames, train_dir) if os.path.isdir(val_dir) else []
    return DatasetSplits(
        name="imagefolder", classnames=classnames, train=train, val=val, test=test, template=template
    )


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def read_path_label_csv(path: str) -> list[tuple[int, str, str]]:
    """Rows ``(line_number, path, label)`` of a CSV with header columns ``path`` and ``label``.

    Extra columns are allowed; blank lines are skipped; every row must have as many columns as the
    header.
    """
    rows: list[tuple[int, str, str]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip().lower() for h in next(reader, [])]
                if "path" not in header or "label" not in header:
                    raise DataError(
                        f"CSV file '{path}', line 1: the header must name the columns 'path' and 'label' "
                        f"(got {','.join(header) or 'an empty line'})."
                    )
                ip, il = header.index("path"), header.index("label")
                for row in reader:
                    if not any(cell.strip() for cell in row):
                        continue
                    if len(row) != len(header):
                        raise DataError(
                            f"CSV file '{path}', line {reader.line_num}: expected {len(header)} columns "
                            f"({','.join(header)}), got {len(row)}; quote fields that contain commas."
                        )
                    rows.append((reader.line_num, row[ip].strip(), row[il].strip()))
            except csv.Error as exc:
                raise DataError(
                    f"CSV file '{path}', line {reader.line_num}: malformed CSV ({exc})."
                ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"CSV file '{path}' is not UTF-8 text ({exc.reason}); re-save it as UTF-8.") from None
    except OSError as exc:
        raise DataError(f"cannot read CSV file '{path}': {exc.strerror or exc}.") from None
    return rows


def _csv_classnames(
    train_rows: list[tuple[int, str, str]], train_csv: str, classnames_file: Any, root: str | None
) -> tuple[list[str], str]:
    """Class list and a description of where it came from."""
    if classnames_file is not None:
        path = resolve_user_file(classnames_file, root, "classnames_file")
        names = [line for _, line in read_text_lines(path, "class-name file (data.options.classnames_file)")]
        if not names:
            raise DataError(
                f"class-name file '{path}' (data.options.classnames_file) is empty; list one class per line."
            )
        _check_unique(names, f"class-name file '{path}'")
        return names, f"class-name file '{path}'"
    for lineno, _, label in train_rows:
        if _is_index(label):
            raise DataError(
                f"CSV file '{train_csv}', line {lineno}: label '{label}' is an integer index, which needs a "
                f"class list: set data.options.classnames_file to a file with one class name per line."
            )
    return sorted({label for _, _, label in train_rows}), f"the labels of '{train_csv}'"


def _csv_split(
    csv_path: str,
    rows: list[tuple[int, str, str]],
    classnames: Sequence[str],
    source: str,
    opts: Mapping[str, Any],
) -> list[Datum]:
    base = os.path.dirname(csv_path)
    index = {name: i for i, name in enumerate(classnames)}
    data: list[tuple[int, Datum]] = []
    for lineno, rel, label in rows:
        where = f"CSV file '{csv_path}', line {lineno}"
        if not rel:
            raise DataError(f"{where}: the path is empty.")
        if not label:
            raise DataError(f"{where}: the label is empty.")
        if _is_index(label):
            idx = int(label)
            if not 0 <= idx < len(classnames):
                raise DataError(
                    f"{where}: label index {idx} is outside the class list "
                    f"(0..{len(classnames) - 1}, from {source})."
                )
        elif label in index:
            idx = index[label]
        else:
            raise DataError(f"{where}: label '{label}' is not in the class list (from {source}).")
        path = resolve_entry(base, rel, allow_outside_root=opts["allow_outside_root"], where=where)
        data.append((lineno, Datum(path, idx, classnames[idx])))
    if opts["check_files"]:
        check_files_exist(
            [d.path for _, d in data],
            lambda k: f"CSV file '{csv_path}', line {data[k][0]}",
            "Fix the path or remove the line.",
        )
    return [d for _, d in data]


def _csv_path(opts: Mapping[str, Any], root: str | None, split: str, required: bool) -> str | None:
    option = f"{split}_csv"
    if opts[option] is not None:
        return resolve_user_file(opts[option], root, option)
    if root is None:
        if required:
            raise DataError(f"dataset 'csv' needs data.root or data.options.{option}. {_CSV_LAYOUT}")
        return None
    path = os.path.join(root, f"{split}.csv")
    if os.path.isfile(path):
        return path
    if required:
        raise DataError(f"CSV file '{path}' not found (or set data.options.{option}). {_CSV_LAYOUT}")
    return None


def _tiny_csv(folder: Path) -> TinyTree:
    """``folder/{train,val,test}.csv`` (``path,label`` with class-name labels) and the images they list."""
    for split, count in TINY_COUNTS.items():
        rows = [
            f"{path.relative_to(folder).as_posix()},{cls}\n"
            for label, cls in enumerate(TINY_CLASSES)
            for path in write_class_images(folder / "images" / split / cls, label, count, ext=".png")
        ]
        (folder / f"{split}.csv").write_text("path,label\n" + "".join(rows), encoding="utf-8")
    return TinyTree(str(folder))


@register_dataset("csv", "CSV", tiny_tree=_tiny_csv)
def read_csv_dataset(root: str | None = None, **options: Any) -> DatasetSplits:
    """Read a dataset described by ``train.csv`` / ``test.csv`` / optional ``val.csv`` (``path,label``).

    Options: ``train_csv``, ``val_csv``, ``test_csv``, ``classnames_file``, ``template``,
    ``allow_outside_root``, ``check_files``. ``root`` may be None when train_csv and test_csv are given.
    """
    opts = take_options("csv", options, CSV_OPTIONS)
    template = _template(opts)
    root = require_root(root, "csv") if root is not None else None
    paths = {
        split: _csv_path(opts, root, split, required=split != "val") for split in ("train", "val", "test")
    }
    rows = {split: read_path_label_csv(p) if p else [] for split, p in paths.items()}
    train_csv = paths["train"]
    assert train_csv is not None
    for split in ("train", "test"):
        if not rows[split]:
            raise DataError(f"CSV file '{paths[split]}' lists no images; add 'path,label' rows.")
    classnames, source = _csv_classnames(rows["train"], train_csv, opts["classnames_file"], root)
    splits = {
        split: _csv_split(p, rows[split], classnames, source, opts) if p else [] for split, p in paths.items()
    }
    return DatasetSplits(
        name="csv",
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        template=template,
    )
