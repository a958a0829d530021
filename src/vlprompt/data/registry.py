"""Dataset registry: a dataset is declared once, where its reader is registered.

::

    @register_dataset("oxford_pets", "OxfordPets", template="a photo of a {}, a type of pet.",
                      sampler="reference", tiny_tree=build_tiny_pets)
    def read_oxford_pets(root: str | None = None, **options) -> DatasetSplits: ...

The call records a :class:`DatasetInfo`: the reader and every fact the rest of vlprompt needs about
the dataset (its hand-crafted zero-shot template, which few-shot sampler ``data.fewshot_sampler:
auto`` picks, whether its val split is its test set, its default number of epochs, and a builder of a
tiny on-disk tree for the dataset contract test). :func:`get_dataset_info` is the one place engine and
data code asks for them. A fact left out takes the default documented on :class:`DatasetInfo`.

Names are case-insensitive (``-`` and ``_`` alike); aliases (CoOp's class names: ``OxfordPets``) find
the same dataset. The built-in readers are the modules of ``BUILTINS["datasets"]``
(:mod:`vlprompt.core.plugins`), imported on the first look-up together with the plugins' datasets, so
a new reader module needs no import line here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.core.plugins import load_extensions
from vlprompt.data.templates import DEFAULT_TEMPLATE, check_template
from vlprompt.data.types import DatasetSplits

DatasetBuilder = Callable[..., DatasetSplits]
SAMPLER_KINDS = ("reference", "stable")
"""What a dataset declares as its ``sampler`` (``data.fewshot_sampler: auto`` resolves to it)."""
#: How test-time adaptation augments a test image (:attr:`DatasetInfo.test_time_views`).
TEST_TIME_VIEWS = ("augmix", "crop")
#: The groups an OOD benchmark set may declare (``DatasetInfo.ood_group``).
OOD_GROUPS = ("near", "far")


@dataclass(frozen=True)
class TinyTree:
    """Where a tiny-tree builder put its dataset: ``build_dataset(name, root, **options)`` reads it.

    ``root`` is None for a generated dataset that reads no files (the world's).
    """

    root: str | None
    options: Mapping[str, Any] = field(default_factory=dict)


TreeBuilder = Callable[[Path], TinyTree]
"""``builder(folder) -> TinyTree``: writes a minimal valid tree of the dataset's published layout under
``folder`` (an empty folder) and says how to read it. The tree must hold at least 2 classes, each with
at least 2 training images (none for a test-only dataset) and at least 1 test image; a few pixels per
image are enough (:mod:`vlprompt.data.tiny_trees` writes them)."""


@dataclass(frozen=True)
class DatasetInfo:
    """Everything vlprompt knows about a registered dataset; the defaults are those of a dataset that
    says nothing.

    Attributes:
        name: registry name (lower case, ``[a-z0-9_]``), e.g. ``"oxford_pets"``.
        reader: ``reader(root: str | None, **options) -> DatasetSplits``.
        aliases: other names that find it (CoOp's class name ``"OxfordPets"``).
        template: the hand-crafted zero-shot template, one ``{}`` for the class name (``data.templates:
            dataset``; CoOp's ``CUSTOM_TEMPLATES`` for its datasets). Default ``"a photo of a {}."``. A
            reader may still set ``DatasetSplits.template`` itself (e.g. from a reader option); when it
            leaves it None, :func:`build_dataset` fills in this one.
        sampler: ``"reference"`` (CoOp's / Dassl's few-shot images for the seed; for datasets read in
            the order the reference reads them) or ``"stable"`` (independent of the listing order;
            default). ``data.fewshot_sampler: auto`` uses it.
        val_is_test: the reference's val split is the whole test set and is never sampled (ImageNet).
            Default False.
        default_epochs: epochs when the config sets neither ``optim.max_epoch`` nor
            ``optim.iterations``, for every K (ImageNet: 50). Default None: CoOp's rule by shots (50 for
            1 shot, 100 for 2 and 4, 200 for 8 and 16; :func:`vlprompt.engine.optim.default_max_epoch`).
        test_time_views: how test-time adaptation (TPT and its successors) augments a test image of this
            dataset: ``"augmix"`` (random resized crop + flip, then AugMix; the fine-grained sets, default)
            or ``"crop"`` (random resized crop + flip only; the ImageNet sets). azshue/TPT
            tpt_classification.py:171-172 turns AugMix on for every set but the ImageNet ones.
        tiny_tree: the :data:`TreeBuilder` the dataset contract test (``tests/test_dataset_contract.py``)
            reads the dataset from. Optional here; the contract test fails for a dataset without one.
        ood_group: for an OOD benchmark set, ``"near"`` (semantic shift only: classes close to the ID ones,
            e.g. SSB-hard, NINCO) or ``"far"`` (e.g. iNaturalist, Textures); ``vlprompt ood`` averages each
            group apart. None (default): not an OOD set, or no group declared.
        descriptions: the dataset's own class-description file (a JSON ``{class name: [sentence, ...]}``,
            :mod:`vlprompt.data.descriptions`), shipped with it (the world's, written for its classes); the last
            place a run looks, after ``data.descriptions_file`` and ``<data.root>/descriptions/<dataset>.json``.
            None (default): none shipped.
        takes_source: the dataset may be named ``<name>:<source>`` (``hf:owner/name``, ``hf:./my_data``): the
            registry finds it by the part before the colon and its reader gets the rest as option ``source``.
            Default False.
    """

    name: str
    reader: DatasetBuilder
    aliases: tuple[str, ...] = ()
    template: str = DEFAULT_TEMPLATE
    sampler: str = "stable"
    val_is_test: bool = False
    default_epochs: int | None = None
    tiny_tree: TreeBuilder | None = None
    test_time_views: str = "augmix"
    ood_group: str | None = None
    descriptions: str | None = None
    takes_source: bool = False

    def __post_init__(self) -> None:
        where = f"register_dataset('{self.name}')"
        check_template(self.template, f"{where}: template")
        if self.sampler not in SAMPLER_KINDS:
            raise DataError(f"{where}: sampler must be one of {', '.join(SAMPLER_KINDS)}, got {self.sampler!r}.")
        if not isinstance(self.val_is_test, bool):
            raise DataError(f"{where}: val_is_test must be True or False, got {self.val_is_test!r}.")
        if not isinstance(self.takes_source, bool):
            raise DataError(f"{where}: takes_source must be True or False, got {self.takes_source!r}.")
        epochs = self.default_epochs
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise DataError(f"{where}: default_epochs must be a positive integer or None, got {epochs!r}.")
        if self.test_time_views not in TEST_TIME_VIEWS:
            raise DataError(f"{where}: test_time_views must be one of {', '.join(TEST_TIME_VIEWS)}, "
                            f"got {self.test_time_views!r}.")
        if self.ood_group not in (None, *OOD_GROUPS):
            raise DataError(f"{where}: ood_group must be one of {', '.join(OOD_GROUPS)} or None, "
                            f"got {self.ood_group!r}.")
        if self.descriptions is not None and (not isinstance(self.descriptions, str) or not self.descriptions):
            raise DataError(f"{where}: descriptions must be a file path or None, got {self.descriptions!r}.")
        for what, fn in (("reader", self.reader), ("tiny_tree", self.tiny_tree)):
            if fn is not None and not callable(fn):
                raise DataError(f"{where}: {what} must be a function, got {fn!r}.")


_DATASETS: dict[str, DatasetInfo] = {}
_ALIASES: dict[str, str] = {}
_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _check_name(name: Any, what: str) -> str:
    key = _key(name) if isinstance(name, str) else ""
    if not _NAME.fullmatch(key):
        raise DataError(
            f"register_dataset: {what} {name!r} must be letters, digits, '_' or '-' (starting with a letter or digit)."
        )
    if key in _DATASETS or key in _ALIASES:
        owner = _DATASETS[key] if key in _DATASETS else _DATASETS[_ALIASES[key]]
        raise DataError(
            f"register_dataset: {what} '{name}' is already taken by dataset '{owner.name}'; choose another name."
        )
    return key


def register_dataset(
    name: str,
    *aliases: str,
    template: str = DEFAULT_TEMPLATE,
    sampler: str = "stable",
    val_is_test: bool = False,
    default_epochs: int | None = None,
    tiny_tree: TreeBuilder | None = None,
    test_time_views: str = "augmix",
    ood_group: str | None = None,
    descriptions: str | None = None,
    takes_source: bool = False,
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering ``reader(root: str | None, **options) -> DatasetSplits`` as dataset ``name``
    with its facts (see :class:`DatasetInfo` for each and its default).

    Raises:
        DataError: a malformed name or fact, or a name / alias another dataset already has.
    """

    def deco(reader: DatasetBuilder) -> DatasetBuilder:
        key = _check_name(name, "name")
        alias_keys = tuple(k for k in dict.fromkeys(_check_name(a, "alias") for a in aliases) if k != key)
        info = DatasetInfo(key, reader, alias_keys, template, sampler, val_is_test, default_epochs, tiny_tree,
                           test_time_views, ood_group, descriptions, takes_source)
        _DATASETS[key] = info
        _ALIASES.update(dict.fromkeys(alias_keys, key))
        return reader

    return deco


def _ensure_builtin() -> None:
    """Register the built-in readers (:data:`vlprompt.core.plugins.BUILTINS`) and the plugins' datasets."""
    load_extensions("datasets")


def list_datasets() -> list[str]:
    """Registry names of every dataset, sorted."""
    _ensure_builtin()
    return sorted(_DATASETS)


def _with_source(name: str) -> tuple[DatasetInfo, str] | None:
    """``(info, source)`` for a name ``<dataset>:<source>`` of a dataset that takes a source, else None."""
    prefix, colon, source = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not colon:
        return None
    key = _ALIASES.get(_key(prefix), _key(prefix))
    info = _DATASETS.get(key)
    if info is None or not info.takes_source:
        return None
    if not source.strip():
        raise DataError(f"dataset '{name}' (option data.dataset) names no source after '{prefix}:'; write "
                        f"{prefix}:<folder or owner/name>.")
    return info, source.strip()


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` (registry name or alias).

    Raises:
        DataError: unknown name (with close matches).
    """
    _ensure_builtin()
    sourced = _with_source(name)
    if sourced is not None:
        return sourced[0]
    key = _ALIASES.get(_key(name), _key(name))
    if key not in _DATASETS:
        close = difflib.get_close_matches(key, list(_DATASETS) + list(_ALIASES), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DataError(
            f"unknown dataset '{name}' (option data.dataset).{hint} "
            f"Known datasets: {', '.join(sorted(_DATASETS))}."
        )
    return _DATASETS[key]


def build_dataset(name: str, root: str | None = None, **options: Any) -> DatasetSplits:
    """Build the dataset registered as ``name`` from ``root``, its template filled in from the registry
    when the reader left ``DatasetSplits.template`` None. ``name`` may be ``<dataset>:<source>`` for a dataset
    that takes a source (:attr:`DatasetInfo.takes_source`): its reader gets option ``source``.

    Raises:
        DataError: unknown name (with close matches), or whatever the reader finds wrong.
    """
    info = get_dataset_info(name)
    sourced = _with_source(name)
    if sourced is not None:
        given = options.get("source")
        if given is not None and given != sourced[1]:
            raise DataError(f"dataset '{name}' names its source, and data.options.source is '{given}' as well; "
                            "give the source once.")
        options = {**options, "source": sourced[1]}
    splits = info.reader(root, **options)
    if splits.template is None:
        splits = dataclasses.replace(splits, template=info.template)
    return splits
