"""TDA against an independent dict-of-lists re-implementation of kdiAAA/TDA, and its online test-time contract.

The reference below is written for these tests from reading kdiAAA/TDA (``tda_runner.py``, ``utils.py``; lines
cited per step): caches as dicts of lists as the authors keep them, computed in fp32 on CPU (the authors run fp16
on a GPU) from a random tiny tower's own encoders, never through vlprompt's method code. The tower's logit scale
is set to CLIP's 100, the constant the authors write (utils.py l.74), so that the stream's predictions spread over
several classes, the normalised entropies straddle the negative cache's gate and the caches fill and replace.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import MethodContext
from vlprompt.methods.registry import build_method, make_method_config

NAMES = ["red thing", "green thing", "blue thing", "cat", "dog"]
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")
#: rows of 2 entries, so that the 30-image stream fills and replaces them in several classes (asserted below)
SMALL_CACHES = {"positive": {"shot_capacity": 2}, "negative": {"shot_capacity": 2}}


def clip_scaled_tower():
    """A random tiny ViT tower of its own (not the session's) with CLIP's logit scale, 100."""
    from vlprompt.backbones.openclip import load_backbone

    backbone = load_backbone("vlprompt-test-vit")
    with torch.no_grad():
        backbone.model.logit_scale.fill_(math.log(100.0))
    return backbone


@pytest.fixture(scope="module")
def tower():
    return clip_scaled_tower()


def stream(backbone, n_images: int, n_views: int, seed: int = 0) -> list[torch.Tensor]:
    """``n_images`` test images as ``[n_views, 3, S, S]`` views (row 0 the original): noise, colour and gradient
    images (they spread over the classes on the random tower), the other views shifted, flipped, noisier copies."""
    g = torch.Generator().manual_seed(seed)
    s = backbone.image_size
    ramp = torch.linspace(-2, 2, s)
    out = []
    for i in range(n_images):
        kind = i % 3
        if kind == 0:
            x = torch.randn(3, s, s, generator=g) * 3 * torch.rand(1, generator=g)
        elif kind == 1:
            x = torch.rand(3, 1, 1, generator=g).expand(3, s, s) * 4 - 2 + 0.3 * torch.randn(3, s, s, generator=g)
        else:
            x = (ramp.view(1, 1, s) * torch.randn(3, 1, 1, generator=g)
                 + ramp.view(1, s, 1) * torch.randn(3, 1, 1, generator=g))
        views = [x]
        for _ in range(n_views - 1):
            v = torch.roll(x, shifts=(int(torch.randint(-8, 9, (1,), generator=g)),
                                      int(torch.randint(-8, 9, (1,), generator=g))), dims=(1, 2))
            if bool(torch.rand(1, generator=g) < 0.5):
                v = v.flip(2)
            views.append(v + 0.5 * torch.rand(1, generator=g) * torch.randn(3, s, s, generator=g))
        out.append(torch.stack(views))
    return out


# ----------------------------------------------------------------------------------------- the reference
def reference_weights(backbone, classnames, templates):
    """``clip_classifier`` (utils.py l.44-61): per class, every template encoded and normalised, their mean
    normalised; stacked as columns ``[E, C]`` (l.60)."""
    cols = []
    with torch.no_grad():
        for name in classnames:
            ids = backbone.tokenize([t.format(name.replace("_", " ")) for t in templates], what="prompt")
            e = backbone.encode_text(ids).float()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(dim=0)
            cols.append(m / m.norm())
    return torch.stack(cols, dim=1)


def entropy_of(p):
    """``-sum p log p`` of a probability vector."""
    return float(-(p * torch.log(p)).sum())


def reference_clip_logits(backbone, views, weights, original_only=False):
    """``get_clip_logits`` (utils.py l.64-91): features normalised (l.71-72), logits ``100 f W`` (l.74); several
    views: the int(0.1 V) of lowest softmax entropy (l.76-78), their mean feature, mean logits (l.79-81), the
    entropy of their mean softmax (``avg_entropy`` l.28-33, written here as that entropy directly), the mean
    softmax (l.84) and the argmax of the mean logits (l.85); one view (or BoostAdapter's ``infer_ori_image``,
    its utils.py l.89-93): the view's own. Returns ``(feature [E], logits [C], loss, prob_map [C], pred, all
    features [V, E], all logits [V, C])``."""
    with torch.no_grad():
        f = backbone.encode_image(views).float()
    f = f / f.norm(dim=-1, keepdim=True)
    logits = 100.0 * f @ weights
    if f.shape[0] > 1 and not original_only:
        ent = torch.tensor([entropy_of(row.softmax(0)) for row in logits])
        chosen = sorted(range(f.shape[0]), key=lambda i: float(ent[i]))[: int(f.shape[0] * 0.1)]
        out = logits[chosen]
        mean_p = out.softmax(1).mean(0)
        return (f[chosen].mean(0), out.mean(0), entropy_of(mean_p), mean_p, int(out.mean(0).argmax()), f, logits)
    p = logits[0].softmax(0)
    return f[0], logits[0], entropy_of(p), p, int(logits[0].argmax()), f, logits


def tda_update(cache, pred, item, capacity):
    """``update_cache`` (tda_runner.py l.29-40): a new class gets a one-entry list; a list below capacity appends;
    a full one replaces its last (worst) entry when the new loss is strictly lower; then sorted by loss (stable)."""
    if pred not in cache:
        cache[pred] = [item]
        return
    entries = cache[pred]
    if len(entries) < capacity:
        entries.append(item)
    elif item[1] < entries[-1][1]:
        entries[-1] = item
    cache[pred] = sorted(entries, key=lambda e: e[1])


def cache_logits(feature, cache, alpha, beta, n_cls, mask=None):
    """``compute_cache_logits`` (tda_runner.py l.43-65): the entries of the classes in sorted order (l.48-54),
    values one-hot of the class (l.61) or, for the negative cache, the prob map thresholded
    ``lower < p < upper`` (l.57-59); ``alpha exp(-(beta - beta f K^T)) V`` (l.63-65)."""
    keys, values = [], []
    for c in sorted(cache):
        for entry in cache[c]:
            keys.append(entry[0])
            if mask is None:
                values.append(torch.nn.functional.one_hot(torch.tensor(c), n_cls).float())
            else:
                values.append(((entry[2] > mask[0]) & (entry[2] < mask[1])).float())
    k, v = torch.stack(keys), torch.stack(values)
    return alpha * torch.exp(-(beta - beta * (feature @ k.T))) @ v


def reference_tda_step(backbone, views, weights, pos, neg, cfg):
    """One image of ``run_test_tda`` (tda_runner.py l.79-93): returns the final logits; updates the caches."""
    feat, logits, loss, prob, pred, _, _ = reference_clip_logits(backbone, views, weights)
    n_cls = weights.shape[1]
    prop = loss / math.log2(n_cls)  # get_entropy, utils.py l.19-21
    p, n = cfg["positive"], cfg["negative"]
    if p["enabled"]:
        tda_update(pos, pred, [feat, loss], p["shot_capacity"])  # l.83-84
    gate = n["entropy_threshold"]
    if n["enabled"] and gate["lower"] < prop < gate["upper"]:  # l.86-87
        tda_update(neg, pred, [feat, loss, prob], n["shot_capacity"])
    final = logits.clone()  # l.89
    if p["enabled"] and pos:
        final += cache_logits(feat, pos, p["alpha"], p["beta"], n_cls)  # l.90-91
    if n["enabled"] and neg:
        m = n["mask_threshold"]
        final -= cache_logits(feat, neg, n["alpha"], n["beta"], n_cls, (m["lower"], m["upper"]))  # l.92-93
    return final


def assert_same_caches(method, pos, neg, atol=1e-6):
    """The method's caches hold the reference's entries, class by class, in the same order."""
    ours = method.cache_entries()
    for name, ref in (("positive", pos), ("negative", neg)):
        assert sorted(ours[name]) == sorted(ref), (name, sorted(ours[name]), sorted(ref))
        for c, entries in ref.items():
            mine = ours[name][c]
            assert len(mine) == len(entries), (name, c)
            for (key, ent, payload), ref_entry in zip(mine, entries):
                torch.testing.assert_close(key, ref_entry[0], rtol=0, atol=atol)
                assert ent == pytest.approx(ref_entry[1], rel=2e-5, abs=atol)  # fp32 entropy formulas
                if name == "negative":
                    torch.testing.assert_close(payload, ref_entry[2], rtol=0, atol=2e-5)  # exp(log 100) in fp32
    assert method.adaptation_size() == sum(len(v) for v in pos.values()) + sum(len(v) for v in neg.values())


def _build(backbone, name="tda", dataset="", **options):
    return build_method(name, backbone, NAMES, context=MethodContext(templates=TEMPLATES, dataset=dataset),
                        **options).eval()


# ----------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("n_views", [1, 20])
def test_tda_matches_the_authors_caches_and_logits_after_every_image(tower, n_views):
    """30 images, one view (the cross-dataset targets) or 20 (the int(0.1 V) = 2 most confident averaged): after
    every image the positive and negative caches hold the reference's entries in the reference's order, and the
    logits agree. The stream fills rows, replaces entries and opens the negative gate for some images only."""
    options = {**SMALL_CACHES, "negative": {"shot_capacity": 2, "entropy_threshold": {"lower": 0.2, "upper": 0.5}}}
    method = _build(tower, **options)
    cfg = make_method_config("tda", options)
    weights = reference_weights(tower, NAMES, TEMPLATES)
    torch.testing.assert_close(method.classifier.T, weights, rtol=0, atol=1e-6)
    pos: dict = {}
    neg: dict = {}
    method.reset_adaptation()
    refused = replaced = 0
    for views in stream(tower, 30, n_views):
        before = {c: [id(e[0]) for e in v] for c, v in pos.items()}
        neg_before = sum(len(v) for v in neg.values())
        expected = reference_tda_step(tower, views, weights, pos, neg, cfg.__dict__)
        out = method.adapt_and_predict(views)
        assert out.cost == {"image_forward": n_views, "text_forward": 0, "backward": 0}
        torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-4)
        assert_same_caches(method, pos, neg)
        refused += sum(len(v) for v in neg.values()) == neg_before
        replaced += any(len(before.get(c, [])) == len(v) == 2 and before[c] != [id(e[0]) for e in v]
                        for c, v in pos.items())
    assert len(pos) >= 2 and sum(len(v) for v in neg.values()) >= 2, (pos.keys(), neg.keys())
    assert refused >= 3 and replaced >= 1  # the gate closed for some images; full rows took better entries


def test_the_vectorised_cache_keeps_ties_and_order_as_the_lists_do():
    """ClassCache against the dict of lists on 300 insertions with many equal entropies (ties go after the equal
    entries, a full row takes only strictly better ones; first in first out drops the oldest), 4 classes."""
    from vlprompt.methods.tda.cache import ClassCache

    g = torch.Generator().manual_seed(3)
    for policy in ("entropy", "fifo"):
        cache = ClassCache(4, 3, 5, payload_dim=4, policy=policy)
        ref: dict = {}
        for step in range(300):
            c = int(torch.randint(0, 4, (1,), generator=g))
            key, payload = torch.randn(5, generator=g), torch.rand(4, generator=g)
            ent = float(torch.randint(0, 6, (1,), generator=g)) / 4  # few values: many ties
            cache.insert(c, key, ent, payload)
            if policy == "entropy":
                tda_update(ref, c, [key, ent, payload], 3)
            else:  # BoostAdapter runner.py l.55-59 (fifo=True)
                ref.setdefault(c, []).append([key, ent, payload])
                ref[c] = ref[c][-3:]
            for cls, entries in ref.items():
                mine = cache.entries(cls)
                assert [e for _, e, _ in mine] == [e[1] for e in entries], (policy, step)
                assert all(torch.equal(k, e[0]) and torch.equal(p, e[2]) for (k, _, p), e in zip(mine, entries))
        assert cache.size() == sum(len(v) for v in ref.values()) == 12


def test_state_round_trip_gives_the_same_next_predictions(tower):
    """adaptation_state after 15 images -> a fresh method loads it -> the next 15 predictions are identical to the
    uninterrupted method's; reset_adaptation empties the caches (the next prediction is a fresh method's)."""
    images = stream(tower, 30, 20, seed=1)
    method = _build(tower)
    method.reset_adaptation()
    for views in images[:15]:
        method.adapt_and_predict(views)
    state = method.adaptation_state()
    assert state and all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in state.values())
    assert state["positive.keys"].shape[0] + state["negative.keys"].shape[0] == method.adaptation_size() > 0
    resumed = _build(tower)
    resumed.load_adaptation_state({k: v.clone() for k, v in state.items()})
    assert resumed.adaptation_size() == method.adaptation_size()
    for views in images[15:]:
        a, b = method.adapt_and_predict(views), resumed.adapt_and_predict(views)
        assert torch.equal(a.logits, b.logits)
    method.reset_adaptation()
    assert method.adaptation_size() == 0 and method.adaptation_state() == {}
    fresh = _build(tower)
    assert torch.equal(method.adapt_and_predict(images[0]).logits, fresh.adapt_and_predict(images[0]).logits)
    with pytest.raises(ValueError, match="does not know"):
        fresh.load_adaptation_state({"bogus": torch.zeros(1)})
    bad = dict(state, **{"positive.classes": state["positive.classes"] + 100})
    with pytest.raises(ValueError, match="classes outside"):
        fresh.load_adaptation_state(bad)


def test_views_by_dataset_as_the_authors_loader():
    """utils.py build_test_data_loader l.127-144: 64 AugMix views on ImageNet-A/V2/R/Sketch, the original alone on
    ImageNet and every other dataset."""
    from vlprompt.backbones.openclip import load_backbone

    backbone = load_backbone("vlprompt-test-vit")
    for dataset, kind, count in (("imagenet_a", "crop", 64), ("imagenet_sketch", "crop", 64),
                                 ("imagenet", "crop", 1), ("dtd", "augmix", 1), ("imagefolder", "augmix", 1)):
        method = _build(backbone, dataset=dataset)
        assert (method.test_time_views(kind), method.test_time_view_count(kind)) == ("augmix", count), dataset


@pytest.mark.parametrize("options, match", [
    ({"positive": {"alpha": 1.0, "bogus": 1}}, "unknown option method.positive.bogus"),
    ({"negative": {"entropy_threshold": {"lower": 0.6, "upper": 0.5}}}, "lower < upper"),
    ({"negative": {"mask_threshold": {"middle": 0.1}}}, "unknown option method.negative.mask_threshold.middle"),
    ({"positive": {"shot_capacity": 0}}, "shot_capacity must be >= 1"),
    ({"positive": {"enabled": "yes"}}, "enabled must be true or false"),
    ({"negative": {"alpha": "much"}}, "alpha must be a number"),
    ({"positive": 3}, "must be a mapping"),
])
def test_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make_method_config("tda", options)


def test_partial_mappings_keep_the_defaults_and_yaml_overrides_merge():
    """configs/imagenet.yaml defaults; a partial mapping or a --set of one key changes that key only."""
    from vlprompt.config import apply_overrides, config_from_dict

    cfg = make_method_config("tda", {"negative": {"alpha": 0.2, "entropy_threshold": {"upper": 0.6}}})
    assert cfg.positive == {"enabled": True, "shot_capacity": 3, "alpha": 2.0, "beta": 5.0}
    assert cfg.negative == {"enabled": True, "shot_capacity": 2, "alpha": 0.2, "beta": 1.0,
                            "entropy_threshold": {"lower": 0.2, "upper": 0.6},
                            "mask_threshold": {"lower": 0.03, "upper": 1.0}}
    base = {"method": {"name": "tda"}, "data": {"dataset": "dtd"}}
    raw = apply_overrides(base, ["method.positive.beta=8", "method.negative.alpha=1e-3"])
    spec = config_from_dict(raw).method
    assert spec.config.positive["beta"] == 8.0 and spec.config.negative["alpha"] == 1e-3
    with pytest.raises(ConfigError, match="unknown option method.positive.bta"):
        config_from_dict(apply_overrides({"method": {"name": "tda"}, "data": {"dataset": "dtd"}},
                                         ["method.positive.bta=8"]))


@pytest.mark.slow
def test_a_run_through_the_tta_protocol(tiny_imagefolder, tmp_path):
    """``vlprompt.tasks.test_time.tta`` on the tiny imagefolder: one view per image (not an ImageNet set), the
    caches fill; the same stream through ``adapt_stream`` gives the same predictions and its cache size."""
    from vlprompt.config import config_from_dict
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.data.test_time_views import views_for
    from vlprompt.engine.test_time import adapt_stream
    from vlprompt.engine.trainer import method_context
    from vlprompt.methods.registry import build_method as build
    from vlprompt.tasks.test_time import tta

    raw = {"method": {"name": "tda"}, "backbone": {"model": "vlprompt-test-vit", "pretrained": None},
           "data": {"dataset": "imagefolder", "root": str(tiny_imagefolder), "num_workers": 0},
           "train": {"device": "cpu", "progress": False, "tensorboard": False}}
    cfg = config_from_dict(raw)
    result = tta(cfg, "imagefolder", tmp_path / "tta", order_seed=5)
    assert result["method"] == "tda" and result["adaptation"] == "online"
    row = result["per_target"]["imagefolder"]
    assert row["n"] == 18 and row["n_views"] == 1 and row["passes"]["image_forward"] == 1.0
    splits = load_dataset(cfg.data)
    from vlprompt.backbones.openclip import load_backbone

    method = build("tda", load_backbone("vlprompt-test-vit"), splits.classnames, config=cfg.method.config,
                   context=method_context(cfg, splits))
    out = adapt_stream(method, splits.test, splits.loader, views_for(method.backbone, n_views=1, augmix=True,
                                                                    seed=cfg.train.seed), order_seed=5)
    import json

    pred = json.loads((tmp_path / "tta" / "tta_targets" / "imagefolder.predictions.json").read_text())
    assert out.logits.argmax(1).tolist() == pred["pred"]
    size = method.adaptation_size()
    assert 3 <= size <= 3 * (3 + 2)
    if "cache_size" in row:  # the result's cache-size column (engine side of issue 28)
        assert row["cache_size"] == size


def test_shipped_configs_load_with_the_authors_values():
    """configs/tda/ and configs/boostadapter/: one file per file of the authors' configs/ (15 each), each loads, runs
    its method on the dataset it is named after and names its source; spot values of kdiAAA/TDA configs/imagenet_s.yaml
    (l.7-8) and taolinzhang/BoostAdapter configs/food101.yaml (l.4-5, l.17)."""
    from pathlib import Path

    from vlprompt.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    for method in ("tda", "boostadapter"):
        files = sorted((root / method).glob("*.yaml"))
        assert len(files) == 15
        for f in files:
            cfg = load_config(f)
            assert cfg.method.name == method and cfg.data.dataset == f.stem, f
            assert f.read_text().startswith("# ") and "l." in f.read_text().split("method:")[0], f
    sketch = load_config(root / "tda" / "imagenet_sketch.yaml")
    assert (sketch.method.config.positive["alpha"], sketch.method.config.positive["beta"]) == (2.363, 7.45)
    assert sketch.data.templates == "imagenet80"
    food = load_config(root / "boostadapter" / "food101.yaml").method.config
    assert (food.positive["alpha"], food.positive["beta"], food.delta) == (1.0, 1.0, 3)
