"""Read the pickled splits of the reference code (CoOp on Dassl) without executing pickled code.

CoOp's datasets save their few-shot splits as ``<dataset>/split_fewshot/shot_{K}-seed_{seed}.pkl``
(``datasets/oxford_pets.py`` L36-49: ``pickle.dump({"train": [...], "val": [...]})``; ImageNet:
``{"train": [...]}``, ``datasets/imagenet.py`` L44-56) and ImageNet's full listing as
``imagenet/preprocessed.pkl`` (``{"train": [...], "test": [...]}``, ``datasets/imagenet.py`` L20-39).
The lists hold Dassl ``Datum`` objects (``dassl/data/datasets/base_dataset.py`` L12-45), which pickle
as the global ``dassl.data.datasets.base_dataset.Datum`` plus a state dict
``{"_impath", "_label", "_domain", "_classname"}``.

:func:`read_reference_pickle` unpickles such a file with :class:`_RestrictedUnpickler`: it can build
plain containers (dict, list, tuple, str, int, ...), which the pickle opcodes make directly, and
:class:`ReferenceDatum`, a stand-in for Dassl's ``Datum`` that only stores those four fields. Every
other global (``os.system``, ``builtins.eval``, any class) is refused with a
:class:`~vlprompt.core.errors.DataError` before it is looked up, so a planted payload never runs.

:func:`match_reference_items` maps the pickled absolute paths (of the machine the split was saved on)
to the items of the dataset as vlprompt reads it now, by their trailing path components; a longer
tail that names another image (``.../test/cat/1.png`` is not ``<root>/train/cat/1.png``) is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.data.types import Datum

DASSL_DATUM = ("dassl.data.datasets.base_dataset", "Datum")
"""Module and name under which Dassl's ``Datum`` is pickled (its ``__module__`` / ``__qualname__``)."""

_DATUM_FIELDS = ("_impath", "_label", "_domain", "_classname")
_MIN_SUFFIX = 2  # path components that must match: e.g. "<class folder>/<image>" or "images/<id>.jpg"


class ReferenceDatum:
    """Stand-in for Dassl's ``Datum``: the four fields of its pickled state, type-checked.

    Unpickling creates it with ``object.__new__`` (pickle's NEWOBJ) and fills it through
    :meth:`__setstate__` (BUILD); calling it with arguments (REDUCE) is refused.
    """

    __slots__ = ("impath", "label", "domain", "classname")

    def __init__(self) -> None:  # REDUCE would call this with Datum's arguments: refused
        raise TypeError("ReferenceDatum is only built by unpickling")

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]
        if not isinstance(state, dict) or not set(state) <= set(_DATUM_FIELDS) or "_impath" not in state:
            raise _Refused(f"a Datum whose state is not Dassl's {{{', '.join(_DATUM_FIELDS)}}}")
        impath, label = state["_impath"], state.get("_label", 0)
        classname, domain = state.get("_classname", ""), state.get("_domain", 0)
        if not isinstance(impath, str) or not isinstance(classname, str):
            raise _Refused("a Datum whose path or class name is not a string")
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise _Refused(f"a Datum whose label is not an integer >= 0 ({label!r})")
        self.impath, self.label, self.domain, self.classname = impath, label, domain, classname

    def __repr__(self) -> str:
        return f"ReferenceDatum({self.impath!r}, {self.label}, {self.classname!r})"


class _Refused(Exception):
    """Raised inside the unpickler; turned into a DataError naming the file."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose only global is Dassl's ``Datum`` (mapped to :class:`ReferenceDatum`)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == DASSL_DATUM:
            return ReferenceDatum
        raise _Refused(f"the global '{module}.{name}' (only Dassl's Datum and plain containers are allowed)")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def read_reference_pickle(path: str | os.PathLike[str], what: str = "reference split file") -> Any:
    """Unpickle ``path`` allowing only plain containers and :class:`ReferenceDatum`.

    Raises:
        DataError: missing / unreadable file, not a pickle, or a pickle that needs anything else
            (then nothing it names has been imported or called).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{what} '{path}' not found; check the path.") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} '{path}': {exc.strerror or exc}.") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise DataError(
            f"{what} '{path}' was refused: it contains {exc}. vlprompt never runs code from a pickle; "
            "only CoOp's split_fewshot/*.pkl and ImageNet's preprocessed.pkl can be read."
        ) from None
    except Exception as exc:  # noqa: BLE001 - any malformed stream: UnpicklingError, EOFError, TypeError, ...
        raise DataError(
            f"{what} '{path}' is not a readable pickle of CoOp splits ({type(exc).__name__}: {exc})."
        ) from None


