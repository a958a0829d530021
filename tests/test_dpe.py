"""DPE against an independent re-implementation of zhangce01/DPE-CLIP's test loop, and its online contract.

The reference below is written for these tests from reading the authors' ``main_dpe.py`` (``run_test_dpe``,
lines 197-303, and the helpers it calls) and ``utils.py`` (``get_clip_logits`` l.132-163, ``avg_entropy`` l.55-60,
``get_entropy`` l.46-48) at DPE-CLIP@fecae5a, and info-nce-pytorch 0.1.4's ``info_nce`` (the ``InfoNCE`` the
authors import, main_dpe.py l.12, 36-38). It keeps the authors' layout (class weights ``[E, n_cls]`` as columns,
the cache a dict of Python lists sorted with ``sorted``, a one-hot value matrix, ``torch.optim.AdamW`` on zero
residual parameters) and never calls vlprompt's method code. It runs in fp32 on the CPU (the authors: fp16
autocast on a GPU), on the tiny ViT tower's own encoders, the same views and the same stream.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from test_tda import reference_weights  # DPE's clip_classifier (utils.py l.89-128) is TDA's (utils.py l.44-61)
from vlprompt.core.errors import ConfigError, DataError
from vlprompt.methods.base import MethodContext
from vlprompt.methods.registry import build_method

NAMES = ["red thing", "green thing", "blue thing", "cat", "dog"]
CONTEXT = MethodContext(templates=("a photo of a {}.", "a drawing of a {}."))
N_IMAGES = 24


# ----------------------------------------------------------------------------------------- the reference
def ref_entropy_of_average(logits):
    """The entropy of the rows' averaged softmax probabilities (what ``avg_entropy`` computes in log space)."""
    probs = torch.softmax(logits, dim=-1).mean(dim=0)
    return -(probs * torch.log(probs)).sum()


def ref_get_clip_logits(feats, weights, scale):
    """``get_clip_logits`` (utils.py l.132-163) on already-normalised view features ``[V, E]``: the features,
    logits ``[1, n_cls]``, entropy and pseudo-label; with several views, the 10% of lowest entropy (l.148-157)."""
    logits = scale * feats @ weights
    if feats.shape[0] == 1:
        return feats, logits, ref_entropy_of_average(logits), int(torch.argmax(logits[0]))
    per_view = [float(-(torch.softmax(row, 0) * torch.log_softmax(row, 0)).sum().detach()) for row in logits]
    ranked = sorted(range(feats.shape[0]), key=lambda i: per_view[i])
    chosen = ranked[: max(1, int(feats.shape[0] * 0.1))]  # the authors' int(0.1 V) (>= 1 for V >= 10, as here)
    out = logits[chosen]
    mean_logits = out.mean(dim=0, keepdim=True)
    return feats[chosen].mean(dim=0, keepdim=True), mean_logits, ref_entropy_of_average(out), int(
        torch.argmax(mean_logits[0]))


def ref_info_nce(query, positive, temperature=0.01):
    """info-nce-pytorch 0.1.4 ``info_nce`` without negative keys: rows normalised, every query against every
    positive, the matching one (the diagonal) as the target class of a cross-entropy."""
    q = query / query.norm(dim=1, keepdim=True)
    p = positive / positive.norm(dim=1, keepdim=True)
    sims = (q @ p.T) / temperature
    return torch.stack([-torch.log_softmax(sims[i], 0)[i] for i in range(q.shape[0])]).mean()


