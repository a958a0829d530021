"""BoostAdapter against an independent dict-of-lists re-implementation of taolinzhang/BoostAdapter (``runner.py``
with ``--mode boostadapter``, ``utils.py``; lines cited per step), on the random tiny tower of tests/test_tda.py
(CLIP's logit scale 100), fp32 on CPU (the authors: fp16 on a GPU); never through vlprompt's method code."""

from __future__ import annotations

import math

import pytest
import torch

from test_tda import (
    NAMES,
    TEMPLATES,
    _build,
    assert_same_caches,
    cache_logits,
    clip_scaled_tower,
    entropy_of,
    reference_clip_logits,
    reference_weights,
    stream,
)
from vlprompt.core.errors import ConfigError
from vlprompt.methods.registry import make_method_config


@pytest.fixture(scope="module")
def tower():
    return clip_scaled_tower()


def boost_update(cache, pred, item, capacity, fifo):
    """BoostAdapter's ``update_cache`` (runner.py l.52-64): a new class gets a one-entry list; otherwise append,
    then drop the oldest beyond capacity (``fifo``) or sort by loss and keep the first ``capacity``."""
    if pred not in cache:
        cache[pred] = [item]
        return
    cache[pred].append(item)
    if fifo:
        if len(cache[pred]) > capacity:
            cache[pred] = cache[pred][1:]
    else:
        cache[pred] = sorted(cache[pred], key=lambda e: e[1])[:capacity]


def reference_boost_step(backbone, views, weights, pos, neg, cfg, infer_ori_image):
    """One image of ``run_test_tda`` with ``args.mode == "boostadapter"`` (runner.py l.119-160). Returns the final
    logits and the per-image boosted copy of the positive cache; updates ``pos`` and ``neg``."""
    feat, logits, loss, prob, pred, all_f, all_l = reference_clip_logits(backbone, views, weights,
                                                                        original_only=infer_ori_image)  # l.128
    n_cls = weights.shape[1]
    prop = loss / math.log2(n_cls)  # l.129, utils.py l.21-23
    p, n = cfg["positive"], cfg["negative"]
    boosted: dict = {}
    if p["enabled"]:
        boost_update(pos, pred, [feat, loss], p["shot_capacity"], fifo=False)  # l.136
        # select_confident_samples(ori_feat, ori_output, 0.1) (l.140, utils.py l.32-36) over every view
        ent = [entropy_of(row.softmax(0)) for row in all_l]
        chosen = sorted(range(all_l.shape[0]), key=lambda i: ent[i])[: int(all_l.shape[0] * 0.1)]
        boosted = {c: list(v) for c, v in pos.items()}  # l.143 deepcopy (entries are not modified in place)
        for i in chosen:  # l.144-147
            boost_update(boosted, int(all_l[i].argmax()), [all_f[i], ent[i]], p["shot_capacity"] + cfg["delta"],
                         fifo=False)
    gate = n["entropy_threshold"]
    if n["enabled"] and gate["lower"] < prop < gate["upper"]:  # l.149-150, fifo=True by default
        boost_update(neg, pred, [feat, loss, prob], n["shot_capacity"], fifo=True)
    final = logits.clone()  # l.152
    if p["enabled"] and pos:
        final += cache_logits(feat, boosted, p["alpha"], p["beta"], n_cls)  # l.156-157
    if n["enabled"] and neg:
        m = n["mask_threshold"]
        final -= cache_logits(feat, neg, n["alpha"], n["beta"], n_cls, (m["lower"], m["upper"]))  # l.159-160
    return final, boosted


def _ids(cache):
    """``{class: [id of each entry's feature]}``: which entries a cache holds, in order."""
    return {c: [id(e[0]) for e in v] for c, v in cache.items()}


