"""Zero and MTA against independent re-implementations of their authors' code, and their test-time contract.

The references below are written for these tests from reading the authors' files (cited per step); they
compute what that code computes, in fp32 on CPU (the authors run fp16 autocast on a GPU), from the tiny
towers' own encoders (``encode_image`` / ``encode_text`` of the prompt ``"a photo of a {name}."``, the text
both repositories build by default), never through vlprompt's method code. Same random tiny weights, same
views; tolerances are stated where a comparison is not exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlprompt.methods.base import MethodContext
from vlprompt.methods.registry import build_method

NAMES = ["red thing", "green thing", "blue thing"]
MANY = ["red thing", "green thing", "blue thing", "cat", "dog", "car", "tree", "house", "boat", "bird"]
PHOTO = MethodContext(templates=("a photo of a {}.",))


# ----------------------------------------------------------------------------------------- the references
def reference_text(backbone, classnames):
    """The class features both repositories use by default: ``"a photo of a {name}."`` (zero
    clip/custom_clip.py l.113 with scripts/zero.sh l.6; MTA main.py l.339 + clip/custom_clip.py l.114, whose
    context vectors are the token embeddings of "a photo of a", i.e. the same text), encoded and normalised
    (zero custom_clip.py l.119-125, MTA custom_clip.py l.300-308)."""
    ids = backbone.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in classnames], what="the prompt")
    with torch.no_grad():
        t = backbone.encode_text(ids).float()
    return t / t.norm(dim=-1, keepdim=True)


def reference_images(backbone, views):
    """Normalised image features of the views (zero custom_clip.py l.139-142; MTA custom_clip.py l.311-315)."""
    with torch.no_grad():
        f = backbone.encode_image(views).float()
    return f / f.norm(dim=-1, keepdim=True)


def authors_zero(cos, logit_scale, gamma=0.3):
    """What FarinaMatteo/zero's ``Zero.zero`` returns (ttas/zero.py l.59-98) for the views' unscaled logits
    ``cos = z_img @ z_txt^T`` ``[V, C]`` (l.75).

    Returns ``(p_bar [C], path)``, ``path`` one of ``"unanimous"`` (no tie), ``"greedy"`` (a tie broken by
    another view, utils/tools.py l.212-217) or ``"last_resort"`` (tools.py l.218 -> ``break_sample_tie``
    l.205-209, computed here as that code does it: the mask ``logit[~ties]`` with an integer ``ties`` hits
    the classes ``C - 1 - t``, bitwise complements read as negative indices).
    """
    n_views, n_cls = cos.shape
    probs = torch.softmax(cos / (1.0 / logit_scale), dim=1)  # l.76, temp = 1 / exp(log scale) (custom_clip l.98-100)
    entropy = torch.stack([-(row * torch.log(row)).sum() for row in probs])  # base.py l.57
    by_confidence = sorted(range(n_views), key=lambda i: float(entropy[i]))  # base.py l.58: ascending
    kept = int(n_views * gamma)  # base.py l.59 (and zero.py l.92)
    eps = torch.finfo(cos.dtype).eps  # zero.py l.80
    p_bar = torch.zeros(n_cls)
    for i in by_confidence[:kept]:  # l.81: sum over the kept views of softmax(l / eps)
        p_bar += torch.softmax(cos[i] / eps, dim=0)
    top = float(p_bar.max())
    tied = [c for c in range(n_cls) if float(p_bar[c]) == top]  # l.84-88
    if len(tied) == 1:
        return p_bar, "unanimous"
    for i in by_confidence[kept:]:  # tools.py l.214-217: the first other view voting for a tied class
        vote = int(torch.argmax(cos[i]))
        if vote in tied:
            p_bar[vote] += 1  # zero.py l.95
            return p_bar, "greedy"
    logit = cos[by_confidence[kept]].clone()  # tools.py l.218: the first other view's logits
    for t in tied:
        logit[n_cls - 1 - t] = float("-inf")  # l.207: logit[~ties], ~t = -t - 1
    p_bar[int(torch.argmax(logit))] += 1
    return p_bar, "last_resort"


def authors_mta(x, t, logit_scale, lambda_y=0.2, lambda_q=4.0):
    """What MaxZanella/MTA's ``solve_mta`` returns (mta.py l.10-87) for features ``x [V, E]``, ``t [C, E]``."""
    n = x.shape[0]
    logits = logit_scale * (x @ t.T)  # l.15
    sq = ((x.unsqueeze(1) - x.unsqueeze(0)) ** 2).sum(-1)  # squared pairwise distances
    k = int(0.3 * (n - 1))  # l.27
    h = torch.stack([(0.5 * torch.sort(sq[i].sqrt()).values[1 : k + 1].pow(2).mean()).sqrt() for i in range(n)])
    p = torch.softmax(logits / 1.0, dim=1)  # l.20, l.33
    affinity = p @ p.T

    def kernel(m):  # l.4-7, one bandwidth per view
        return torch.exp(-((x - m) ** 2).sum(-1) / (2 * h**2))

    y = torch.full((n,), 1.0 / n)  # l.36
    m = x[0].clone()  # l.39
    for _ in range(5):  # l.46-84: 5 outer iterations
        dens = kernel(m)
        for _ in range(5):  # l.56-63
            new = torch.softmax((dens + lambda_q * (affinity @ y)) / lambda_y, dim=0)
            done = float((new - y).norm()) < 1e-6
            y = new
            if done:
                break
        for _ in range(5):  # l.71-80
            w = kernel(m) * y
            new = (w @ x) / w.sum()
            new = new / new.norm()
            done = float((new - m).norm()) < 1e-6
            m = new
            if done:
                break
    return logit_scale * (m @ t.T)  # l.86


