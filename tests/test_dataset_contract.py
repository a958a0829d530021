"""The dataset contract, checked for every registered dataset on the tiny tree it registers.

The parametrisation is the registry itself (:func:`dataset_names`, read at collection time: the built-ins
of ``BUILTINS["datasets"]`` and every installed plugin's datasets, the world's included), so a dataset
added later is checked here by adding it, with no edit to this file. For each one
:func:`check_dataset_contract` builds its tiny tree in a temporary folder, reads it through
``build_dataset`` / ``load_dataset``, and checks: its declared facts have the right types; its class
names are non-empty and unique; every item's label is in range and names its class; its items are
regular files (or, for a generated dataset, load through its loader); its templates have one ``{}``;
few-shot sampling with its declared sampler gives K images per class and the same ones for the same seed;
base / new subsampling splits its classes. An OOD benchmark set (``ood_group`` declared) may hold one class
(the set itself), and then has no base / new halves.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import vlprompt.data.registry as registry
from vlprompt.config import DataConfig
from vlprompt.core.errors import DataError
from vlprompt.data.fewshot import MAX_VAL_SHOTS, make_fewshot
from vlprompt.data.pipeline import fewshot_splits, load_dataset
from vlprompt.data.reference_fewshot import ShortClassWarning, make_fewshot_reference, resolve_sampler
from vlprompt.data.registry import (
    OOD_GROUPS,
    SAMPLER_KINDS,
    TinyTree,
    build_dataset,
    get_dataset_info,
    list_datasets,
    register_dataset,
)
from vlprompt.data.templates import DEFAULT_TEMPLATE, check_template, get_templates
from vlprompt.data.tiny_trees import write_class_images
from vlprompt.data.types import DatasetSplits, Datum, file_loader
from vlprompt.engine.optim import default_max_epoch

SHOTS = 2  # the tiny trees hold at least this many training images per class
SPLITS = ("train", "val", "test")


def dataset_names() -> list[str]:
    """Every registered dataset: what the contract test is parametrised over."""
    return list_datasets()


def _is_regular_file(path: str) -> bool:
    """An absolute path naming a regular file (symbolic links followed): what ``file_loader`` reads."""
    return os.path.isabs(path) and os.path.exists(path) and stat.S_ISREG(os.stat(path).st_mode)


def _per_label(items: list[Datum]) -> Counter[int]:
    return Counter(d.label for d in items)


def _check_facts(name: str) -> Any:
    info = get_dataset_info(name)
    assert info.name == name and callable(info.reader)
    assert isinstance(info.aliases, tuple) and all(isinstance(a, str) for a in info.aliases)
    assert all(get_dataset_info(alias) is info for alias in info.aliases)
    assert isinstance(info.template, str) and check_template(info.template) == info.template
    assert info.sampler in SAMPLER_KINDS
    assert isinstance(info.val_is_test, bool)
    epochs = info.default_epochs
    assert epochs is None or (type(epochs) is int and epochs >= 1)
    assert all(default_max_epoch(name, k) >= 1 for k in (1, 2, 4, 8, 16))
    assert epochs is None or default_max_epoch(name, 16) == epochs
    assert info.ood_group in (None, *OOD_GROUPS)
    assert info.tiny_tree is not None, (
        f"dataset '{name}' registers no tiny tree: give register_dataset(..., tiny_tree=builder), "
        "a function (folder: Path) -> TinyTree writing a minimal tree of the dataset's layout"
    )
    return info


def _check_splits(splits: DatasetSplits, info: Any) -> None:
    names = splits.classnames
    # an OOD benchmark set (ood_group declared) may be one class, the set itself: the OOD task relabels it
    least = 1 if info.ood_group is not None else 2
    assert isinstance(names, list) and len(names) >= least, "a tiny tree needs at least 2 classes (base / new)"
    assert all(isinstance(n, str) and n.strip() for n in names), f"empty class name in {names}"
    assert len(set(names)) == len(names), f"duplicate class names in {names}"
    for split in SPLITS:
        for d in getattr(splits, split):
            assert isinstance(d, Datum) and isinstance(d.path, str)
            assert type(d.label) is int and 0 <= d.label < len(names), f"{split} label {d.label} out of range"
            assert d.classname == names[d.label], f"{split} item {d.path} names '{d.classname}', not its class"
    assert set(_per_label(splits.test)) == set(range(len(names))), "every class needs test images"
    if splits.train:
        assert min(_per_label(splits.train)[c] for c in range(len(names))) >= SHOTS
    if info.val_is_test:
        assert splits.val == splits.test, "val_is_test: the reader's val split must be its test split"
    assert isinstance(splits.template, str) and check_template(splits.template)
    assert get_templates("dataset", info.name, template=splits.template) == [splits.template]
    for split in SPLITS:  # the items are what the loader reads: files on disk unless the dataset generates them
        items = getattr(splits, split)
        if splits.loader is file_loader:
            bad = [d.path for d in items if not _is_regular_file(d.path)]
            assert not bad, f"{split} items that are not regular files with absolute paths: {bad[:3]}"
        if items:
            image = splits.loader(items[0].path)
            assert isinstance(image, Image.Image) and image.mode == "RGB"


def _check_fewshot(splits: DatasetSplits, info: Any) -> None:
    assert resolve_sampler("auto", info) == info.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortClassWarning)  # the tiny tree has enough images: nothing is short
        few = fewshot_splits(splits, shots=SHOTS, seed=1, dataset=info.name)
        again = fewshot_splits(splits, shots=SHOTS, seed=1, dataset=info.name)
    assert (few.train, few.val, few.test) == (again.train, again.val, again.test), "not seed-stable"
    if info.sampler == "reference":
        expected = make_fewshot_reference(splits, SHOTS, 1, val_is_test=info.val_is_test)
    else:
        expected = make_fewshot(splits, SHOTS, 1)
    assert (few.train, few.val) == (expected.train, expected.val), "auto did not use the declared sampler"
    assert few.test == splits.test and few.classnames == splits.classnames
    if splits.train:
        assert _per_label(few.train) == dict.fromkeys(range(splits.num_classes), SHOTS)
        assert set(few.train) <= set(splits.train)
    else:
        assert few.train == []
    if info.val_is_test:
        assert few.val == splits.val
    else:
        assert set(few.val) <= set(splits.val)
        assert all(n <= min(SHOTS, MAX_VAL_SHOTS) for n in _per_label(few.val).values())


def _check_base_new(cfg: DataConfig, splits: DatasetSplits) -> None:
    n, m = splits.num_classes, math.ceil(splits.num_classes / 2)
    base = load_dataset(dataclasses.replace(cfg, subsample_classes="base"))
    new = load_dataset(dataclasses.replace(cfg, subsample_classes="new"))
    assert base.classnames == splits.classnames[:m] and new.classnames == splits.classnames[m:] and n - m >= 1
    for part in (base, new):
        assert set(_per_label(part.test)) == set(range(part.num_classes))
        assert all(part.classnames[d.label] == d.classname for s in SPLITS for d in getattr(part, s))
    few_new = fewshot_splits(splits, shots=SHOTS, seed=1, subsample="new", dataset=cfg.dataset)
    assert few_new.classnames == new.classnames and all(0 <= d.label < n - m for d in few_new.train + few_new.val)


def check_dataset_contract(name: str, folder: Path) -> None:
    """The dataset contract for registered dataset ``name``, its tiny tree built under ``folder``."""
    info = _check_facts(name)
    folder.mkdir(parents=True, exist_ok=True)
    tree = info.tiny_tree(folder)
    assert isinstance(tree, TinyTree) and (tree.root is None or os.path.isdir(tree.root))
    cfg = DataConfig(dataset=name, root=tree.root, options=dict(tree.options), shots=SHOTS)
    splits = load_dataset(cfg)
    direct = build_dataset(name, tree.root, **tree.options)
    assert type(splits) is type(direct) and splits.name == direct.name
    assert (splits.classnames, splits.test) == (direct.classnames, direct.test)
    for alias in info.aliases:
        assert build_dataset(alias, tree.root, **tree.options).classnames == splits.classnames
    _check_splits(splits, info)
    _check_fewshot(splits, info)
    if splits.num_classes > 1:  # a one-class OOD set has no base / new halves
        _check_base_new(cfg, splits)


@pytest.mark.parametrize("name", dataset_names())
def test_dataset_contract(name: str, tmp_path: Path) -> None:
    check_dataset_contract(name, tmp_path / "tree")


@pytest.mark.world
def test_every_built_in_and_the_world_are_checked() -> None:
    names = dataset_names()
    assert {"oxford_pets", "imagenet", "imagenet_r", "fgvc_aircraft", "imagefolder", "csv"} <= set(names)
    assert "world_shapes" in names and "world_ood_novel" in names  # the world plugin's datasets


# ---------------------------------------------------------------- a dataset added later


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Datasets registered in a test are forgotten after it."""
    list_datasets()  # the built-ins and plugins first
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