def authors_dpe(stream, weights, scale, positive, learning_rate, all_views=False):
    """``run_test_dpe`` (main_dpe.py l.197-303) over ``stream`` (a list of view features ``[V, E]``), returning
    after every image its final logits, optimised residuals and the state (prototypes ``[n_cls, E]``, the
    update counter, the cache per class as (feature, entropy) lists), and what the cache update did."""
    n_cls = weights.shape[1]
    max_entropy = math.log2(n_cls)  # get_entropy, utils.py l.46-48
    cache: dict[int, list] = {}
    global_w = weights.clone()
    num_avg = 0
    steps, events = [], {"append": 0, "replace": 0, "reject": 0, "new": 0}
    for feats in stream:
        local = global_w.clone().detach()  # l.217
        res_t = torch.nn.Parameter(torch.zeros_like(local))  # TextResidue (l.159-168)
        feat_x, clip_logits, entropy, pred = ref_get_clip_logits(feats, F.normalize(local + res_t, dim=0), scale)
        if positive["enabled"]:
            ent = float(entropy.detach() / max_entropy)  # l.225
            item = [feat_x.detach(), ent]
            if pred not in cache:  # update_cache, l.40-52
                cache[pred] = [item]
                events["new"] += 1
            else:
                if len(cache[pred]) < positive["shot_capacity"]:
                    cache[pred].append(item)
                    events["append"] += 1
                elif ent < cache[pred][-1][1]:
                    cache[pred][-1] = item
                    events["replace"] += 1
                else:
                    events["reject"] += 1
                cache[pred] = sorted(cache[pred], key=lambda it: it[1])
            classes = sorted(cache)  # cache_key_value, l.133-152
            keys = torch.cat([sum(it[0] / len(cache[c]) for it in cache[c]) for c in classes], dim=0).T  # [E, K]
            values = F.one_hot(torch.tensor(classes), num_classes=n_cls).float()  # [K, n_cls]
            res_v = torch.nn.Parameter(torch.zeros_like(keys))  # PositiveCacheResidue (l.173-182)
        new_w = F.normalize(local + res_t, dim=0)  # l.233
        final = clip_logits.clone()
        if positive["enabled"]:
            new_keys = F.normalize(keys + res_v, dim=0)
            final = final + positive["alpha"] * torch.exp(
                -1 * (positive["beta"] - positive["beta"] * feat_x @ new_keys)) @ values  # l.154-157
            loss = ref_entropy_of_average(final) + ref_info_nce(new_keys.T, new_w[:, classes].T) * learning_rate[
                "align"]  # l.238-241
            groups = [{"params": [res_t], "lr": learning_rate["text"], "eps": 1e-3, "weight_decay": 1e-1},
                      {"params": [res_v], "lr": learning_rate["image"], "eps": 1e-3, "weight_decay": 1e-1}]
        else:
            loss = ref_entropy_of_average(final)
            groups = [{"params": [res_t], "lr": learning_rate["text"], "eps": 1e-3, "weight_decay": 1e-1}]
        opt = torch.optim.AdamW(groups)  # l.247-262
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # l.268-293
            new_w = F.normalize(local + res_t, dim=0)
            if all_views:
                feat_f, logits_f, _, _ = ref_get_clip_logits(feats, new_w, scale)
            else:
                feat_f, logits_f, _, _ = ref_get_clip_logits(feats[:1], new_w, scale)
            final = logits_f.clone()
            if positive["enabled"]:
                new_keys = F.normalize(keys + res_v, dim=0)
                final = final + positive["alpha"] * torch.exp(
                    -1 * (positive["beta"] - positive["beta"] * feat_f @ new_keys)) @ values
            if float(ref_entropy_of_average(final) / max_entropy) < 0.1:
                num_avg += 1
                global_w = global_w * (num_avg / (num_avg + 1)) + new_w * (1 / (num_avg + 1))
        steps.append({"logits": final[0].clone(), "res_text": res_t.detach().T.clone(),
                      "res_image": res_v.detach().T.clone() if positive["enabled"] else None,
                      "text": global_w.T.clone(), "num_avg": num_avg,
                      "cache": {c: [(it[0][0].clone(), it[1]) for it in cache[c]] for c in sorted(cache)}})
    return steps, events


# ----------------------------------------------------------------------------------------- the stream
@pytest.fixture(scope="module")
def spread_backbone():
    """The tiny ViT, its image features spread over the sphere: the random tiny image tower maps every image to
    nearly one direction (cosines > 0.93), so that every image of a stream would take the same class; its output
    plus a fixed random linear map of the 4x4 mean-pooled pixels gives a stream of several classes (the method and
    the reference both call this ``encode_image``)."""
    from vlprompt.backbones.build import build_backbone
    from vlprompt.config import BackboneConfig

    backbone = build_backbone(BackboneConfig("vlprompt-test-vit", None), shared=False)
    tower = backbone.encode_image
    with torch.no_grad():
        dim = tower(torch.zeros(1, 3, backbone.image_size, backbone.image_size)).shape[-1]
    proj = torch.randn(3 * 16, dim, generator=torch.Generator().manual_seed(7))

    def encode_image(images):
        return tower(images) + 2.0 * F.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ proj

    backbone.encode_image = encode_image
    return backbone