# ----------------------------------------------------------------------------------------- views
def _random_views(backbone, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g) * (1 + seed % 3)


def _image_views(backbone, root, n, augmix, seed=0):
    """The test-time views of the tiny ImageFolder's test images (crops + flips: the authors' views)."""
    from vlprompt.data.registry import build_dataset
    from vlprompt.data.test_time_views import views_for

    splits = build_dataset("imagefolder", str(root))
    make = views_for(backbone, n_views=n, augmix=augmix, seed=seed)
    return [make(splits.loader(item.path), i) for i, item in enumerate(splits.test[:4])]


# ----------------------------------------------------------------------------------------- Zero
def test_zero_votes_match_the_authors_on_random_logits():
    """The vote, the confident views and the greedy tie break, on many random cosine matrices (ties are
    frequent with few classes and few kept views): equal to the authors' ``p_bar`` exactly."""
    from vlprompt.methods.zero import zero_votes

    paths = {"unanimous": 0, "greedy": 0, "last_resort": 0}
    g = torch.Generator().manual_seed(0)
    for trial in range(400):
        n_views = (8, 10, 16, 64)[trial % 4]
        n_cls = (2, 3, 5, 40)[(trial // 4) % 4]
        scale = (100.0, 1 / 0.07)[trial % 2]
        gamma = (0.3, 0.2, 0.5)[trial % 3]
        cos = 0.25 + 0.05 * torch.randn(n_views, n_cls, generator=g)
        ours = zero_votes(cos, torch.tensor(scale), gamma)
        ref, path = authors_zero(cos, torch.tensor(scale), gamma)
        paths[path] += 1
        if path == "last_resort":  # the same votes; the extra one on a tied class (test_zero_last_resort_...)
            winner = int(ours.argmax())
            votes = ours.clone()
            votes[winner] -= 1
            assert float(votes[winner]) == float(votes.max()) and int((votes == votes.max()).sum()) > 1
            assert float((ref - votes).abs().sum()) == 1.0
            continue
        torch.testing.assert_close(ours, ref, rtol=0, atol=0, msg=f"trial {trial} ({path})")
    assert paths["unanimous"] >= 50 and paths["greedy"] >= 50 and paths["last_resort"] >= 5, paths


def test_zero_last_resort_tie_break_picks_a_tied_class():
    """No other view votes for a tied class: the authors' ``break_sample_tie`` masks ``logit[~ties]`` (bitwise
    complements: classes C-1-t) and here gives an untied class its extra vote; vlprompt takes the tied class
    of largest cosine in the first other view (docs/methods.md, ``zero``)."""
    from vlprompt.methods.zero import zero_votes

    # 4 views, 4 classes, gamma 0.5: views 0 and 1 are confident, voting 0 and 3 (a tie); views 2 and 3 vote 1
    cos = torch.tensor([[0.90, 0.10, 0.10, 0.10],
                        [0.10, 0.10, 0.10, 0.85],
                        [0.30, 0.35, 0.20, 0.32],
                        [0.30, 0.36, 0.34, 0.25]])
    ours = zero_votes(cos, torch.tensor(100.0), 0.5)
    ref, path = authors_zero(cos, torch.tensor(100.0), 0.5)
    assert path == "last_resort"
    assert int(ours.argmax()) == 3 and ours.tolist() == [1.0, 0.0, 0.0, 2.0]  # view 2: 0.32 (class 3) > 0.30 (0)
    assert ref.tolist() == [1.0, 1.0, 0.0, 1.0]  # the authors' code: classes 3 and 0 masked, class 1 voted


def test_zero_matches_the_authors_on_the_tiny_towers(tiny_backbone, tiny_imagefolder):
    """The whole method on the same tiny weights and views (the ImageFolder's crop views, 16 and 64 of them, and
    random views) : vote shares equal to the authors' normalised ``p_bar`` (atol 1e-6: cosines can differ by
    an ulp, the text features being normalised twice here), same prediction, cost V / 0 / 0."""
    method = build_method("zero", tiny_backbone, MANY, context=PHOTO).eval()
    txt = reference_text(tiny_backbone, MANY)
    scale = tiny_backbone.logit_scale.float()
    batches = (_image_views(tiny_backbone, tiny_imagefolder, 16, augmix=False)
               + _image_views(tiny_backbone, tiny_imagefolder, 64, augmix=False)[:2]
               + [_random_views(tiny_backbone, 16, s) for s in range(4)])
    for views in batches:
        out = method.adapt_and_predict(views)
        p_bar, _ = authors_zero(reference_images(tiny_backbone, views) @ txt.T, scale)
        torch.testing.assert_close(out.logits.softmax(-1), p_bar / p_bar.sum(), rtol=0, atol=1e-6)
        assert int(out.logits.argmax()) == int(p_bar.argmax()) and torch.isfinite(out.logits).all()
        assert out.cost == {"image_forward": views.shape[0], "text_forward": 0, "backward": 0}


# ----------------------------------------------------------------------------------------- MTA
def test_mta_matches_the_authors_on_the_tiny_towers(tiny_backbone, tiny_imagefolder):
    """MTA's final logits on the same tiny weights and views, equal to the authors' ``solve_mta`` output within
    atol 5e-5 (logit scale 14.3; measured <= 6e-6: the reference computes the distances, the affinity product
    and the normalisations in another order, and the inner loops' 1e-6 stopping rule reads those values).
    Distances are exact Euclidean ones in both (the authors' ``torch.cdist`` switches to its matrix-product
    shortcut above 25 views; docs/methods.md, ``mta``)."""
    method = build_method("mta", tiny_backbone, MANY, context=PHOTO).eval()
    txt = reference_text(tiny_backbone, MANY)
    scale = tiny_backbone.logit_scale.float()
    batches = (_image_views(tiny_backbone, tiny_imagefolder, 16, augmix=False)
               + _image_views(tiny_backbone, tiny_imagefolder, 64, augmix=True)[:2]
               + [_random_views(tiny_backbone, 16, s) for s in range(4)])
    zero_shot = []
    for views in batches:
        out = method.adapt_and_predict(views)
        x = reference_images(tiny_backbone, views)
        ref = authors_mta(x, txt, scale)
        torch.testing.assert_close(out.logits, ref, rtol=0, atol=5e-5)
        assert out.cost == {"image_forward": views.shape[0], "text_forward": 0, "backward": 0}
        zero_shot.append(float((scale * x[0] @ txt.T - out.logits).abs().max()))
    assert max(zero_shot) > 1e-3, "the mode never moved from the original view: the test proves nothing"


def test_mta_options_reach_the_mode(vit_backbone):
    """lambda_q / lambda_y change the result (the reference with the same values agrees)."""
    views = _random_views(vit_backbone, 16, 1)
    x, txt = reference_images(vit_backbone, views), reference_text(vit_backbone, MANY)
    scale = vit_backbone.logit_scale.float()
    default = build_method("mta", vit_backbone, MANY, context=PHOTO).adapt_and_predict(views).logits
    other = build_method("mta", vit_backbone, MANY, context=PHOTO, lambda_q=0.5, lambda_y=0.05)
    logits = other.adapt_and_predict(views).logits
    torch.testing.assert_close(logits, authors_mta(x, txt, scale, lambda_y=0.05, lambda_q=0.5), rtol=0, atol=5e-5)
    assert float((logits - default).abs().max()) > 1e-4


# ----------------------------------------------------------------------------------------- episodic
def test_episodic_two_passes_and_a_shuffled_stream_give_the_same_predictions(vit_backbone, tiny_imagefolder):
    from vlprompt.data.registry import build_dataset
    from vlprompt.data.test_time_views import views_for
    from vlprompt.engine.test_time import adapt_stream

    splits = build_dataset("imagefolder", str(tiny_imagefolder))
    views = views_for(vit_backbone, n_views=8, augmix=False, seed=3)
    for name in ("zero", "mta"):
        method = build_method(name, vit_backbone, splits.classnames, context=PHOTO)
        assert method.capabilities.adaptation == "episodic" and not method.capabilities.trainable
        before = method.classifier.clone()
        first = adapt_stream(method, splits.test, splits.loader, views)
        again = adapt_stream(method, splits.test, splits.loader, views)
        shuffled = adapt_stream(method, splits.test, splits.loader, views, order_seed=5)
        assert shuffled.order != first.order
        assert torch.equal(first.logits, again.logits) and torch.equal(first.logits, shuffled.logits)
        assert torch.equal(method.classifier, before)
        assert first.cost == {"image_forward": 8.0, "text_forward": 0.0, "backward": 0.0}
        assert first.logits.shape == (len(splits.test), 3) and torch.isfinite(first.logits).all()


# ----------------------------------------------------------------------------------------- options
def test_templates_default_to_the_method_context(vit_backbone):
    from vlprompt.methods.base import template_text_features

    context = MethodContext(templates=("a photo of a {}.", "a drawing of a {}."))
    method = build_method("zero", vit_backbone, NAMES, context=context)
    assert torch.equal(method.classifier, template_text_features(vit_backbone, NAMES, context.templates))
    own = build_method("mta", vit_backbone, NAMES, context=context, templates=["a photo of a {}."])
    torch.testing.assert_close(own.classifier, reference_text(vit_backbone, NAMES), rtol=0, atol=1e-6)


def test_bad_options_and_too_few_views_are_one_clear_error(vit_backbone):
    import pytest

    from vlprompt.core.errors import ConfigError

    for name, options, match in [("zero", {"gamma": 0}, "method.gamma"), ("zero", {"gamma": 1.5}, "in \\(0, 1\\]"),
                                 ("zero", {"templates": ["no placeholder"]}, "exactly one"),
                                 ("mta", {"lambda_y": 0.0}, "method.lambda_y"), ("mta", {"max_iter": 0}, "max_iter"),
                                 ("mta", {"bandwidth_neighbours": 2.0}, "fraction"),
                                 ("mta", {"templates": []}, "non-empty")]:
        with pytest.raises(ConfigError, match=match):
            build_method(name, vit_backbone, NAMES, **options)
    with pytest.raises(ConfigError, match="0 confident views"):
        build_method("zero", vit_backbone, NAMES).adapt_and_predict(_random_views(vit_backbone, 3, 0))
    with pytest.raises(ConfigError, match="give more test-time views"):
        build_method("mta", vit_backbone, NAMES).adapt_and_predict(_random_views(vit_backbone, 4, 0))


# ----------------------------------------------------------------------------------------- starting prompts
def _trained(name, backbone, classnames, **options):
    torch.manual_seed(0)
    source = build_method(name, backbone, classnames, **options)
    with torch.no_grad():
        for _, p in source.learned_parameters():
            p.add_(0.5 * torch.randn_like(p))
    return source.eval()


def test_start_from_a_coop_prompt_uses_its_text_features(vit_backbone):
    """MTA + CoOp (MTA main.py l.114-120 loads a CoOp context into the prompt) and Zero + CoOp: the source's
    text features, computed once; the result is the reference's with those features."""
    source = _trained("coop", vit_backbone, MANY, n_ctx=2)
    with torch.no_grad():
        txt = F.normalize(source.text_features().float(), dim=-1)
    views = _random_views(vit_backbone, 16, 2)
    x, scale = reference_images(vit_backbone, views), vit_backbone.logit_scale.float()
    zero = build_method("zero", vit_backbone, MANY, context=PHOTO)
    zero.start_from(source)
    out = zero.adapt_and_predict(views)
    p_bar, _ = authors_zero(x @ txt.T, scale)
    torch.testing.assert_close(out.logits.softmax(-1), p_bar / p_bar.sum(), rtol=0, atol=1e-6)
    assert out.cost["text_forward"] == 0
    mta = build_method("mta", vit_backbone, MANY, context=PHOTO)
    mta.start_from(source)
    torch.testing.assert_close(mta.adapt_and_predict(views).logits, authors_mta(x, txt, scale), rtol=0, atol=5e-5)
    assert not torch.allclose(txt, reference_text(vit_backbone, MANY), atol=1e-3)  # the start changed something


def test_start_from_a_cocoop_prompt_conditions_on_the_original_view(vit_backbone):
    """CoCoOp is image-conditional: its text features for each image's original view (one text pass per image)."""
    source = _trained("cocoop", vit_backbone, MANY, n_ctx=2)
    mta = build_method("mta", vit_backbone, MANY, context=PHOTO)
    mta.start_from(source)
    assert not any(n.startswith("_conditional") for n, _ in mta.named_parameters())  # not this method's state
    for seed in range(2):
        views = _random_views(vit_backbone, 16, seed)
        x, scale = reference_images(vit_backbone, views), vit_backbone.logit_scale.float()
        with torch.no_grad():
            txt = F.normalize(source.text_features_for(x[:1])[0].float(), dim=-1)
        out = mta.adapt_and_predict(views)
        torch.testing.assert_close(out.logits, authors_mta(x, txt, scale), rtol=0, atol=5e-5)
        assert out.cost == {"image_forward": 16, "text_forward": 1, "backward": 0}


def test_start_from_a_maple_prompt_encodes_the_views_with_its_prompted_tower(vit_backbone):
    """Zero + MaPLe (FarinaMatteo/zero clip/maple.py) and MTA + MaPLe: MaPLe's prompts change the image tower, so
    the views are encoded by the MaPLe source and its text features are the classifier; the result is the
    reference's on those features, and differs from the frozen tower's."""
    source = _trained("maple", vit_backbone, MANY)
    views = _random_views(vit_backbone, 16, 3)
    with torch.no_grad():
        txt = F.normalize(source.text_features().float(), dim=-1)
        x = F.normalize(source.encode_images(views).float(), dim=-1)
    scale = vit_backbone.logit_scale.float()
    zero = build_method("zero", vit_backbone, MANY, context=PHOTO)
    zero.start_from(source)
    out = zero.adapt_and_predict(views)
    p_bar, _ = authors_zero(x @ txt.T, scale)
    torch.testing.assert_close(out.logits.softmax(-1), p_bar / p_bar.sum(), rtol=0, atol=1e-6)
    mta = build_method("mta", vit_backbone, MANY, context=PHOTO)
    mta.start_from(source)
    torch.testing.assert_close(mta.adapt_and_predict(views).logits, authors_mta(x, txt, scale), rtol=0, atol=5e-5)
    frozen = reference_images(vit_backbone, views)
    assert not torch.allclose(x, frozen, atol=1e-3)  # the prompted tower is not the frozen one


def test_start_from_refuses_other_sources(vit_backbone):
    import pytest

    zero = build_method("zero", vit_backbone, NAMES)
    with pytest.raises(ValueError, match="cannot start from a 'clip_adapter' prompt"):
        zero.start_from(build_method("clip_adapter", vit_backbone, NAMES))
    with pytest.raises(ValueError, match="other class names"):
        zero.start_from(build_method("coop", vit_backbone, MANY, n_ctx=2))