def _toy_tree(folder: Path) -> TinyTree:
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        for label, cls in enumerate(("red", "green", "blue")):
            write_class_images(folder / "toy" / split / cls, label, count, ext=".png")
    return TinyTree(str(folder), {"flavour": "plain"})


def _toy_reader(
    name: str, root: str | None, *, flavour: str = "plain", bad_label: int | None = None,
    names: tuple[str, ...] | None = None,
) -> DatasetSplits:
    """The toy tree as a dataset; ``bad_label`` mislabels the first test item, ``names`` renames the classes."""
    if root is None or not os.path.isdir(os.path.join(root, "toy")):
        raise DataError(f"no toy tree under {root}")
    classes = sorted(os.listdir(os.path.join(root, "toy", "train")))
    shown = list(names or classes)
    lists = {
        split: [
            Datum(os.path.join(root, "toy", split, c, f), label, shown[label])
            for label, c in enumerate(classes)
            for f in sorted(os.listdir(os.path.join(root, "toy", split, c)))
        ]
        for split in SPLITS
    }
    if bad_label is not None:
        lists["test"][0] = dataclasses.replace(lists["test"][0], label=bad_label)
    return DatasetSplits(name, shown, lists["train"], lists["val"], lists["test"])


def test_a_dataset_registered_later_is_covered(scratch_registry: None, tmp_path: Path) -> None:
    """One declaration, no edit here: the parametrisation lists it and the contract runs on it."""

    @register_dataset("toy_pets", "ToyPets", template="a photo of a {}, a toy pet.", sampler="reference",
                      tiny_tree=_toy_tree)
    def read_toy_pets(root: str | None = None, **options: Any) -> DatasetSplits:
        return _toy_reader("toy_pets", root, **options)

    assert "toy_pets" in dataset_names()
    check_dataset_contract("toy_pets", tmp_path / "tree")
    splits = build_dataset("ToyPets", str(tmp_path / "tree"))
    assert splits.template == "a photo of a {}, a toy pet."  # filled in from the declaration
    few = fewshot_splits(splits, shots=2, seed=3)  # auto: the declared reference sampler
    reference = make_fewshot_reference(splits, 2, 3)
    assert (few.train, few.val) == (reference.train, reference.val)


