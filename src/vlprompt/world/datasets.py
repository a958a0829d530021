"""Downstream classification datasets of the synthetic world, exposed through the dataset registry.

Every dataset is a :class:`~vlprompt.data.types.DatasetSplits` whose ``Datum.path`` is a key such as
``world://shapes/train/123`` (``?seed=S&size=N`` is appended for a non-default seed or image size):
the image is rendered from the key alone by :func:`load_world_image`, so no files are needed and any
image can be loaded by index, in any order, in DataLoader workers. Item ``i`` of a split has label
``i % num_classes`` and is drawn from its own random stream ``item_rng(seed, "<dataset>/<split>", i)``,
so the splits are disjoint and a smaller ``n_train`` gives a subset of a larger one.

==========================  =======  ====================================  ==============  ==========
registry name               classes  class names                           style           splits
==========================  =======  ====================================  ==============  ==========
world_shapes                12       ID shapes ("circle", "star", ...)     photo           64/16/50
world_objects               120      colour + ID shape ("red circle")      photo           64/16/50
world_patterns              7        "<pattern> shape" ("striped shape")   photo           64/16/50
world_scenes                7        background ("grass", "sky", ...)      photo           64/16/50
world_positions             9        position of a small shape             photo           64/16/50
                                     ("top left", "centre", ...)
world_textures              10       object-free textures ("grass",        photo           64/16/50
                                     "stripes", ...)
world_shapes_<style>        12       as world_shapes                       sketch, cartoon, test: 50
                                                                           painting,
                                                                           pixelated, noisy
world_objects_<style>       120      as world_objects                      cartoon,        test: 50
                                                                           painting
world_ood_shapes            4        OOD shapes (pretrained on)            photo           test: 150
world_ood_objects           40       colour + OOD shape ("red flower")     photo           test: 15
world_ood_novel             3        novel shapes (never pretrained)       photo           test: 200
world_ood_textures          10       object-free textures ("grass")        photo           test: 60
world_near_ood              4        OOD shapes: world_shapes' test        photo           test: 150
                                     images with only the shape swapped
==========================  =======  ====================================  ==============  ==========

Counts are per class (train/val/test). world_scenes, world_positions and world_textures label an
attribute that pretraining captions only mention in a trailing phrase ("... on grass", "... in the top
left") or rarely (bare textures are 5% of the pairs), so the hand-crafted "a photo of a {}." matches
them poorly, like CoOp's DTD / EuroSAT: that is where prompt learning gains most (docs/world.md).
world_textures has the classes of the OOD set world_ood_textures (other images) and is not used with
it.  Domain-shifted sets have the class names of their source;
their train/val are empty by default (like ImageNet-Sketch) but may be asked for. The OOD sets are
test-only, and their classes are disjoint from the label spaces of world_shapes and world_objects. Each
declares its group for ``vlprompt ood``: world_near_ood, world_ood_shapes and world_ood_objects "near" (OOD
shapes the world CLIP was pretrained on, in the ID domain), world_ood_novel and world_ood_textures "far"
(shapes never seen in pretraining; no object at all). world_near_ood is the counterfactual twin of
world_shapes' test split (:func:`item_spec`): item ``i`` is world_shapes' test item ``i`` (same random
stream, same colour, pattern, size, position, background, style and pixel noise) with its shape swapped for
``OOD_SHAPES[i % 4]``, so the two differ in the shape only; the existing sets' images are unchanged by it.
Images of the world_objects classes in ``generate.HELDOUT_PAIRS`` (e.g. "blue circle") never occur
in pretraining.

Options (``build_dataset(name, root, **options)``; ``root`` is ignored and may be None):
``seed`` (int, default 0: which instance of the dataset), ``n_train`` / ``n_val`` / ``n_test``
(images per class), ``image_size`` (pixels, default 64), ``subsample`` ("all", "base" or "new": CoOp's
base-to-new class split, see :func:`base_new_split`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from PIL import Image

from vlprompt.core.errors import DataError
from vlprompt.data.registry import TinyTree, register_dataset
from vlprompt.data.subsample import subsample_classes
from vlprompt.data.types import DatasetSplits, Datum
from vlprompt.world.generate import (
    COLOUR_NAMES,
    ID_SHAPES,
    IMAGE_SIZE,
    NOVEL_SHAPES,
    OOD_SHAPES,
    PATTERNS,
    POSITIONS,
    SCENE_BACKGROUNDS,
    STYLES,
    TEXTURES,
    Domain,
    ObjectSpec,
    item_rng,
    render,
    sample_spec,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
TEMPLATE = "a photo of a {}."
KEY_PREFIX = "world://"
_OPTIONS = ("seed", "n_train", "n_val", "n_test", "image_size", "subsample")


@dataclass(frozen=True)
class WorldDataset:
    """Definition of one world dataset.

    Attributes:
        key: short name; the registry name is ``"world_" + key`` and image keys start with
            ``world://<key>/``.
        classnames: class names, index == label.
        classes: per class, the attributes fixed by :func:`generate.sample_spec` (e.g. {"shape": "star"}).
        style: rendering style of every image.
        counts: default images per class for (train, val, test).
        test_only: OOD sets: train and val must stay empty.
        domain: pools of the attributes a class does not fix.
        twin_of: the key of an ID dataset whose items this one re-draws with its own class attributes
            (:func:`item_spec`): item ``i`` of a split comes from the random stream of the source's item ``i``, so
            it differs from it only in what the classes fix (world_near_ood: the shape).
        ood_group: an OOD set's group (``"near"`` / ``"far"``, :class:`vlprompt.data.registry.DatasetInfo`).
    """

    key: str
    classnames: tuple[str, ...]
    classes: tuple[Mapping[str, str], ...]
    style: str = "photo"
    counts: tuple[int, int, int] = (64, 16, 50)
    test_only: bool = False
    domain: Domain = field(
        default_factory=lambda: Domain(shapes=ID_SHAPES, style_weights={"photo": 1.0}, exclude=frozenset())
    )
    twin_of: str | None = None
    ood_group: str | None = None

    @property
    def name(self) -> str:
        return f"world_{self.key}"


_Counts = tuple[int, int, int]


def _shapes(key: str, shapes: Sequence[str], style: str, counts: _Counts, group: str | None = None) -> WorldDataset:
    classes = tuple({"shape": s} for s in shapes)
    return WorldDataset(key, tuple(shapes), classes, style, counts, test_only=key.startswith("ood_"),
                        ood_group=group)


def _objects(key: str, shapes: Sequence[str], style: str, counts: _Counts, group: str | None = None
             ) -> WorldDataset:
    pairs = [(c, s) for s in shapes for c in COLOUR_NAMES]  # shape-major: base/new split by shape
    classes = tuple({"shape": s, "colour": c} for c, s in pairs)
    names = tuple(f"{c} {s}" for c, s in pairs)
    return WorldDataset(key, names, classes, style, counts, test_only=key.startswith("ood_"), ood_group=group)


def _definitions() -> dict[str, WorldDataset]:
    full, shift = (64, 16, 50), (0, 0, 50)
    defs = [
        _shapes("shapes", ID_SHAPES, "photo", full),
        _objects("objects", ID_SHAPES, "photo", full),
        WorldDataset("patterns", tuple(f"{p} shape" for p in PATTERNS), tuple({"pattern": p} for p in PATTERNS)),
        WorldDataset("scenes", SCENE_BACKGROUNDS, tuple({"background": b} for b in SCENE_BACKGROUNDS)),
        WorldDataset("positions", tuple(POSITIONS), tuple({"position": p, "size": "small"} for p in POSITIONS)),
        WorldDataset("textures", tuple(TEXTURES), tuple({"texture": t} for t in TEXTURES)),
        *(_shapes(f"shapes_{s}", ID_SHAPES, s, shift) for s in STYLES if s != "photo"),
        *(_objects(f"objects_{s}", ID_SHAPES, s, shift) for s in ("cartoon", "painting")),
        _shapes("ood_shapes", OOD_SHAPES, "photo", (0, 0, 150), "near"),
        _objects("ood_objects", OOD_SHAPES, "photo", (0, 0, 15), "near"),
        _shapes("ood_novel", NOVEL_SHAPES, "photo", (0, 0, 200), "far"),
        WorldDataset(
            "ood_textures",
            tuple(TEXTURES),
            tuple({"texture": t} for t in TEXTURES),
            "photo",
            (0, 0, 60),
            True,
            ood_group="far",
        ),
        # world_shapes' test images with the shape swapped for an OOD one (4 | 12: ID shape k -> OOD shape k % 4)
        WorldDataset("near_ood", OOD_SHAPES, tuple({"shape": s} for s in OOD_SHAPES), "photo", (0, 0, 150), True,
                     twin_of="shapes", ood_group="near"),
    ]
    return {d.key: d for d in defs}


WORLD_DATASETS: dict[str, WorldDataset] = _definitions()
ID_DATASETS: tuple[str, ...] = (
    "world_shapes", "world_objects", "world_patterns", "world_scenes", "world_positions", "world_textures",
)  # fmt: skip
OOD_DATASETS: tuple[str, ...] = tuple(d.name for d in WORLD_DATASETS.values() if d.ood_group is not None)


def world_dataset_names() -> list[str]:
    """Registry names of every world dataset (``world_shapes``, ...)."""
    return [d.name for d in WORLD_DATASETS.values()]


def _definition(name: str) -> WorldDataset:
    key = name.strip().lower().removeprefix("world_")
    if key not in WORLD_DATASETS:
        raise DataError(f"unknown world dataset '{name}'. Known: {', '.join(world_dataset_names())}.")
    return WORLD_DATASETS[key]


# --------------------------------------------------------------------------------------------------
# Keys and rendering
# --------------------------------------------------------------------------------------------------


def world_key(dataset: str, split: str, index: int, *, seed: int = 0, image_size: int = IMAGE_SIZE) -> str:
    """The ``Datum.path`` of item ``index`` of ``split`` of ``dataset`` (a registry name or a key)."""
    query = "&".join(
        f"{k}={v}" for k, v, default in (("seed", seed, 0), ("size", image_size, IMAGE_SIZE)) if v != default
    )
    key = f"{KEY_PREFIX}{_definition(dataset).key}/{split}/{index}"
    return f"{key}?{query}" if query else key


def parse_world_key(path: str) -> tuple[WorldDataset, str, int, int, int]:
    """Split a world key into (definition, split, index, seed, image_size).

    Raises:
        DataError: ``path`` is not a well-formed world key.
    """
    body, _, query = path.removeprefix(KEY_PREFIX).partition("?")
    parts = body.split("/")
    try:
        if not path.startswith(KEY_PREFIX) or len(parts) != 3 or parts[1] not in SPLITS:
            raise ValueError
        opts = {k: int(v[-1]) for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
        if set(opts) - {"seed", "size"}:
            raise ValueError
        index = int(parts[2])
    except ValueError:
        raise DataError(
            f"malformed world image key '{path}': expected world://<dataset>/<train|val|test>/<index>[?seed=S&size=N]"
        ) from None
    return _definition(parts[0]), parts[1], index, opts.get("seed", 0), opts.get("size", IMAGE_SIZE)


def item_spec(dataset: str, split: str, index: int, *, seed: int = 0) -> tuple[ObjectSpec, np.random.Generator, int]:
    """The spec of item ``index`` of a split, the generator that renders its pixels, and its label.

    A twin (``WorldDataset.twin_of``, e.g. world_near_ood) draws item ``index`` from the random stream of its
    source's item ``index`` (``"shapes/test"``), with the source's class attributes overridden by its own: every
    draw of :func:`generate.sample_spec` is the same whatever the shape (the world's ID domain excludes no
    colour-shape pair), so colour, pattern, size, position, jitter, background and style are those of the source
    item, the rotation is the same random draw within the new shape's allowed range, and :func:`generate.render`
    gets the same pixel randomness: only the shape differs.
    """
    d = _definition(dataset)
    label = index % len(d.classes)
    source = WORLD_DATASETS[d.twin_of] if d.twin_of else d
    rng = item_rng(seed, f"{source.key}/{split}", index)
    fixed = {**source.classes[index % len(source.classes)], **d.classes[label]} if d.twin_of else d.classes[label]
    return sample_spec(rng, source.domain, style=source.style, **fixed), rng, label


def render_item(
    dataset: str, split: str, index: int, *, seed: int = 0, image_size: int = IMAGE_SIZE
) -> tuple[np.ndarray, int]:
    """Render item ``index`` of a split: (uint8 [S, S, 3], label). Depends on these arguments only."""
    spec, rng, label = item_spec(dataset, split, index, seed=seed)
    return render(spec, rng, image_size), label


def load_world_image(path: str) -> Image.Image:
    """The ``DatasetSplits.loader`` of world datasets: render the image of a world key (RGB PIL)."""
    d, split, index, seed, size = parse_world_key(path)
    return Image.fromarray(render_item(d.key, split, index, seed=seed, image_size=size)[0])


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _split_data(d: WorldDataset, split: str, per_class: int, seed: int, image_size: int) -> list[Datum]:
    n = len(d.classes)
    return [
        Datum(world_key(d.key, split, i, seed=seed, image_size=image_size), i % n, d.classnames[i % n])
        for i in range(per_class * n)
    ]


def _int_option(options: Mapping[str, Any], name: str, default: int, minimum: int, dataset: str) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"option {name} of dataset {dataset} must be an integer >= {minimum}, got {value!r}")
    return value


def build_world_dataset(name: str, **options: Any) -> DatasetSplits:
    """Build world dataset ``name`` (registry name or key); see the module docstring for options.

    Raises:
        DataError: unknown dataset or option, bad option value, or train/val asked of a test-only set.
    """
    d = _definition(name)
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise DataError(f"unknown option(s) {unknown} for dataset {d.name}; accepted: {', '.join(_OPTIONS)}")
    seed = _int_option(options, "seed", 0, 0, d.name)
    size = _int_option(options, "image_size", IMAGE_SIZE, 16, d.name)
    counts = [_int_option(options, f"n_{s}", c, 0, d.name) for s, c in zip(SPLITS, d.counts)]
    if d.test_only and (counts[0] or counts[1]):
        raise DataError(f"dataset {d.name} is test-only: n_train and n_val must be 0")
    data = [_split_data(d, s, c, seed, size) for s, c in zip(SPLITS, counts)]
    splits = DatasetSplits(d.name, list(d.classnames), data[0], data[1], data[2], template=TEMPLATE,
                           loader=load_world_image)
    subsample = options.get("subsample", "all")
    if subsample not in ("all", "base", "new"):
        raise DataError(f"option subsample of dataset {d.name} must be all, base or new, got {subsample!r}")
    if subsample == "all":
        return splits
    base, new = base_new_split(splits)
    return base if subsample == "base" else new


def base_new_split(splits: DatasetSplits) -> tuple[DatasetSplits, DatasetSplits]:
    """CoOp's base-to-new split: the first ceil(n/2) classes (by label) are base, the rest new.

    Labels of the new half are renumbered from 0; paths and class names are unchanged.
    """
    return subsample_classes(splits, "base"), subsample_classes(splits, "new")


def export_imagefolder(splits: DatasetSplits, out_dir: str | Path) -> Path:
    """Write ``out_dir/{train,val,test}/<class name>/<i>.png`` (``i`` counts within class and split).

    Empty splits are skipped. Returns ``out_dir`` as a Path.
    """
    root = Path(out_dir)
    for split in SPLITS:
        seen: dict[int, int] = {}
        for datum in getattr(splits, split):
            folder = root / split / _safe_dirname(splits.classnames[datum.label])
            folder.mkdir(parents=True, exist_ok=True)
            i = seen.get(datum.label, 0)
            seen[datum.label] = i + 1
            splits.loader(datum.path).convert("RGB").save(folder / f"{i}.png")
    return root


def _safe_dirname(name: str) -> str:
    return re.sub(r"[\\/:*?\"<>|]", "_", name).strip(". ") or "_"


def _build_registered(key: str, root: str | None = None, **options: Any) -> DatasetSplits:
    del root  # generated, nothing to read
    return build_world_dataset(key, **options)


def _tiny(d: WorldDataset, folder: Path) -> TinyTree:
    """Nothing to write (images are generated from their keys): a few small images per class."""
    del folder
    counts = {"n_test": 1} if d.test_only else {"n_train": 2, "n_val": 1, "n_test": 1}
    return TinyTree(None, {**counts, "image_size": 16})


#: The class descriptions written for the world's classes (CoPrompt / CuPL style: a few sentences per class in the
#: words of the pretraining captions), one JSON file per dataset; a domain-shifted set uses its source's file.
DESCRIPTIONS_DIR = Path(__file__).parent / "descriptions"


def descriptions_file(d: WorldDataset) -> str | None:
    """The shipped description file of ``d`` (``world_shapes_sketch`` -> ``world_shapes.json``), or None."""
    for key in (d.key, d.key.split("_")[0]):
        path = DESCRIPTIONS_DIR / f"world_{key}.json"
        if not d.test_only and path.is_file():
            return str(path)
    return None


def _register(d: WorldDataset) -> None:
    """Declare world dataset ``d``: the world's template, the ``stable`` sampler (generated images have
    no reference listing), CoOp's epochs by shots, and a generated tiny tree."""
    register_dataset(d.name, template=TEMPLATE, sampler="stable", tiny_tree=partial(_tiny, d), ood_group=d.ood_group,
                     descriptions=descriptions_file(d))(partial(_build_registered, d.key))


for _d in WORLD_DATASETS.values():
    _register(_d)
