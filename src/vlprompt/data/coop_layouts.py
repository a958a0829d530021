"""Readers for the 11 CoOp datasets and the 4 ImageNet domain-generalisation targets.

Each reader expects exactly the folder layout of CoOp's ``DATASETS.md`` and reads the data the way
the matching ``datasets/*.py`` of CoOp does:

* the 9 datasets that ship a ``split_zhou_*.json`` file (Caltech101, OxfordPets, StanfordCars,
  OxfordFlowers, Food101, SUN397, DescribableTextures, EuroSAT, UCF101) are one generic reader
  (:func:`read_split_zhou`, mirroring ``OxfordPets.read_split``), each declared by one
  :func:`register_split_json` call with its folders and its facts;
* ``imagenet`` mirrors ``datasets/imagenet.py`` (CoOp's ``preprocessed.pkl`` only with
  ``data.options.order: preprocessed``);
* ``fgvc_aircraft`` mirrors ``datasets/fgvc_aircraft.py``;
* ``imagenetv2`` / ``imagenet_sketch`` / ``imagenet_a`` / ``imagenet_r`` mirror
  ``datasets/imagenetv2.py``, ``imagenet_sketch.py``, ``imagenet_a.py`` and ``imagenet_r.py`` and
  return :class:`DGSplits`, which also maps their labels to ImageNet's 1000 class indices.

Every reader is called as ``reader(root, **options)`` where ``root`` is the data root that holds
the dataset folders (CoOp's ``DATASET.ROOT``); ``root`` may also be the dataset folder itself. Each
is registered with its facts (:class:`vlprompt.data.registry.DatasetInfo`): CoOp's template of
``trainers/zsclip.py``, the ``reference`` few-shot sampler (they list their images in the reference's
order), ImageNet's val = test and 50 epochs, and a tiny tree of the layout (:meth:`SplitJsonLayout.tiny_tree`
and the ``_tiny_*`` builders).
Options shared by all readers (:data:`COMMON_OPTIONS`):

* ``allow_outside_root`` (bool, default False): accept split entries that are absolute paths or
  leave the image folder through ``..``;
* ``check_files`` (bool, default True): check that every image a split file lists exists.

Everything that can go wrong with the user's files raises :class:`~vlprompt.core.errors.DataError`.
The small helpers here (option checking, path resolution, existence checks, JSON/text reading)
are shared with :mod:`vlprompt.data.custom`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.data.images import list_images
from vlprompt.data.reference_splits import listdir_order, preprocessed_order
from vlprompt.data.registry import TinyTree, register_dataset
from vlprompt.data.tiny_trees import TINY_CLASSES, TINY_COUNTS, class_color, write_class_images, write_image
from vlprompt.data.types import DatasetSplits, Datum

COOP_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
COMMON_OPTIONS: dict[str, Any] = {"allow_outside_root": False, "check_files": True}
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class DGSplits(DatasetSplits):
    """A test-only ImageNet variant (V2, Sketch, A, R).

    ``imagenet_indices[label]`` is the index of this dataset's class ``label`` among ImageNet's
    1000 classes (in ImageNet's label order, i.e. sorted wnids), so that a prompt learned on
    ImageNet can be evaluated on the 200-class subsets A and R.
    """

    imagenet_indices: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by vlprompt.data.custom)
# --------------------------------------------------------------------------------------------


def take_options(dataset: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``options`` into ``defaults``; unknown names or non-bool values for bool options -> DataError.

    An option given as ``None`` keeps its default.
    """
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise DataError(
            f"unknown option '{unknown[0]}' in data.options for dataset '{dataset}'; "
            f"valid options are: {', '.join(sorted(defaults))}."
        )
    merged = dict(defaults)
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(defaults[key], bool) and not isinstance(value, bool):
            raise DataError(f"data.options.{key} (dataset '{dataset}') must be true or false, got {value!r}.")
        merged[key] = value
    return merged


def require_root(root: str | os.PathLike[str] | None, dataset: str) -> str:
    """Return ``root`` as an absolute path; DataError if it is not given or not a folder."""
    if root is None or str(root).strip() == "":
        raise DataError(
            f"no dataset root given for dataset '{dataset}' (option data.root); set it to the folder "
            f"that holds the dataset."
        )
    path = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(path):
        raise DataError(
            f"dataset root '{path}' does not exist (option data.root); set data.root to the folder "
            f"that holds the dataset."
        )
    if not os.path.isdir(path):
        raise DataError(f"dataset root '{path}' is not a folder (option data.root); point it to a folder.")
    return path


def require_dir(path: str, what: str, hint: str) -> str:
    """Return ``path`` if it is a folder, else DataError naming it (``hint`` says what to do)."""
    if not os.path.isdir(path):
        state = "is not a folder" if os.path.exists(path) else "not found"
        raise DataError(f"{what} '{path}' {state}. {hint}")
    return path


def require_file(path: str, what: str, hint: str) -> str:
    """Return ``path`` if it is a file, else DataError naming it (``hint`` says what to do)."""
    if not os.path.isfile(path):
        state = "is not a file" if os.path.exists(path) else "not found"
        raise DataError(f"{what} '{path}' {state}. {hint}")
    return path


_REAL_DIRS: dict[str, str] = {}


def _real_dir(folder: str) -> str:
    """``os.path.realpath`` of a folder, memoised (split files list many images per folder)."""
    real = _REAL_DIRS.get(folder)
    if real is None:
        if len(_REAL_DIRS) > 100_000:
            _REAL_DIRS.clear()
        real = _REAL_DIRS[folder] = os.path.realpath(folder)
    return real


def is_inside(path: str, folder: str) -> bool:
    """True if ``path`` lies inside ``folder`` once symbolic links (of both) are resolved."""
    base = _real_dir(os.path.abspath(folder)).rstrip(os.sep) + os.sep
    parent, name = os.path.split(os.path.abspath(path))
    real = os.path.join(_real_dir(parent), name)
    if os.path.islink(real):
        real = os.path.realpath(real)
    return real.startswith(base)


def resolve_entry(
    base_dir: str, entry: str, *, allow_outside_root: bool, where: str | Callable[[], str]
) -> str:
    """Join the relative path ``entry`` to ``base_dir`` and return the normalised absolute path.

    Absolute entries, entries that leave ``base_dir`` through ``..`` and entries that lead outside it
    through a symbolic link (checked on the real paths, symlinks resolved) raise DataError unless
    ``allow_outside_root`` (then they are used as they are / as joined). ``where`` (or what it
    returns, if callable) names the entry in error messages.
    """
    base = os.path.normpath(os.path.abspath(base_dir))
    full = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
    if allow_outside_root:
        return full
    if os.path.isabs(entry) or entry.startswith("~"):
        problem = f"path '{entry}' is absolute; paths must be relative to '{base}'"
    elif not full.startswith(base.rstrip(os.sep) + os.sep):
        problem = f"path '{entry}' points outside '{base}' (through '..'); move the image under that folder"
    elif not is_inside(full, base):
        problem = (f"path '{entry}' leads outside '{base}' through a symbolic link (to '{os.path.realpath(full)}'); "
                   "move the image under that folder")
    else:
        return full
    where = where if isinstance(where, str) else where()
    raise DataError(f"{where}: {problem} (or set data.options.allow_outside_root: true).")


class FileIndex:
    """Fast existence checks for many files: lists each folder once, falls back to ``os.path.exists``."""

    def __init__(self) -> None:
        self._dirs: dict[str, frozenset[str] | None] = {}

    def _names(self, folder: str) -> frozenset[str] | None:
        if folder not in self._dirs:
            try:
                self._dirs[folder] = frozenset(os.listdir(folder))
            except OSError:
                self._dirs[folder] = None
        return self._dirs[folder]

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        names = self._names(folder)
        if names is not None and name in names:
            return True
        return os.path.exists(path)  # e.g. case-insensitive file systems


def check_files_exist(paths: Sequence[str], describe: Callable[[int], str], hint: str) -> None:
    """Raise DataError for the first of ``paths`` that does not exist.

    ``describe(i)`` names where ``paths[i]`` came from (file, entry / line); the message also says
    how many paths are missing in all.
    """
    index = FileIndex()
    missing = [i for i, p in enumerate(paths) if not index.exists(p)]
    if missing:
        first = missing[0]
        more = f" ({len(missing)} of {len(paths)} listed images are missing)" if len(missing) > 1 else ""
        raise DataError(f"{describe(first)} names image '{paths[first]}', which does not exist{more}. {hint}")


def read_json_file(path: str, what: str) -> Any:
    """Parse the JSON file ``path``; DataError with file, line and column if it is malformed (or too deep)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{what} '{path}' is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            f"Fix or re-create the file."
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} '{path}' is not UTF-8 text ({exc.reason}); re-create the file.") from None
    except RecursionError:
        raise DataError(
            f"{what} '{path}' is nested too deeply (lists or objects inside each other about 1000 levels or more); "
            "fix or re-create the file."
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {what} '{path}': {exc.strerror or exc}.") from None


def read_text_lines(path: str, what: str) -> list[tuple[int, str]]:
    """Return ``(line_number, stripped_line)`` for the non-empty lines of a UTF-8 text file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} '{path}' is not UTF-8 text ({exc.reason}); re-save it as UTF-8.") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} '{path}': {exc.strerror or exc}.") from None
    return [(i, s) for i, line in enumerate(lines, start=1) if (s := line.strip())]