def is_pickle_file(path: str | os.PathLike[str]) -> bool:
    """True for a ``.pkl`` / ``.pickle`` file, or a file that starts like a pickle (protocol >= 2)."""
    if os.fspath(path).lower().endswith((".pkl", ".pickle")):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"
    except OSError:
        return False


def reference_lists(data: Any, path: str, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, list]:
    """``data[key]`` for each key, checked to be a list of :class:`ReferenceDatum`."""
    if not isinstance(data, dict):
        raise DataError(
            f"'{path}' holds a {type(data).__name__}, not the dict of CoOp's splits "
            f"(keys {', '.join(keys)})."
        )
    out: dict[str, list] = {}
    for key in (*keys, *optional):
        if key not in data:
            if key in optional:
                continue
            raise DataError(f"'{path}' has no '{key}' list (keys found: {', '.join(map(str, data))}).")
        items = data[key]
        if not isinstance(items, list) or not all(isinstance(d, ReferenceDatum) for d in items):
            raise DataError(f"'{path}': '{key}' is not a list of Dassl Datum objects.")
        out[key] = items
    return out


def path_parts(path: str) -> tuple[str, ...]:
    """Components of a path saved on any OS (``/`` or ``\\`` separated), empty ones dropped."""
    return tuple(p for p in re.split(r"[\\/]+", path) if p)


_SPLIT_FOLDERS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
"""Folder names that say which split an image belongs to (lower case), and the split each one means."""


def _common_tail(a: Sequence[str], b: Sequence[str]) -> int:
    """How many trailing components ``a`` and ``b`` share."""
    n = 0
    while n < min(len(a), len(b)) and a[-n - 1] == b[-n - 1]:
        n += 1
    return n


def _other_image(
    parts: tuple[str, ...], matched: Datum, tail: int, others: dict[str, list[tuple[str, Datum]]]
) -> tuple[str, Datum, int] | None:
    """An image of another split whose path shares more trailing components with ``parts`` than ``matched``."""
    best = None
    for split, d in others.get(parts[-1], ()):
        n = _common_tail(parts, path_parts(d.path))
        if d.path != matched.path and n > tail and (best is None or n > best[2]):
            best = (split, d, n)
    return best


def match_reference_items(
    ref: Sequence[ReferenceDatum],
    candidates: Sequence[Datum],
    classnames: Sequence[str],
    *,
    source: str,
    split: str,
    others: dict[str, Sequence[Datum]] | None = None,
) -> list[Datum]:
    """The items of ``candidates`` the pickled ``ref`` items name, in ``ref``'s order.

    A pickled path matches the candidate whose path ends with the same components, at least
    ``_MIN_SUFFIX`` of them and as many as needed to tell candidates apart (so the data root may
    differ between the machine that saved the split and this one). Its label and class name must
    be the candidate's. The rest of the path must not say that another image is meant: an image of
    ``others`` (the dataset's other splits, by name) that shares more trailing components, or a
    split folder (``test``, ``val``, ``train``, ...) where the candidate's path has another split's
    folder, as in ``.../test/cat/1.png`` against ``<root>/train/cat/1.png``.

    Raises:
        DataError: an item that matches no candidate (not in this dataset's ``split`` split), matches
            several, has another label / class name, or names an image of another split.
    """
    by_name: dict[str, list[tuple[tuple[str, ...], Datum]]] = defaultdict(list)
    for d in candidates:
        parts = path_parts(d.path)
        if parts:
            by_name[parts[-1]].append((parts, d))
    other_by_name: dict[str, list[tuple[str, Datum]]] = defaultdict(list)
    for other_split, items in (others or {}).items():
        for d in items:
            other_by_name[os.path.basename(d.path)].append((other_split, d))
    out: list[Datum] = []
    for i, r in enumerate(ref):
        parts = path_parts(r.impath)
        where = f"'{source}', '{split}' item #{i} ('{r.impath}')"
        found = by_name.get(parts[-1], []) if parts else []
        n = 1
        while found and (n < min(_MIN_SUFFIX, len(parts)) or len(found) > 1) and n < len(parts):
            n += 1
            found = [(p, d) for p, d in found if p[-n:] == parts[-n:]]
        if not found:
            raise DataError(
                f"{where} is not an image of this dataset's {split} split; the split was saved for "
                "other data (check data.dataset and data.root)."
            )
        if len(found) > 1:
            raise DataError(f"{where} matches {len(found)} images of the {split} split; cannot tell which.")
        q, d = found[0]
        tail = _common_tail(parts, q)
        rival = _other_image(parts, d, tail, other_by_name)
        if rival is not None:
            raise DataError(
                f"{where} is the {rival[0]} split's image '{rival[1].path}' (its last {rival[2]} path parts "
                f"agree), not the {split} image '{d.path}' (only {tail} agree); a {split} list may not hold "
                f"{rival[0]} images. Re-create the split file from this dataset's {split} images."
            )
        if tail < len(parts) and tail < len(q):
            theirs, ours = parts[-tail - 1], q[-tail - 1]
            a, b = _SPLIT_FOLDERS.get(theirs.lower()), _SPLIT_FOLDERS.get(ours.lower())
            if a is not None and b is not None and a != b:
                raise DataError(
                    f"{where} lies in a '{theirs}' folder where this dataset's image '{d.path}' with the same "
                    f"last {tail} path parts lies in '{ours}': it names another image (of the {a} split), not "
                    f"a {split} image. Re-create the split file from this dataset's {split} images."
                )
        if r.label != d.label or r.classname != classnames[d.label]:
            raise DataError(
                f"{where} has label {r.label} ('{r.classname}') but this dataset labels that image "
                f"{d.label} ('{classnames[d.label]}'); the split was made for other data."
            )
        out.append(d)
    return out