@pytest.mark.parametrize("dataset, n_views, delta", [("dtd", 20, 1), ("imagenet_a", 20, 0), ("imagenet", 1, 3)])
def test_boostadapter_matches_the_authors_caches_and_logits_after_every_image(tower, dataset, n_views, delta):
    """30 images: on a cross-dataset target the original view feeds the historical cache (infer_ori_image), on an
    ImageNet variant the 2 most confident of 20 views, on ImageNet one view (no boosting sample: TDA with a
    first-in-first-out negative cache). After every image: the historical and negative caches hold the
    reference's entries in order, the logits agree; boosting samples entered (and with delta 0 displaced
    historical entries in) the per-image copy, and full negative rows dropped their oldest entry."""
    options = {"positive": {"shot_capacity": 2}, "negative": {"shot_capacity": 2}, "delta": delta}
    method = _build(tower, "boostadapter", dataset=dataset, **options)
    cfg = make_method_config("boostadapter", options).__dict__
    infer_ori_image = dataset == "dtd"  # runner.py l.120-125: not for ImageNet and its variants
    assert method.original_only() == infer_ori_image
    weights = reference_weights(tower, NAMES, TEMPLATES)
    pos: dict = {}
    neg: dict = {}
    method.reset_adaptation()
    boosted_differs = displaced = fifo_drops = 0
    for views in stream(tower, 30, n_views, seed=2):
        neg_before = _ids(neg)
        expected, boosted = reference_boost_step(tower, views, weights, pos, neg, cfg, infer_ori_image)
        out = method.adapt_and_predict(views)
        assert out.cost == {"image_forward": n_views, "text_forward": 0, "backward": 0}
        torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-4)
        assert_same_caches(method, pos, neg)
        boosted_differs += _ids(boosted) != _ids(pos)
        displaced += any(any(i not in _ids(boosted).get(c, []) for i in v) for c, v in _ids(pos).items())
        fifo_drops += any(len(before) == 2 and _ids(neg)[c][:1] == before[1:] and _ids(neg)[c] != before
                          for c, before in neg_before.items())
    assert len(pos) >= 2 and sum(len(v) for v in neg.values()) >= 2
    if n_views > 1:
        assert boosted_differs >= 10
        if delta == 0:
            assert displaced >= 1
    else:
        assert boosted_differs == 0
    assert fifo_drops >= 1


def test_state_round_trip_and_reset(tower):
    """adaptation_state after 15 images -> a fresh method -> identical next 15 predictions (the boosting copy is
    per image: the state is the historical and negative caches only)."""
    images = stream(tower, 30, 20, seed=4)
    method = _build(tower, "boostadapter", dataset="dtd")
    method.reset_adaptation()
    for views in images[:15]:
        method.adapt_and_predict(views)
    state = method.adaptation_state()
    assert sorted({k.split(".")[0] for k in state}) == ["negative", "positive"]
    resumed = _build(tower, "boostadapter", dataset="dtd")
    resumed.load_adaptation_state(state)
    assert resumed.adaptation_size() == method.adaptation_size() > 0
    for views in images[15:]:
        assert torch.equal(method.adapt_and_predict(views).logits, resumed.adapt_and_predict(views).logits)
    method.reset_adaptation()
    assert method.adaptation_size() == 0


def test_views_and_mode_by_dataset():
    """Crops on every dataset, 64 views (runner.py l.45, utils.py l.112-133) but the original alone on ImageNet
    (utils.py l.156-158); the original view feeds the cache except on the ImageNet sets (runner.py l.120-125),
    unless method.infer_ori_image says otherwise."""
    from vlprompt.backbones.openclip import load_backbone

    backbone = load_backbone("vlprompt-test-vit")
    for dataset, kind, count, original in (("imagenet", "crop", 1, False), ("imagenet_r", "crop", 64, False),
                                           ("imagenetv2", "crop", 64, False), ("dtd", "augmix", 64, True),
                                           ("imagefolder", "augmix", 64, True)):
        method = _build(backbone, "boostadapter", dataset=dataset)
        assert method.test_time_views(kind) == "crop" and method.test_time_view_count(kind) == count, dataset
        assert method.original_only() is original, dataset
    unnamed = _build(backbone, "boostadapter")  # a stream without a dataset name (vlprompt.online): the kind told
    assert unnamed.original_only() is True
    unnamed.test_time_view_count("crop")
    assert unnamed.original_only() is False
    assert _build(backbone, "boostadapter", dataset="dtd", infer_ori_image=False).original_only() is False
    assert _build(backbone, "boostadapter", dataset="imagenet_a", infer_ori_image=True).original_only() is True


def test_too_few_views_for_the_confident_mean_is_refused(tower):
    method = _build(tower, "boostadapter", dataset="imagenet_a")
    with pytest.raises(ConfigError, match="int\\(0.1 V\\)"):
        method.adapt_and_predict(stream(tower, 1, 5)[0])


@pytest.mark.parametrize("options, match", [
    ({"delta": -1}, "delta must be >= 0"),
    ({"infer_ori_image": "yes"}, "infer_ori_image must be"),
    ({"negative": {"shot_capacity": 1.5}}, "shot_capacity must be an integer"),
])
def test_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make_method_config("boostadapter", options)


def test_defaults_are_the_imagenet_a_config():
    """configs/imagenet_a.yaml of taolinzhang/BoostAdapter (l.1-17): TDA's ImageNet caches and delta 3."""
    cfg = make_method_config("boostadapter", {})
    assert cfg.positive == {"enabled": True, "shot_capacity": 3, "alpha": 2.0, "beta": 5.0}
    assert cfg.negative["alpha"] == 0.117 and cfg.negative["entropy_threshold"] == {"lower": 0.2, "upper": 0.5}
    assert cfg.delta == 3 and cfg.infer_ori_image is None