def subfolders(folder: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def class_folder_images(folder: str, hint: str, *, recursive: bool = False) -> list[str]:
    """Images of one class folder; DataError if there are none."""
    images = list_images(folder, recursive=recursive)
    if not images:
        raise DataError(f"class folder '{folder}' contains no images. {hint}")
    return images


def classnames_from_labels(pairs: Iterable[tuple[int, str]], source: str) -> list[str]:
    """Class-name list (index = label) from ``(label, classname)`` pairs.

    Labels must be 0..n-1 with none missing, and each label must always carry the same name.
    """
    names: dict[int, str] = {}
    for label, name in pairs:
        if names.setdefault(label, name) != name:
            raise DataError(
                f"{source}: label {label} is given two class names, '{names[label]}' and '{name}'; "
                f"each label must have one class name."
            )
    if not names:
        raise DataError(f"{source} lists no images.")
    n = max(names) + 1
    gaps = [i for i in range(n) if i not in names]
    if gaps:
        shown = ", ".join(map(str, gaps[:5])) + (", ..." if len(gaps) > 5 else "")
        raise DataError(
            f"{source}: labels must be 0..{n - 1} with every label used, but label(s) {shown} never "
            f"occur; renumber the labels so that they are contiguous."
        )
    return [names[i] for i in range(n)]


def _layout_hint(layout: str) -> str:
    return f"Expected layout (see CoOp's DATASETS.md, {COOP_DATASETS_MD}): {layout}."


def dataset_folder(root: str, dataset_dir: str, markers: Sequence[str], layout: str) -> str:
    """``root/dataset_dir``; or ``root`` itself if it already is that folder (holds one of ``markers``)."""
    path = os.path.join(root, dataset_dir)
    if os.path.isdir(path):
        return path
    if any(os.path.exists(os.path.join(root, m)) for m in markers):
        return root
    raise DataError(
        f"dataset folder '{path}' not found under dataset root '{root}' (option data.root). "
        + _layout_hint(layout)
    )


# --------------------------------------------------------------------------------------------
# The 9 split_zhou_*.json datasets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitJsonLayout:
    """Where a split-file dataset lives: ``root/dataset_dir/{image_dir, split_file}``."""

    name: str  # registry name
    coop_name: str  # CoOp class name, registered as an alias
    dataset_dir: str
    image_dir: str  # relative to dataset_dir; "" = dataset_dir itself (StanfordCars)
    split_file: str

    @property
    def layout(self) -> str:
        images = self.image_dir or "{cars_train, cars_test}"  # StanfordCars: paths relative to dataset_dir
        return f"<root>/{self.dataset_dir}/{images}/ and <root>/{self.dataset_dir}/{self.split_file}"

    def tiny_tree(self, folder: Path) -> TinyTree:
        """This layout under ``folder`` with :data:`TINY_CLASSES` (StanfordCars: ``cars_train`` / ``cars_test``)."""
        base = folder / self.dataset_dir
        images = base / self.image_dir if self.image_dir else base
        split: dict[str, list[list[Any]]] = {}
        for name, count in TINY_COUNTS.items():
            split[name] = [
                [path.relative_to(images).as_posix(), label, cls.replace("_", " ")]
                for label, cls in enumerate(TINY_CLASSES)
                for path in write_class_images(
                    images / (cls if self.image_dir else "cars_test" if name == "test" else "cars_train"),
                    label, count, prefix=f"{cls}_{name}",
                )
            ]
        (base / self.split_file).write_text(json.dumps(split), encoding="utf-8")
        return TinyTree(str(folder))


def _parse_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _split_entries(data: Any, split_path: str) -> dict[str, list[Any]]:
    if not isinstance(data, dict):
        raise DataError(
            f"split file '{split_path}' must hold a JSON object with lists 'train', 'val' and 'test', "
            f"got {type(data).__name__}."
        )
    out: dict[str, list[Any]] = {}
    for split in SPLIT_NAMES:
        entries = data.get(split, [] if split == "val" else None)
        if not isinstance(entries, list):
            state = "is missing" if entries is None else f"is a {type(entries).__name__}, not a list"
            raise DataError(
                f"split file '{split_path}': '{split}' {state}; expected a list of [path, label, classname]."
            )
        out[split] = entries
    return out


def read_split_zhou(
    split_path: str,
    image_dir: str,
    *,
    allow_outside_root: bool = False,
    check_files: bool = True,
    hint: str = "",
) -> tuple[list[str], dict[str, list[Datum]]]:
    """Read a CoOp split file like ``OxfordPets.read_split``.

    The file is ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.
    ``relpath`` is relative to ``image_dir``. Returns ``(classnames, {"train": [...], "val": [...],
    "test": [...]})``; class names are label -> classname over all splits (labels 0..n-1).
    """
    raw = _split_entries(read_json_file(split_path, "split file"), split_path)
    parsed: dict[str, list[tuple[str, int, str]]] = {}
    for split, entries in raw.items():
        rows = []
        for i, entry in enumerate(entries):

            def where(split: str = split, i: int = i, entry: Any = entry) -> str:
                return f"split file '{split_path}', '{split}' entry #{i} {json.dumps(entry)[:200]}"

            if not (isinstance(entry, list) and len(entry) == 3):
                raise DataError(f"{where()}: expected [relative_path, label, classname].")
            rel, label, classname = entry
            label = _parse_label(label)
            if not isinstance(rel, str) or not rel.strip():
                raise DataError(f"{where()}: the path must be a non-empty string.")
            if label is None or label < 0:
                raise DataError(f"{where()}: the label must be an integer >= 0.")
            if not isinstance(classname, str) or not classname.strip():
                raise DataError(f"{where()}: the class name must be a non-empty string.")
            path = resolve_entry(image_dir, rel, allow_outside_root=allow_outside_root, where=where)
            rows.append((path, label, classname))
        parsed[split] = rows
    classnames = classnames_from_labels(
        ((label, name) for rows in parsed.values() for _, label, name in rows), f"split file '{split_path}'"
    )
    if check_files:
        flat = [(split, i, row[0]) for split, rows in parsed.items() for i, row in enumerate(rows)]
        check_files_exist(
            [p for _, _, p in flat],
            lambda k: (
                f"split file '{split_path}', '{flat[k][0]}' entry #{flat[k][1]} "
                f"{json.dumps(raw[flat[k][0]][flat[k][1]])[:200]}"
            ),
            hint or f"Check that the images are extracted into '{image_dir}'.",
        )
    splits = {split: [Datum(p, label, name) for p, label, name in rows] for split, rows in parsed.items()}
    return classnames, splits


def _read_split_json_dataset(
    layout: SplitJsonLayout, root: str | None, options: Mapping[str, Any]
) -> DatasetSplits:
    opts = take_options(layout.name, options, COMMON_OPTIONS)
    root = require_root(root, layout.name)
    hint = _layout_hint(layout.layout)
    markers = [layout.split_file] + ([layout.image_dir] if layout.image_dir else [])
    ds_dir = dataset_folder(root, layout.dataset_dir, markers, layout.layout)
    image_dir = os.path.join(ds_dir, layout.image_dir) if layout.image_dir else ds_dir
    require_dir(image_dir, "image folder", hint)
    split_path = require_file(
        os.path.join(ds_dir, layout.split_file),
        "split file",
        f"Download {layout.split_file} (linked in CoOp's DATASETS.md, {COOP_DATASETS_MD}) into '{ds_dir}'.",
    )
    classnames, splits = read_split_zhou(
        split_path,
        image_dir,
        allow_outside_root=opts["allow_outside_root"],
        check_files=opts["check_files"],
        hint=f"Check that the images are extracted into '{image_dir}'. {hint}",
    )
    return DatasetSplits(
        name=layout.name, classnames=classnames, train=splits["train"], val=splits["val"], test=splits["test"]
    )


def register_split_json(
    name: str, coop_name: str, dataset_dir: str, image_dir: str, split_file: str, *, template: str
) -> None:
    """Declare one of CoOp's split-file datasets: its :class:`SplitJsonLayout` (folder names exactly as
    in CoOp's ``datasets/*.py``; CoOp's class name is an alias) and CoOp's ``template``; it samples
    with the ``reference`` sampler and builds its tiny tree with :meth:`SplitJsonLayout.tiny_tree`."""
    layout = SplitJsonLayout(name, coop_name, dataset_dir, image_dir, split_file)

    def reader(root: str | None = None, **options: Any) -> DatasetSplits:
        return _read_split_json_dataset(layout, root, options)

    reader.__name__ = reader.__qualname__ = f"read_{name}"
    reader.__doc__ = (
        f"Read CoOp's {coop_name} (``datasets/{name}.py``): {layout.layout}, "
        f"split file read like ``OxfordPets.read_split``."
    )
    register_dataset(name, coop_name, template=template, sampler="reference", tiny_tree=layout.tiny_tree)(reader)


register_split_json("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                    template="a photo of a {}.")
register_split_json("oxford_pets", "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
                    template="a photo of a {}, a type of pet.")
register_split_json("stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json",
                    template="a photo of a {}.")
register_split_json("oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                    template="a photo of a {}, a type of flower.")
register_split_json("food101", "Food101", "food-101", "images", "split_zhou_Food101.json",
                    template="a photo of {}, a type of food.")
register_split_json("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json",
                    template="a photo of a {}.")
register_split_json("dtd", "DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json",
                    template="{} texture.")
register_split_json("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
                    template="a centered satellite photo of {}.")
register_split_json("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                    template="a photo of a person doing {}.")


# --------------------------------------------------------------------------------------------
# FGVC Aircraft
# --------------------------------------------------------------------------------------------

_AIRCRAFT_LAYOUT = (
    "<root>/fgvc_aircraft/{images/, variants.txt, images_variant_train.txt, images_variant_val.txt, "
    "images_variant_test.txt}"
)


def _read_aircraft_split(
    path: str, image_dir: str, cname2lab: Mapping[str, int], check_files: bool
) -> list[Datum]:
    rows = []
    for lineno, line in read_text_lines(path, "split file"):
        imid, _, classname = line.partition(" ")
        classname = classname.strip()
        if not classname:
            raise DataError(
                f"split file '{path}', line {lineno}: expected '<image id> <variant>', got '{line}'."
            )
        if classname not in cname2lab:
            raise DataError(
                f"split file '{path}', line {lineno}: variant '{classname}' is not listed in variants.txt."
            )
        image = os.path.join(image_dir, imid + ".jpg")
        rows.append((lineno, Datum(image, cname2lab[classname], classname)))
    if check_files:
        check_files_exist(
            [d.path for _, d in rows],
            lambda k: f"split file '{path}', line {rows[k][0]}",
            f"Check that the images are extracted into '{image_dir}'. {_layout_hint(_AIRCRAFT_LAYOUT)}",
        )
    return [d for _, d in rows]


def _tiny_fgvc_aircraft(folder: Path) -> TinyTree:
    """``fgvc_aircraft/{variants.txt, images_variant_*.txt, images/<id>.jpg}`` with 2 variants."""
    base = folder / "fgvc_aircraft"
    variants = [cls.replace("_", " ") for cls in TINY_CLASSES]
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("".join(f"{v}\n" for v in variants), encoding="utf-8")
    image_id = 1000000
    for split, count in TINY_COUNTS.items():
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(count):
                write_image(base / "images" / f"{image_id}.jpg", class_color(label), seed=image_id)
                lines.append(f"{image_id} {variant}\n")
                image_id += 1
        (base / f"images_variant_{split}.txt").write_text("".join(lines), encoding="utf-8")
    return TinyTree(str(folder))


@register_dataset("fgvc_aircraft", "FGVCAircraft", template="a photo of a {}, a type of aircraft.",
                  sampler="reference", tiny_tree=_tiny_fgvc_aircraft)
def read_fgvc_aircraft(root: str | None = None, **options: Any) -> DatasetSplits:
    """Read CoOp's FGVCAircraft (``datasets/fgvc_aircraft.py``).

    ``variants.txt`` holds one class name per line (label = line index); each
    ``images_variant_{train,val,test}.txt`` line is ``<image id> <variant>`` (the variant may contain
    spaces) and names ``images/<image id>.jpg``.
    """
    opts = take_options("fgvc_aircraft", options, COMMON_OPTIONS)
    root = require_root(root, "fgvc_aircraft")
    hint = _layout_hint(_AIRCRAFT_LAYOUT)
    ds_dir = dataset_folder(root, "fgvc_aircraft", ["variants.txt"], _AIRCRAFT_LAYOUT)
    image_dir = require_dir(os.path.join(ds_dir, "images"), "image folder", hint)
    variants_path = require_file(os.path.join(ds_dir, "variants.txt"), "class list", hint)
    classnames = [line for _, line in read_text_lines(variants_path, "class list")]
    cname2lab: dict[str, int] = {}
    for label, name in enumerate(classnames):
        if cname2lab.setdefault(name, label) != label:
            raise DataError(
                f"class list '{variants_path}' names variant '{name}' twice; remove the duplicate."
            )
    if not classnames:
        raise DataError(f"class list '{variants_path}' is empty. {hint}")
    splits = {
        split: _read_aircraft_split(
            require_file(os.path.join(ds_dir, f"images_variant_{split}.txt"), "split file", hint),
            image_dir,
            cname2lab,
            opts["check_files"],
        )
        for split in SPLIT_NAMES
    }
    return DatasetSplits(
        name="fgvc_aircraft", classnames=classnames, train=splits["train"], val=splits["val"], test=splits["test"]
    )


# --------------------------------------------------------------------------------------------
# ImageNet and its domain-generalisation targets
# --------------------------------------------------------------------------------------------

_IMAGENET_LAYOUT = "<root>/imagenet/{images/train/<wnid>/, images/val/<wnid>/, classnames.txt}"


def read_imagenet_classnames(path: str) -> dict[str, str]:
    """Read ImageNet's ``classnames.txt`` (``ImageNet.read_classnames``): ``"<wnid> <class name>"`` lines.

    Returns wnid -> class name in file order. The name is everything after the first whitespace.
    """
    out: dict[str, str] = {}
    for lineno, line in read_text_lines(path, "class-name file"):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(
                f"class-name file '{path}', line {lineno}: expected '<wnid> <class name>', got '{line}'."
            )
        wnid, name = parts[0], parts[1].strip()
        if wnid in out:
            raise DataError(f"class-name file '{path}', line {lineno}: wnid '{wnid}' is listed twice.")
        out[wnid] = name
    if not out:
        raise DataError(f"class-name file '{path}' is empty; copy CoOp's classnames.txt there.")
    return out


def read_class_folders(
    split_dir: str,
    labels: Mapping[str, int],
    classnames: Sequence[str],
    *,
    loose_message: Callable[[str], str],
    unknown_message: Callable[[str], str],
    empty_hint: str,
    recursive: bool = False,
) -> list[Datum]:
    """Images of ``split_dir/<folder>/*`` labelled ``labels[folder]``.

    Images lying directly in ``split_dir`` and folders not in ``labels`` are errors whose messages
    ``loose_message(first loose image)`` / ``unknown_message(folder path)`` build; an empty class folder
    is an error with ``empty_hint``.
    """
    loose = list_images(split_dir)
    if loose:
        raise DataError(loose_message(loose[0]))
    data: list[Datum] = []
    for folder in subfolders(split_dir):
        path = os.path.join(split_dir, folder)
        if folder not in labels:
            raise DataError(unknown_message(path))
        label = labels[folder]
        images = class_folder_images(path, empty_hint, recursive=recursive)
        data.extend(Datum(p, label, classnames[label]) for p in images)
    return data


def _read_wnid_folders(
    split_dir: str, wnid_to_label: Mapping[str, int], classnames: Sequence[str], known_from: str, hint: str
) -> list[Datum]:
    """Images of ``split_dir/<wnid>/*``; every wnid folder must be a class (listed in ``known_from``)."""
    return read_class_folders(
        split_dir, wnid_to_label, classnames,
        loose_message=lambda first: (
            f"image folder '{split_dir}' holds images directly (e.g. '{os.path.basename(first)}'); they "
            f"must be sorted into one sub-folder per class (wnid). {hint}"),
        unknown_message=lambda path: f"class folder '{path}' is not one of the classes ({known_from}). {hint}",
        empty_hint=hint,
    )


IMAGENET_ORDERS = ("sorted", "listdir", "preprocessed")


def _imagenet_order(
    order: str, ds_dir: str, train: list[Datum], test: list[Datum], classnames: Sequence[str], hint: str
) -> tuple[list[Datum], list[Datum]]:
    """ImageNet's lists in the order ``data.options.order`` asks for (see :func:`read_imagenet`)."""
    if order == "listdir":
        return listdir_order(train), listdir_order(test)
    if order == "preprocessed":
        path = require_file(
            os.path.join(ds_dir, "preprocessed.pkl"), "ImageNet listing",
            "It is written by CoOp's datasets/imagenet.py on its first run; copy it there or use "
            f"data.options.order: listdir. {hint}",
        )
        return preprocessed_order(path, train, test, classnames)
    return train, test


_TINY_WNIDS = {"n01440764": "tench", "n01443537": "goldfish"}


def _write_tiny_classnames(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in _TINY_WNIDS.items()), encoding="utf-8")


def _tiny_imagenet(folder: Path) -> TinyTree:
    """``imagenet/{classnames.txt, images/train/<wnid>/, images/val/<wnid>/}`` with 2 wnids."""
    base = folder / "imagenet"
    _write_tiny_classnames(base / "classnames.txt")
    for label, wnid in enumerate(sorted(_TINY_WNIDS)):
        write_class_images(base / "images" / "train" / wnid, label, TINY_COUNTS["train"], prefix=wnid, ext=".JPEG")
        write_class_images(base / "images" / "val" / wnid, label, TINY_COUNTS["test"], prefix=f"val_{wnid}",
                           ext=".JPEG")
    return TinyTree(str(folder))


@register_dataset("imagenet", "ImageNet", template="a photo of a {}.", sampler="reference", val_is_test=True,
                  default_epochs=50, tiny_tree=_tiny_imagenet, test_time_views="crop")
def read_imagenet(root: str | None = None, **options: Any) -> DatasetSplits:
    """Read CoOp's ImageNet (``datasets/imagenet.py``) from the raw folders.

    Labels are the positions of the wnid folders of ``images/train`` in sorted order; class names
    come from ``classnames.txt``. train = ``images/train``, test = ``images/val`` and, as in CoOp,
    val = test (ImageNet has no separate validation split).

    Option ``order`` sets the order of the images inside each class, which decides the reference
    few-shot sampler's images: ``sorted`` (default; the same on every machine), ``listdir``
    (``os.listdir`` order, as CoOp's ``ImageNet.read_data`` lists them: the reference's order on
    this file system) or ``preprocessed`` (exactly the lists of CoOp's ``imagenet/preprocessed.pkl``,
    read without executing pickled code, :mod:`vlprompt.data.reference_splits`; nothing is written).
    """
    opts = take_options("imagenet", options, {**COMMON_OPTIONS, "order": "sorted"})
    if opts["order"] not in IMAGENET_ORDERS:
        raise DataError(
            f"data.options.order (dataset 'imagenet') must be one of {', '.join(IMAGENET_ORDERS)}; "
            f"got {opts['order']!r}."
        )
    root = require_root(root, "imagenet")
    hint = _layout_hint(_IMAGENET_LAYOUT)
    ds_dir = dataset_folder(root, "imagenet", ["classnames.txt"], _IMAGENET_LAYOUT)
    names = read_imagenet_classnames(
        require_file(os.path.join(ds_dir, "classnames.txt"), "class-name file", hint)
    )
    train_dir = require_dir(os.path.join(ds_dir, "images", "train"), "image folder", hint)
    val_dir = require_dir(os.path.join(ds_dir, "images", "val"), "image folder", hint)
    wnids = subfolders(train_dir)
    if not wnids:
        raise DataError(f"image folder '{train_dir}' has no class (wnid) folders. {hint}")
    missing = [w for w in wnids if w not in names]
    if missing:
        raise DataError(
            f"class folder '{os.path.join(train_dir, missing[0])}' has no entry in "
            f"'{os.path.join(ds_dir, 'classnames.txt')}'; use CoOp's classnames.txt. {hint}"
        )
    classnames = [names[w] for w in wnids]
    wnid_to_label = {w: i for i, w in enumerate(wnids)}
    train = _read_wnid_folders(train_dir, wnid_to_label, classnames, "classnames.txt", hint)
    test = _read_wnid_folders(val_dir, wnid_to_label, classnames, f"the wnid folders of '{train_dir}'", hint)
    train, test = _imagenet_order(opts["order"], ds_dir, train, test, classnames, hint)
    return DatasetSplits(name="imagenet", classnames=classnames, train=train, val=list(test), test=test)


@dataclass(frozen=True)
class _DGLayout:
    name: str
    coop_name: str
    dataset_dir: str
    image_dir: str  # relative to dataset_dir
    subset: bool  # 200-class subset labelled by the wnid folders present (A, R)
    numbered: bool = False  # class folders are label indices 0..999 (V2)

    @property
    def layout(self) -> str:
        folder = "<label 0..999>" if self.numbered else "<wnid>"
        return f"<root>/{self.dataset_dir}/{{{self.image_dir}/{folder}/, classnames.txt}}"

    def tiny_tree(self, folder: Path) -> TinyTree:
        """This layout under ``folder`` with 2 ImageNet classes, test images only."""
        base = folder / self.dataset_dir
        _write_tiny_classnames(base / "classnames.txt")
        for label, wnid in enumerate(sorted(_TINY_WNIDS)):
            sub = str(label) if self.numbered else wnid
            write_class_images(base / self.image_dir / sub, label, TINY_COUNTS["test"], prefix=wnid)
        return TinyTree(str(folder))


def _dg_classnames(root: str, ds_dir: str, hint: str) -> dict[str, str]:
    """ImageNet's wnid -> name from ``<dataset>/classnames.txt`` (or ``<root>/imagenet/classnames.txt``)."""
    path = os.path.join(ds_dir, "classnames.txt")
    fallback = os.path.join(root, "imagenet", "classnames.txt")
    if not os.path.isfile(path) and os.path.isfile(fallback):
        path = fallback
    return read_imagenet_classnames(
        require_file(path, "class-name file", f"Copy ImageNet's classnames.txt into '{ds_dir}'. {hint}")
    )


def _read_numbered_folders(image_dir: str, classnames: Sequence[str], hint: str) -> list[Datum]:
    """ImageNetV2: class folders named by label index (``datasets/imagenetv2.py``)."""
    data: list[Datum] = []
    for folder in subfolders(image_dir):
        if not folder.isdigit() or int(folder) >= len(classnames):
            raise DataError(
                f"class folder '{os.path.join(image_dir, folder)}' is not a label index "
                f"0..{len(classnames) - 1}. {hint}"
            )
        label = int(folder)
        images = class_folder_images(os.path.join(image_dir, folder), hint)
        data.extend(Datum(p, label, classnames[label]) for p in images)
    return sorted(data, key=lambda d: (d.label, d.path))


def _read_dg_dataset(layout: _DGLayout, root: str | None, options: Mapping[str, Any]) -> DGSplits:
    take_options(layout.name, options, COMMON_OPTIONS)
    root = require_root(root, layout.name)
    hint = _layout_hint(layout.layout)
    ds_dir = dataset_folder(root, layout.dataset_dir, [layout.image_dir], layout.layout)
    image_dir = require_dir(os.path.join(ds_dir, layout.image_dir), "image folder", hint)
    names = _dg_classnames(root, ds_dir, hint)
    all_wnids = sorted(names)  # ImageNet's label order
    all_classnames = [names[w] for w in all_wnids]
    if layout.numbered:
        test = _read_numbered_folders(image_dir, all_classnames, hint)
        classnames, indices = all_classnames, list(range(len(all_wnids)))
    else:
        present = subfolders(image_dir)
        if not present:
            raise DataError(f"image folder '{image_dir}' has no class (wnid) folders. {hint}")
        # A / R: the wnid folders present (sorted) are the classes; V2 / Sketch: all 1000 classes.
        wnids = [w for w in present if w in names] if layout.subset else all_wnids
        classnames = [names[w] for w in wnids]
        position = {w: i for i, w in enumerate(all_wnids)}
        indices = [position[w] for w in wnids]
        test = _read_wnid_folders(
            image_dir,
            {w: i for i, w in enumerate(wnids)},
            classnames,
            "ImageNet wnids in classnames.txt",
            hint,
        )
    return DGSplits(
        name=layout.name,
        classnames=classnames,
        train=[],
        val=[],
        test=test,
        imagenet_indices=indices,
    )


def _register_dg(
    name: str, coop_name: str, dataset_dir: str, image_dir: str, *, subset: bool, numbered: bool = False
) -> None:
    """Declare a test-only ImageNet variant: its :class:`_DGLayout`, CoOp's template, the reference sampler."""
    layout = _DGLayout(name, coop_name, dataset_dir, image_dir, subset, numbered)

    def reader(root: str | None = None, **options: Any) -> DGSplits:
        return _read_dg_dataset(layout, root, options)

    reader.__name__ = reader.__qualname__ = f"read_{name}"
    reader.__doc__ = f"Read CoOp's {coop_name} (``datasets/{name}.py``), test only: {layout.layout}."
    register_dataset(name, coop_name, template="a photo of a {}.", sampler="reference",
                     tiny_tree=layout.tiny_tree, test_time_views="crop")(reader)


_register_dg("imagenetv2", "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", subset=False,
             numbered=True)
_register_dg("imagenet_sketch", "ImageNetSketch", "imagenet-sketch", "images", subset=False)
_register_dg("imagenet_a", "ImageNetA", "imagenet-adversarial", "imagenet-a", subset=True)
_register_dg("imagenet_r", "ImageNetR", "imagenet-rendition", "imagenet-r", subset=True)
