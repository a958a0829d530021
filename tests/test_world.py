"""Tests of the synthetic world: generator, downstream datasets, pretraining loop."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlprompt.core.errors import DataError
from vlprompt.data.registry import build_dataset
from vlprompt.world import generate as g
from vlprompt.world.datasets import (
    OOD_DATASETS,
    base_new_split,
    export_imagefolder,
    load_world_image,
    world_dataset_names,
    world_key,
)


def _spec(shape: str, style: str, index: int = 0) -> tuple[g.ObjectSpec, np.random.Generator]:
    rng = g.item_rng(0, f"test/{style}", index)
    return g.sample_spec(rng, shape=shape, style=style), rng


# -- generator ---------------------------------------------------------------------------------------


@pytest.mark.world
def test_sample_pairs_is_deterministic_per_seed_and_index() -> None:
    a_img, a_cap = g.sample_pairs(6, seed=0)
    b_img, b_cap = g.sample_pairs(6, seed=0)
    c_img, c_cap = g.sample_pairs(6, seed=1)
    assert a_img.shape == (6, 64, 64, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert not np.array_equal(a_img, c_img) and a_cap != c_cap
    tail_img, tail_cap = g.sample_pairs(3, seed=0, start=3)  # item i depends on (seed, i) only
    assert np.array_equal(tail_img, a_img[3:]) and tail_cap == a_cap[3:]
    img, cap = g.pretrain_item(0, 4)
    assert np.array_equal(img, a_img[4]) and cap == a_cap[4]


@pytest.mark.world
@pytest.mark.parametrize("style", g.STYLES)
def test_every_style_renders_every_shape(style: str) -> None:
    for i, shape in enumerate(g.SHAPES):
        spec, rng = _spec(shape, style, i)
        img = g.render(spec, rng)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert img.std() > 10, (shape, style)
    spec, rng = _spec("star", style)
    assert g.render(spec, rng, image_size=32).shape == (32, 32, 3)


@pytest.mark.world
def test_cartoon_fills_the_object_with_its_flat_colour() -> None:
    spec = g.ObjectSpec("circle", "red", "plain", "large", "centre", "plain", "cartoon", 0.7, 0.0, 0.0, 0.0)
    img = g.render(spec, np.random.default_rng(0))
    assert tuple(img[32, 32]) == pytest.approx((219, 26, 26), abs=3)


@pytest.mark.world
def test_captions_never_say_photo_and_respect_the_style() -> None:
    rng = np.random.default_rng(0)
    for i in range(1500):
        spec = g.sample_spec(rng)
        cap = g.caption(spec, rng)
        assert "photo" not in cap and cap == cap.strip() and "  " not in cap
        if spec.style == "sketch":
            assert not any(c in cap.split() for c in g.COLOUR_NAMES), cap
        if i < 5:
            assert cap[0].isalpha()


@pytest.mark.world
def test_pretraining_domain_holds_out_pairs_and_novel_shapes() -> None:
    specs = [g.pretrain_spec(1, i)[0] for i in range(3000)]
    objects = [s for s in specs if s.shape is not None]
    assert not {(s.colour, s.shape) for s in objects} & g.HELDOUT_PAIRS
    assert not {s.shape for s in objects} & set(g.NOVEL_SHAPES)
    assert {s.shape for s in objects} == set(g.PRETRAIN_SHAPES)
    assert {s.style for s in specs} == set(g.STYLES)
    assert 0.02 < (len(specs) - len(objects)) / len(specs) < 0.09  # bare textures
    assert len(g.ID_SHAPES) >= 12 and len(g.COLOURS) >= 10 and len(g.STYLES) >= 4


@pytest.mark.world
def test_pretraining_groups_share_everything_but_the_shape() -> None:
    group = [g.pretrain_spec(0, i)[0] for i in range(8, 8 + g.PRETRAIN_GROUP_SIZE)]
    group = [s for s in group if s.shape is not None]  # bare textures stand alone
    assert len({s.shape for s in group}) == len(group)
    for attr in ("colour", "pattern", "style", "size", "position", "background"):
        assert len({getattr(s, attr) for s in group}) == 1, attr
    ungrouped = [g.pretrain_spec(0, i, g.make_domain(group_size=1))[0] for i in range(40)]
    assert len({s.colour for s in ungrouped[:4]} | {s.style for s in ungrouped[:4]}) > 2


@pytest.mark.world
def test_sample_pairs_options() -> None:
    _, caps = g.sample_pairs(20, seed=0, styles=["sketch"])
    assert all(not any(c in cap.split() for c in g.COLOUR_NAMES) for cap in caps)
    with pytest.raises(ValueError):
        g.sample_pairs(1, seed=0, styles=["oil"])


# -- datasets ----------------------------------------------------------------------------------------


@pytest.mark.world
@pytest.mark.parametrize(("name", "n_classes"), [("world_shapes", 12), ("world_objects", 120), ("world_patterns", 7)])
def test_id_dataset_sizes_and_labels(name: str, n_classes: int) -> None:
    ds = build_dataset(name, None)
    assert ds.num_classes == n_classes and len(set(ds.classnames)) == n_classes
    assert (len(ds.train), len(ds.val), len(ds.test)) == (64 * n_classes, 16 * n_classes, 50 * n_classes)
    assert ds.template == "a photo of a {}."
    for split in (ds.train, ds.val, ds.test):
        assert np.bincount([d.label for d in split]).min() == len(split) // n_classes
        assert all(ds.classnames[d.label] == d.classname for d in split)
    keys = [{d.path for d in s} for s in (ds.train, ds.val, ds.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


@pytest.mark.world
def test_loader_renders_keys_deterministically_and_splits_differ() -> None:
    ds = build_dataset("world_shapes", None, n_train=2, n_val=2, n_test=2)
    assert ds.test[3].path == "world://shapes/test/3"
    img = ds.loader(ds.test[3].path)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
    assert np.array_equal(np.asarray(img), np.asarray(load_world_image("world://shapes/test/3")))
    digests = {
        hashlib.sha1(np.asarray(ds.loader(d.path)).tobytes()).digest() for s in (ds.train, ds.val, ds.test) for d in s
    }
    assert len(digests) == 3 * 2 * 12
    other = build_dataset("world_shapes", None, seed=5, image_size=48, n_train=0, n_val=0, n_test=1)
    assert other.test[0].path == "world://shapes/test/0?seed=5&size=48"
    assert ds.loader(other.test[0].path).size == (48, 48)
    small = build_dataset("world_shapes", None, n_train=1)
    assert [d.path for d in small.train] == [d.path for d in ds.train[:12]]  # nested subsets


@pytest.mark.world
def test_domain_shifted_sets_share_classes() -> None:
    source = build_dataset("world_shapes", None)
    shifted = [n for n in world_dataset_names() if n.startswith("world_shapes_")]
    assert len(shifted) >= 2
    for name in shifted:
        ds = build_dataset(name, None)
        assert ds.classnames == source.classnames and len(ds.test) == 50 * 12
    assert build_dataset("world_objects_cartoon", None).classnames == build_dataset("world_objects").classnames


@pytest.mark.world
def test_ood_sets_are_test_only_and_disjoint_from_id_classes() -> None:
    id_classes = set(build_dataset("world_shapes").classnames) | set(build_dataset("world_objects").classnames)
    assert len(OOD_DATASETS) >= 2
    for name in OOD_DATASETS:
        ds = build_dataset(name, None)
        assert not set(ds.classnames) & id_classes
        assert not ds.train and not ds.val and len(ds.test) >= 500
        assert not any(shape in cn.split() for cn in ds.classnames for shape in g.ID_SHAPES)
        with pytest.raises(DataError, match="test-only"):
            build_dataset(name, None, n_train=1)


@pytest.mark.world
def test_base_new_split() -> None:
    ds = build_dataset("world_patterns", None, n_train=2, n_val=1, n_test=3)
    base, new = base_new_split(ds)
    assert base.classnames == ds.classnames[:4] and new.classnames == ds.classnames[4:]
    assert {d.label for d in new.test} == {0, 1, 2} and len(new.train) == 2 * 3 and len(base.test) == 3 * 4
    assert all(new.classnames[d.label] == d.classname for d in new.train + new.val + new.test)
    via_option = build_dataset("world_patterns", None, n_train=2, n_val=1, n_test=3, subsample="new")
    assert via_option.test == new.test and via_option.classnames == new.classnames


@pytest.mark.world
def test_bad_options_and_keys_raise_data_errors() -> None:
    with pytest.raises(DataError, match="unknown option"):
        build_dataset("world_shapes", None, shots=4)
    with pytest.raises(DataError, match="n_train"):
        build_dataset("world_shapes", None, n_train=-1)
    with pytest.raises(DataError, match="subsample"):
        build_dataset("world_shapes", None, subsample="half")
    for key in ("world://shapes/train", "world://shapes/dev/1", "world://nothing/test/1", "world://shapes/test/x"):
        with pytest.raises(DataError):
            load_world_image(key)
    assert world_key("world_objects", "val", 7) == "world://objects/val/7"


@pytest.mark.world
def test_export_imagefolder_round_trip(tmp_path: Path) -> None:
    ds = build_dataset("world_patterns", None, n_train=2, n_val=1, n_test=1)
    root = export_imagefolder(ds, tmp_path / "export")
    for split, per_class in (("train", 2), ("val", 1), ("test", 1)):
        dirs = sorted(p.name for p in (root / split).iterdir())
        assert dirs == sorted(ds.classnames)
        assert all(len(list((root / split / d).glob("*.png"))) == per_class for d in dirs)
    datum = ds.train[ds.num_classes + 2]  # second image of class 2
    back = np.asarray(Image.open(root / "train" / datum.classname / "1.png"))
    assert np.array_equal(back, np.asarray(ds.loader(datum.path)))


# -- model config and pretraining ------------------------------------------------------------------


@pytest.mark.world
def test_world_model_config_fits_budget_and_coop_prompts() -> None:
    import open_clip

    from vlprompt.backbones.configs import register_model_configs

    register_model_configs()
    model = open_clip.create_model("vlprompt-world-vit")
    assert 2 * sum(p.numel() for p in model.parameters()) <= 20_000_000
    tokenizer = open_clip.get_tokenizer("vlprompt-world-vit")
    assert tokenizer.context_length == 32
    prompt = " ".join(["X"] * 16) + " white crescent."
    assert len(tokenizer.encode(prompt)) + 2 <= 32
    _, caps = g.sample_pairs(300, seed=3)
    assert max(len(tokenizer.encode(c)) + 2 for c in caps) <= 32


@pytest.mark.world
def test_pretrain_smoke(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from vlprompt.world.pretrain import lr_at, parse_args, pretrain

    lines: list[str] = []
    meta = pretrain(
        tmp_path, steps=2, batch_size=8, model_name="vlprompt-test-vit", eval_per_class=1, progress=False,
        log=lines.append,
    )  # fmt: skip
    weights = tmp_path / "vlprompt-test-vit.safetensors"
    assert meta["steps"] == 2 and meta["pairs_seen"] == 16 and np.isfinite(meta["final_loss"])
    assert set(meta["zero_shot_val"]) == {"world_shapes", "world_objects"}
    assert meta["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "vlprompt-test-vit.json").read_text())["seed"] == 0
    assert (tmp_path / "vlprompt-test-vit.sha256").read_text().split() == [meta["sha256"], weights.name]
    state = load_file(str(weights))
    assert all(v.dtype == torch.float16 for v in state.values()) and "logit_scale" in state
    assert any(line.startswith("final:") for line in lines)
    assert lr_at(0, 0.0, 1.0, 10) == pytest.approx(0.1) and lr_at(9, 0.0, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(50, 0.5, 1.0, 10) == pytest.approx(0.5) and lr_at(99, 1.0, 1.0, 10) == pytest.approx(0.0)
    cfg = parse_args(["--out", "x", "--minutes", "2", "--device", "cuda", "--batch", "64"])
    assert (cfg.minutes, cfg.device, cfg.batch_size, cfg.model_name) == (2.0, "cuda", 64, "vlprompt-world-rn")