def _stream(backbone, n_views, seed=0):
    """``N_IMAGES`` test images as view batches ``[V, 3, S, S]``: views of one image share its base image."""
    g = torch.Generator().manual_seed(seed)
    size = backbone.image_size
    out = []
    for _ in range(N_IMAGES):
        base = torch.randn(1, 3, size, size, generator=g)
        out.append(base + 0.5 * torch.randn(n_views, 3, size, size, generator=g) * torch.arange(n_views).clamp(
            max=1).view(-1, 1, 1, 1))  # views[0] is the base image itself
    return out


def _features(backbone, views):
    with torch.no_grad():
        f = backbone.encode_image(views).float()
    return f / f.norm(dim=-1, keepdim=True)


def _flat_cache(cache):
    """The reference cache in the order of ``adaptation_state``: class order, ascending entropy in a class."""
    feats = [f for c in cache for f, _ in cache[c]]
    ents = [e for c in cache for _, e in cache[c]]
    classes = [c for c in cache for _ in cache[c]]
    return torch.stack(feats), torch.tensor(ents), torch.tensor(classes)


CASES = {
    # AugMix-like views (20: the 2 most confident kept)
    "views": dict(n_views=20, positive={"shot_capacity": 2, "alpha": 6.0, "beta": 8.0},
                  learning_rate={"text": 0.02, "image": 0.03, "align": 0.5}),
    # the original image alone (the cross-dataset targets), capacity 3
    "single": dict(n_views=1, positive={"shot_capacity": 3, "alpha": 3.0, "beta": 8.0},
                   learning_rate={"text": 0.01, "image": 0.02, "align": 2.5}),
    # the ImageNet-A rule: the final prediction from the confident views again (main_dpe.py l.270-271)
    "all_views": dict(n_views=20, positive={"shot_capacity": 3, "alpha": 3.0, "beta": 8.0},
                      learning_rate={"text": 0.02, "image": 0.03, "align": 0.2}, predict_on_all_views=True),
    # no cache: only the textual residual, the entropy of the CLIP logits
    "no_cache": dict(n_views=20, positive={"enabled": False}, learning_rate={"text": 0.05}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_authors_loop_after_every_image(case, spread_backbone):
    """After every image of a 24-image stream (5 classes): the same logits, optimised residuals, textual
    prototypes, update counter and cache (features, entropies, classes, in queue order) as the reference, within
    atol 2e-5 (fp32; the reference computes entropies and prototype means in another order). The stream exercises
    every branch it should: queue appends, replacements, rejections, prototype updates and images without one.
    Residuals within atol 1e-4 (one AdamW step from zero amplifies gradient rounding, see below)."""
    opts = dict(CASES[case])
    n_views = opts.pop("n_views")
    method = build_method("dpe", spread_backbone, NAMES, context=CONTEXT, **opts).eval()
    cfg = method.config
    weights = reference_weights(spread_backbone, NAMES, CONTEXT.templates)
    scale = float(spread_backbone.logit_scale)
    stream = _stream(spread_backbone, n_views)
    ref, events = authors_dpe([_features(spread_backbone, v) for v in stream], weights, scale, cfg.positive,
                              cfg.learning_rate, all_views=cfg.predict_on_all_views)
    method.reset_adaptation()
    tol = dict(rtol=1e-4, atol=2e-5)
    # one AdamW step from zero is -lr g / (|g| + 1e-3): where |g| ~ 1e-3 a gradient error of 1e-6 (fp32, another
    # order of operations) moves the residual by ~ lr / 4e-3 * 1e-6; measured <= 2.3e-5 for residuals of ~2e-2
    res_tol = dict(rtol=1e-3, atol=1e-4)
    for i, (views, want) in enumerate(zip(stream, ref)):
        out = method.adapt_and_predict(views)
        msg = f"{case}, image {i}"
        torch.testing.assert_close(out.logits, want["logits"], **tol, msg=msg)
        torch.testing.assert_close(method.last_residuals["text"], want["res_text"], **res_tol, msg=msg)
        state = method.adaptation_state()
        torch.testing.assert_close(state["text_prototypes"], want["text"], **tol, msg=msg)
        assert int(state["num_avg"]) == want["num_avg"], msg
        assert out.cost == {"image_forward": n_views, "text_forward": 0, "backward": 1}
        if not cfg.positive["enabled"]:
            assert state["cache_features"].shape[0] == 0 and method.adaptation_size() == 0
            continue
        torch.testing.assert_close(method.last_residuals["image"], want["res_image"], **res_tol, msg=msg)
        feats, ents, classes = _flat_cache(want["cache"])
        assert state["cache_classes"].tolist() == classes.tolist(), msg
        torch.testing.assert_close(state["cache_entropy"], ents.float(), rtol=0, atol=1e-6, msg=msg)
        torch.testing.assert_close(state["cache_features"], feats, **tol, msg=msg)
        assert method.adaptation_size() == len(classes)
    assert 0 < ref[-1]["num_avg"] < N_IMAGES, "the prototypes should evolve after some images, not all"
    if cfg.positive["enabled"]:
        assert events["replace"] > 0 and events["reject"] > 0 and events["append"] + events["new"] > 0, events


def test_queues_follow_update_cache_with_ties(vit_backbone):
    """The per-class priority queue against ``update_cache`` (main_dpe.py l.40-52) on 300 insertions whose
    entropies take 4 values (ties everywhere: Python's stable ``sorted`` keeps an entry after the earlier ones of
    equal entropy, and a full queue takes a newcomer only if strictly below its last entry)."""
    method = build_method("dpe", vit_backbone, NAMES, positive={"shot_capacity": 3})
    method.reset_adaptation()
    g = torch.Generator().manual_seed(0)
    cache: dict[int, list] = {}
    for step in range(300):
        label = int(torch.randint(len(NAMES), (1,), generator=g))
        ent = float(torch.tensor([0.1, 0.2, 0.3, 0.4])[torch.randint(4, (1,), generator=g)])
        feature = torch.full((method.classifier.shape[1],), float(step))  # the entry's identity
        method._cache.insert(label, feature, ent)  # DPE's queue (TDA's cache, entropy policy)
        queue = cache.setdefault(label, [])
        if len(queue) < 3:
            queue.append((step, ent))
        elif ent < queue[-1][1]:
            queue[-1] = (step, ent)
        cache[label] = sorted(queue, key=lambda it: it[1])
    state = method.adaptation_state()
    want = [(c, s, e) for c in sorted(cache) for s, e in cache[c]]
    got = list(zip(state["cache_classes"].tolist(), state["cache_features"][:, 0].long().tolist(),
                   state["cache_entropy"].tolist()))
    assert [(c, s) for c, s, _ in got] == [(c, s) for c, s, _ in want]
    assert [e for *_, e in got] == pytest.approx([e for *_, e in want])


def test_residual_step_is_adamw_from_zero():
    """The closed form of one fresh AdamW step from zero (eps 1e-3, weight decay 0.1) is torch's AdamW."""
    from vlprompt.methods.dpe.model import adamw_first_step

    g = torch.Generator().manual_seed(0)
    grad = torch.randn(7, 5, generator=g) * torch.logspace(-5, 0, 5)
    p = torch.nn.Parameter(torch.zeros(7, 5))
    opt = torch.optim.AdamW([p], lr=0.03, eps=1e-3, weight_decay=0.1)
    p.grad = grad.clone()
    opt.step()
    torch.testing.assert_close(adamw_first_step(grad, 0.03), p.detach(), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------- the online contract
def test_state_round_trip_resumes_the_stream_exactly(spread_backbone):
    """Half a stream, its ``adaptation_state`` loaded into a freshly built method, the rest of the stream: the same
    logits (bit for bit) and the same final state as one uninterrupted stream; a reset empties the state; states
    of another shape are refused."""
    opts = CASES["views"]
    stream = _stream(spread_backbone, 12, seed=3)

    def build():
        return build_method("dpe", spread_backbone, NAMES, context=CONTEXT, positive=opts["positive"],
                            learning_rate=opts["learning_rate"]).eval()

    whole = build()
    whole.reset_adaptation()
    expected = [whole.adapt_and_predict(v).logits for v in stream]
    first = build()
    first.reset_adaptation()
    for v in stream[:N_IMAGES // 2]:
        first.adapt_and_predict(v)
    saved = {k: t.clone() for k, t in first.adaptation_state().items()}
    assert first.adaptation_size() > 0 and int(saved["num_avg"]) > 0
    resumed = build()
    resumed.load_adaptation_state(saved)
    for key, t in resumed.adaptation_state().items():
        assert torch.equal(t, saved[key]), key
    rest = [resumed.adapt_and_predict(v).logits for v in stream[N_IMAGES // 2:]]
    for i, (got, want) in enumerate(zip(rest, expected[N_IMAGES // 2:])):
        assert torch.equal(got, want), f"image {N_IMAGES // 2 + i}"
    for key, t in resumed.adaptation_state().items():
        assert torch.equal(t, whole.adaptation_state()[key]), key
    resumed.reset_adaptation()
    assert resumed.adaptation_size() == 0 and int(resumed.adaptation_state()["num_avg"]) == 0
    torch.testing.assert_close(resumed.adaptation_state()["text_prototypes"], resumed.classifier)
    with pytest.raises(ValueError, match="DPE state"):
        resumed.load_adaptation_state({**saved, "text_prototypes": saved["text_prototypes"][:2]})
    with pytest.raises(ValueError, match="shot_capacity"):
        resumed.load_adaptation_state({**saved, "cache_classes": torch.zeros_like(saved["cache_classes"])})
    with pytest.raises(ValueError, match="tensors"):
        resumed.load_adaptation_state({"cache": torch.zeros(1)})


def test_views_and_capabilities(vit_backbone):
    """Online, training-free, unsupervised; 63 AugMix views + the original on the ImageNet sets (registered kind
    "crop"), the original alone elsewhere (utils.py l.201-215)."""
    method = build_method("dpe", vit_backbone, NAMES)
    caps = method.capabilities
    assert (caps.adaptation, caps.training, caps.supervision) == ("online", "none", "none")
    assert method.test_time_view_count("crop") == 64 and method.test_time_view_count("augmix") == 1
    assert method.test_time_views("crop") == "augmix"


@pytest.mark.parametrize(("options", "message"), [
    ({"positive": {"shot_capcity": 3}}, "Did you mean: shot_capacity"),
    ({"positive": {"shot_capacity": 0}}, "shot_capacity must be >= 1"),
    ({"positive": {"enabled": "yes"}}, "enabled must be true or false"),
    ({"positive": [3, 6.0]}, "must be a mapping"),
    ({"learning_rate": {"text": -1e-3}}, "learning_rate.text must be >= 0"),
    ({"learning_rate": {"align": "high"}}, "align must be a number"),
    ({"predict_on_all_views": 1}, "predict_on_all_views must be true or false"),
    ({"templates": ["no placeholder"]}, "exactly one"),
    ({"cupl_prompts": 3}, "cupl_prompts"),
    ({"alpha": 3.0}, "unknown option 'method.alpha'"),
])
def test_config_errors(options, message):
    from vlprompt.methods.registry import make_method_config

    with pytest.raises(ConfigError, match=message):
        make_method_config("dpe", options)


def test_a_partial_section_keeps_the_other_defaults():
    """``configs/imagenet.yaml``'s values for the keys not given."""
    from vlprompt.methods.registry import make_method_config

    cfg = make_method_config("dpe", {"positive": {"alpha": 3.0}, "learning_rate": {"align": 0.0}})
    assert cfg.positive == {"enabled": True, "shot_capacity": 3, "alpha": 3.0, "beta": 5.0}
    assert cfg.learning_rate == {"text": 0.0006, "image": 0.0006, "align": 0.0}


def test_cupl_sentences_join_the_prompt_ensemble(vit_backbone, tmp_path):
    """With a CuPL file, a class's prototype is the normalised mean over its template texts and its sentences
    (utils.py l.89-125); a class missing from the file is one DataError."""
    cupl = {n: [f"A {n} looks like a {n}.", f"The {n} is small."] for n in NAMES}
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps(cupl))
    method = build_method("dpe", vit_backbone, NAMES, context=CONTEXT, cupl_prompts=str(path), class_chunk=3)
    texts = [[t.format(n) for t in CONTEXT.templates] + cupl[n] for n in NAMES]
    with torch.no_grad():
        want = torch.stack([F.normalize(F.normalize(vit_backbone.encode_text(
            vit_backbone.tokenize(t, what="x")).float(), dim=-1).mean(0), dim=0) for t in texts])
    torch.testing.assert_close(method.classifier, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(method.adaptation_state()["text_prototypes"], want, rtol=0, atol=1e-6)
    path.write_text(json.dumps({NAMES[0]: ["only one class"]}))
    with pytest.raises(DataError, match="no sentences for class 'green thing'"):
        build_method("dpe", vit_backbone, NAMES, cupl_prompts=str(path))
    with pytest.raises(DataError, match="does not exist"):
        build_method("dpe", vit_backbone, NAMES, cupl_prompts=str(tmp_path / "missing.json"))


def test_start_from_a_coop_prompt_and_refuse_cocoop(vit_backbone):
    """The textual prototypes start from a CoOp prompt's text features (the authors' --coop); CoCoOp is refused."""
    coop = build_method("coop", vit_backbone, NAMES, n_ctx=2).eval()
    method = build_method("dpe", vit_backbone, NAMES)
    method.start_from(coop)
    with torch.no_grad():
        want = F.normalize(coop.text_features().float(), dim=-1)
    torch.testing.assert_close(method.adaptation_state()["text_prototypes"], want)
    cocoop = build_method("cocoop", vit_backbone, NAMES, n_ctx=2).eval()
    with pytest.raises(ValueError, match="depend on the image"):
        method.start_from(cocoop)


# ----------------------------------------------------------------------------------------- the protocol
@pytest.mark.slow
def test_runs_through_the_tta_protocol(tiny_imagefolder, tmp_path):
    """``vlprompt.tasks.test_time.tta`` on the tiny ImageFolder (18 images): the default views for a dataset that is
    not an ImageNet set (the original alone), one backward per image, no text pass, cost and accuracy reported;
    the same run twice gives the same predictions; the method run by ``run_target`` ends with a non-empty cache of
    at most shot_capacity features per class."""
    from vlprompt.config import config_from_dict
    from vlprompt.tasks.test_time import run_target, tta

    cfg = config_from_dict({
        "method": {"name": "dpe", "positive": {"alpha": 6.0, "beta": 5.0}},
        "backbone": {"model": "vlprompt-test-vit", "pretrained": None},
        "data": {"dataset": "imagefolder", "root": str(tiny_imagefolder), "num_workers": 0},
        "train": {"device": "cpu", "progress": False, "tensorboard": False}})
    runs = [tta(cfg, "imagefolder", tmp_path / name, order_seed=5) for name in ("a", "b")]
    row = runs[0]["per_target"]["imagefolder"]
    assert runs[0]["adaptation"] == "online" and runs[0]["method"] == "dpe"
    assert row["n"] == 18 and row["n_views"] == 1 and row["order_seed"] == 5
    assert row["passes"] == {"image_forward": 1.0, "text_forward": 0.0, "backward": 1.0}
    assert row["seconds_per_image"] > 0 and 0 <= row["accuracy"] <= 100
    preds = [json.loads((tmp_path / n / "tta_targets" / "imagefolder.predictions.json").read_text()) for n in "ab"]
    assert preds[0] == preds[1]
    row2, _, method = run_target(cfg, "imagefolder", _backbone(cfg), prompt=None, n_views=4, seed=1, order_seed=5,
                                 progress=False)
    assert row2["passes"] == {"image_forward": 4.0, "text_forward": 0.0, "backward": 1.0} and row2["n_views"] == 4
    assert 1 <= method.adaptation_size() <= 3 * 3


def _backbone(cfg):
    from vlprompt.backbones.build import build_backbone

    return build_backbone(cfg.backbone, shared=False)


def test_shipped_configs_load_with_the_authors_values():
    """One config per file of DPE-CLIP's configs/, each loading through vlprompt's loader, its header naming its
    source; a few values as the authors' files give them (configs/imagenet_a.yaml, configs/imagenet_s.yaml,
    configs/eurosat.yaml, main_dpe.py l.270 for ImageNet-A's final prediction)."""
    from pathlib import Path

    from vlprompt.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "dpe"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} == {"caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet",
                                       "imagenet_a", "imagenet_r", "imagenet_sketch", "imagenetv2", "oxford_flowers",
                                       "oxford_pets", "stanford_cars", "sun397", "ucf101"}
    for f in files:
        cfg = load_config(f)
        assert cfg.method.name == "dpe" and cfg.data.dataset == f.stem
        assert cfg.method.config.predict_on_all_views == (f.stem == "imagenet_a")
        assert "zhangce01/DPE-CLIP@" in f.read_text().splitlines()[1]
    a = load_config(root / "imagenet_a.yaml").method.config
    assert (a.positive["alpha"], a.positive["beta"], a.learning_rate["text"], a.learning_rate["align"]) == (
        6.0, 5.0, 0.0003, 2.5)
    s = load_config(root / "imagenet_sketch.yaml")
    assert (s.method.config.positive["alpha"], s.method.config.positive["beta"], s.data.templates) == (
        7.0, 7.45, "imagenet80")
    e = load_config(root / "eurosat.yaml").method.config
    assert (e.positive["beta"], e.learning_rate["image"], e.templates) == (
        8.0, 0.00005, ["a centered satellite photo of {}."])