def load_reference_fewshot(
    path: str | os.PathLike[str], splits: Any, *, val_is_test: bool = False
) -> tuple[list[Datum], list[Datum]]:
    """Train and val items of CoOp's ``split_fewshot/shot_{K}-seed_{seed}.pkl`` for ``splits``.

    ``splits`` is the full dataset (all classes, before any base / new subsampling: the reference
    saves the split before ``subsample_classes``). ImageNet's file has no "val" (``val_is_test``):
    val is then ``splits.val``, the whole test set, as in the reference.
    """
    path = os.fspath(path)
    data = read_reference_pickle(path)
    if isinstance(data, dict) and "test" in data:
        raise DataError(
            f"'{path}' lists train and test images: it is ImageNet's preprocessed.pkl (the full listing), not a "
            "few-shot split; use it with data.options.order: preprocessed."
        )
    lists = reference_lists(data, path, ("train",), optional=("val",))
    if not lists["train"]:
        raise DataError(
            f"'{path}' lists no training images (its 'train' list is empty); a few-shot split needs at least "
            "one image per class. Use another split file (CoOp's shot_K-seed_S.pkl with K >= 1) or leave "
            "data.fewshot_file unset to sample data.shots images per class."
        )
    train = match_reference_items(lists["train"], splits.train, splits.classnames, source=path, split="train",
                                  others={"val": splits.val, "test": splits.test})
    if "val" in lists and not val_is_test:
        val = match_reference_items(lists["val"], splits.val, splits.classnames, source=path, split="val",
                                    others={"train": splits.train, "test": splits.test})
    elif val_is_test:
        val = list(splits.val)
    else:
        raise DataError(f"'{path}' has no 'val' list; CoOp saves one for every dataset but ImageNet.")
    return train, val


def listdir_order(items: Sequence[Datum]) -> list[Datum]:
    """``items`` (grouped by label) re-ordered as ``os.listdir`` lists each image's folder.

    CoOp's ``ImageNet.read_data`` (``datasets/imagenet.py`` L78-91) visits the class folders sorted but
    lists each folder's images with ``listdir_nohidden`` (``dassl/utils/tools.py`` L135-145, unsorted),
    so its order - and hence its few-shot images - depends on the file system.
    """
    rank: dict[str, int] = {}
    for folder in dict.fromkeys(os.path.dirname(d.path) for d in items):
        try:
            names = os.listdir(folder)
        except OSError as exc:
            raise DataError(f"cannot list image folder '{folder}': {exc.strerror or exc}.") from None
        rank.update({os.path.join(folder, n): i for i, n in enumerate(names)})
    return sorted(items, key=lambda d: (d.label, rank.get(d.path, -1)))


def preprocessed_order(
    path: str, train: Sequence[Datum], test: Sequence[Datum], classnames: Sequence[str]
) -> tuple[list[Datum], list[Datum]]:
    """ImageNet's train and test as listed in the reference's ``preprocessed.pkl``.

    The pickle (``datasets/imagenet.py`` L20-39, ``{"train": [...], "test": [...]}``) records the order
    in which the reference run that wrote it listed the images; ``train`` / ``test`` are the images
    vlprompt found, which every pickled item must be one of.
    """
    lists = reference_lists(read_reference_pickle(path, "ImageNet listing"), path, ("train", "test"))
    return (
        match_reference_items(lists["train"], train, classnames, source=path, split="train", others={"test": test}),
        match_reference_items(lists["test"], test, classnames, source=path, split="test", others={"train": train}),
    )
