"""The world's near-OOD set: world_shapes' test images with only the shape swapped for an OOD shape."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vlprompt.world.generate as g
from vlprompt.data.registry import build_dataset, get_dataset_info
from vlprompt.world.datasets import item_spec, render_item

pytestmark = pytest.mark.world
INDICES = range(8)  # covers 8 ID shapes, both sizes and several backgrounds


def _source_image(index: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """world_shapes' test item ``index`` drawn straight from the generator (not through vlprompt.world.datasets):
    stream ``shapes/test``, the ID photo domain, the class's shape."""
    rng = g.item_rng(seed, "shapes/test", index)
    domain = g.Domain(shapes=g.ID_SHAPES, style_weights={"photo": 1.0}, exclude=frozenset())
    spec = g.sample_spec(rng, domain, style="photo", shape=g.ID_SHAPES[index % len(g.ID_SHAPES)])
    return g.render(spec, rng, size)


def test_world_shapes_items_are_unchanged() -> None:
    """The twin's machinery (item_spec) leaves the ID set's images what the generator draws for them."""
    for i in INDICES:
        image, label = render_item("world_shapes", "test", i)
        assert label == i % 12 and np.array_equal(image, _source_image(i))
    assert np.array_equal(render_item("world_shapes", "test", 3, seed=2, image_size=32)[0],
                          _source_image(3, seed=2, size=32))


def test_the_twin_differs_from_its_id_image_in_the_shape_only() -> None:
    for i in INDICES:
        source, _, _ = item_spec("world_shapes", "test", i)
        twin, _, label = item_spec("world_near_ood", "test", i)
        assert label == i % 4 and twin.shape == g.OOD_SHAPES[label] != source.shape
        # everything but the shape (and the rotation, the same draw within the new shape's range) is the source's
        assert dataclasses.replace(twin, shape=source.shape, angle=source.angle) == source
        turn = g._SHAPE_MAX_ROTATION  # the largest rotation that keeps a shape's name
        assert twin.angle / turn.get(twin.shape, 180) == pytest.approx(source.angle / turn.get(source.shape, 180))
        a, b = _source_image(i), render_item("world_near_ood", "test", i)[0]
        # pixels at least 6 px outside both outlines (clear of the drop shadow, 2 px at 64 px) are the same
        far = (g._frame(source, 64).sd > 6) & (g._frame(twin, 64).sd > 6)
        assert far.mean() > 0.2 and np.array_equal(a[far], b[far])
        assert np.abs(a.astype(int) - b.astype(int))[~far].max() > 30  # and the objects differ


def test_the_twin_is_a_near_test_only_dataset_of_ood_shapes() -> None:
    ds = build_dataset("world_near_ood", None)
    assert ds.classnames == list(g.OOD_SHAPES) and not ds.train and len(ds.test) == 150 * 4
    assert len(ds.test) == len(build_dataset("world_shapes", None).test)  # one twin per ID test image
    groups = {n: get_dataset_info(n).ood_group for n in (
        "world_near_ood", "world_ood_shapes", "world_ood_objects", "world_ood_novel", "world_ood_textures",
        "world_shapes")}
    assert groups == {"world_near_ood": "near", "world_ood_shapes": "near", "world_ood_objects": "near",
                      "world_ood_novel": "far", "world_ood_textures": "far", "world_shapes": None}