def test_a_dataset_that_says_nothing_gets_the_documented_defaults(scratch_registry: None, tmp_path: Path) -> None:
    register_dataset("toy_plain", tiny_tree=_toy_tree)(lambda root=None, **o: _toy_reader("toy_plain", root, **o))
    info = get_dataset_info("toy_plain")
    assert (info.aliases, info.template, info.sampler, info.val_is_test, info.default_epochs) == (
        (), DEFAULT_TEMPLATE, "stable", False, None)
    assert [default_max_epoch("toy_plain", k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    check_dataset_contract("toy_plain", tmp_path / "tree")


@pytest.mark.parametrize(("broken", "message"), [
    ({"tiny_tree": None}, "registers no tiny tree"),
    ({"reader": {"bad_label": 3}}, "test label 3 out of range"),
    ({"reader": {"bad_label": 1}}, "names 'blue', not its class"),
    ({"reader": {"names": ("a", "a", "b")}}, "duplicate class names"),
    ({"reader": {"names": ("a", "", "b")}}, "empty class name"),
    ({"val_is_test": True}, "val_is_test"),
])
def test_the_contract_fails_a_broken_dataset(
    scratch_registry: None, tmp_path: Path, broken: dict[str, Any], message: str
) -> None:
    reader_options = broken.get("reader", {})
    facts = {"tiny_tree": _toy_tree, **{k: v for k, v in broken.items() if k != "reader"}}
    register_dataset("toy_broken", **facts)(
        lambda root=None, **o: _toy_reader("toy_broken", root, **{**o, **reader_options}))
    with pytest.raises(AssertionError, match=message):
        check_dataset_contract("toy_broken", tmp_path / "tree")


# ---------------------------------------------------------------- registration refuses mistakes


@pytest.mark.parametrize(("args", "facts", "message"), [
    (("oxford_pets",), {}, r"name 'oxford_pets' is already taken by dataset 'oxford_pets'"),
    (("toy_new", "OxfordPets"), {}, r"alias 'OxfordPets' is already taken by dataset 'oxford_pets'"),
    (("Toy Pets",), {}, r"name 'Toy Pets' must be letters, digits"),
    (("toy_new", 7), {}, r"alias 7 must be letters, digits"),
    (("toy_new",), {"template": "a photo of a pet."}, r"template 'a photo of a pet\.' must contain exactly one"),
    (("toy_new",), {"sampler": "coop"}, r"sampler must be one of reference, stable, got 'coop'"),
    (("toy_new",), {"val_is_test": "yes"}, r"val_is_test must be True or False"),
    (("toy_new",), {"default_epochs": 0}, r"default_epochs must be a positive integer or None, got 0"),
    (("toy_new",), {"tiny_tree": "tree/"}, r"tiny_tree must be a function"),
])
def test_registration_refuses_mistakes(scratch_registry: None, args: tuple, facts: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        register_dataset(*args, **facts)(lambda root=None, **o: None)
    assert "toy_new" not in registry._DATASETS and "toy_new" not in registry._ALIASES
