"""DePT (Zhang et al., CVPR 2024) as a plug-in on CoOp, CoCoOp, KgCoOp and MaPLe.

The reference below is an independent re-implementation, written for this test, of what the authors' code computes
(Koorye/DePT@d4ff416):

* the head: ``trainers/elp_maple.py`` l.18-40 ``FiLM`` (``scale * x + bias`` per channel, scale 1 / bias 0 at init)
  on the image and on the text features, and ``nn.Linear(clip_dim, n_cls)`` (``elp_coop.py`` l.27-48);
* training (``elp_coop.py`` l.57-67, l.103-133): the host's logits ``exp(logit_scale) * cos(f, t)`` on the raw
  (unnormalised) encoder outputs ``f``, ``t``; the head reads ``cat[FiLM_t(t)[y], FiLM_i(f)]`` with labels
  ``cat[y, y]``; ``loss = (1 - w) CE(host) + w CE(head)``, ``w = 0.7`` (``train.py`` l.87); KgCoOp adds its
  ``W * (1 - mean cos)`` unscaled (``elp_kgcoop.py`` l.116-129); CoCoOp's text row of each image is that image's
  own prompt (``elp_cocoop.py`` l.113-114);
* prediction (l.69-84): base classes ``(1 - w) host + w Linear(FiLM_i(f))``; new classes the host alone;
* the optimiser (``trainers/optim.py`` l.37-83, ``train.py`` l.71-73): head (``linear_probe``, ``film``) at
  ``6.5 x`` the rate, the prompts at the rate; Dassl's constant warm-up gives every group 1e-5.

The towers' reference (the authors' CLIP text / image encoders) is test_deep_prompts.py's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_deep_prompts import ref_image, ref_prompts, ref_text
from vlprompt.config import OptimConfig
from vlprompt.core.errors import ConfigError
from vlprompt.engine.checkpoint import load_prompt, save_prompt
from vlprompt.engine.optim import build_optimizer, set_lr
from vlprompt.methods.registry import build_method, get_method, make_method_config

BASE = ["circle", "red star", "big_square"]
NEW = ["blue moon", "dot"]
W = 0.7


@pytest.fixture(scope="module")
def vit(vit_backbone):
    """The session's tiny ViT backbone (tests/conftest.py), loaded once for the whole suite."""
    return vit_backbone


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


LABELS = torch.tensor([0, 2, 1, 2])


def _randomise(method, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in method.learned_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------- reference
def ref_film(x, scale, bias):
    return scale.unsqueeze(0) * x + bias.unsqueeze(0)


def ref_head(m):
    """(FiLM_i, FiLM_t, Linear) of the method's head tensors, as the authors' modules compute them."""
    h = m.dept_head
    return (lambda x: ref_film(x, h.film_img.scale, h.film_img.bias),
            lambda x: ref_film(x, h.film_text.scale, h.film_text.bias),
            lambda x: x @ h.linear.weight.t() + h.linear.bias)


def ref_similarity(model, img, txt):
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * img @ txt.t()


def ref_loss(m, model, img, txt, labels):
    film_i, film_t, linear = ref_head(m)
    logits = ref_similarity(model, img, txt)
    feats = torch.cat([film_t(txt)[labels], film_i(img)])
    return (1 - W) * F.cross_entropy(logits, labels) + W * F.cross_entropy(linear(feats), torch.cat([labels, labels]))


def ref_predict(m, model, img, txt):
    film_i, _, linear = ref_head(m)
    return (1 - W) * ref_similarity(model, img, txt) + W * linear(film_i(img))


def coop_features(m, vit, images, classnames):
    """Raw text features of CoOp's prompts ``[SOS] ctx [name] . [EOT]`` and the frozen image features."""
    ctx = m.prompt_learner.ctx
    prompts, tokenized, _ = ref_prompts(vit.model, vit.tokenizer, classnames, ctx, " ".join(["X"] * ctx.shape[0]))
    return ref_image(vit.model.visual, images, None, []), ref_text(vit.model, prompts, tokenized, [], ctx.shape[0])


def maple_features(m, vit, images, classnames):
    """MaPLe's prompted towers: V_0 = proj(P_0), V_i = proj_i(P_i) (maple.py ``MultiModalPromptLearner``)."""
    prompts, tokenized, _ = ref_prompts(vit.model, vit.tokenizer, classnames, m.text_prompt.ctx)
    txt = ref_text(vit.model, prompts, tokenized, list(m.compound_prompts_text), m.text_prompt.n_ctx)
    first = m.text_prompt.ctx @ m.proj.weight.t() + m.proj.bias
    deep = [p @ f.weight.t() + f.bias for f, p in zip(m.compound_prompt_projections, m.compound_prompts_text)]
    return ref_image(vit.model.visual, images, first, deep), txt


def _check_host(name, features, vit, images, tmp_path, **options):
    torch.manual_seed(0)
    m = build_method(name, vit, BASE, **options)
    _randomise(m)
    params = [p for _, p in m.learned_parameters()]
    m.train()
    out = m.training_loss(m.encode_images(images), LABELS)
    ours = torch.autograd.grad(out.total(), params)
    img, txt = features(m, vit, images, BASE)
    expected = ref_loss(m, vit.model, img, txt, LABELS)
    theirs = torch.autograd.grad(expected, params)
    torch.testing.assert_close(out.total(), expected, atol=1e-5, rtol=1e-5)
    for (n, _), a, b in zip(m.learned_parameters(), ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=n)
    assert {n for n, _ in m.learned_parameters() if n.startswith("dept_head.")} == {
        "dept_head.film_img.scale", "dept_head.film_img.bias", "dept_head.film_text.scale", "dept_head.film_text.bias",
        "dept_head.linear.weight", "dept_head.linear.bias"}
    m.eval()
    with torch.no_grad():  # base classes: the fused prediction
        torch.testing.assert_close(m(images), ref_predict(m, vit.model, img, txt), atol=1e-4, rtol=1e-4)
        path = save_prompt(tmp_path / "p.safetensors", m)
        new = load_prompt(path, vit, NEW, allow_new_classes=True)  # new classes: the host alone
        img_n, txt_n = features(new, vit, images, NEW)
        torch.testing.assert_close(new(images), ref_similarity(vit.model, img_n, txt_n), atol=1e-4, rtol=1e-4)
        assert not new.head_active()


# ------------------------------------------------------------------------------------------- tests
def test_dept_coop_matches_the_reference(vit, images, tmp_path):
    _check_host("dept_coop", coop_features, vit, images, tmp_path, n_ctx=2)


def test_dept_maple_matches_the_reference(vit, images, tmp_path):
    _check_host("dept_maple", maple_features, vit, images, tmp_path)


def test_dept_cocoop_reads_each_images_own_prompt(vit, images):
    torch.manual_seed(0)
    m = build_method("dept_cocoop", vit, BASE, n_ctx=2).train()
    _randomise(m)
    feats = m.encode_images(images)
    out = m.training_loss(feats, LABELS)
    pl = m.prompt_learner  # CoCoOp's loop over the images (its test checks this path against the batched one)
    shifted = pl.ctx.unsqueeze(0) + m.meta_net(F.normalize(feats, dim=-1)).unsqueeze(1)
    rows = [vit.encode_text_embeddings(pl(c), pl.eot_index)[y] for c, y in zip(shifted, LABELS)]
    film_i, film_t, linear = ref_head(m)
    head = linear(torch.cat([film_t(torch.stack(rows)), film_i(feats)]))
    torch.testing.assert_close(out.terms["head"][0] / out.terms["head"][1],
                               W * F.cross_entropy(head, torch.cat([LABELS, LABELS])), atol=1e-5, rtol=1e-5)
    host = build_method("cocoop", vit, BASE, n_ctx=2).train()
    host.load_state_dict(m.state_dict(), strict=False)
    ce = host.training_loss(feats, LABELS).terms["ce"]
    torch.testing.assert_close(out.terms["ce"][0], (1 - W) * ce[0], atol=1e-5, rtol=1e-5)
    m.eval()
    with torch.no_grad():
        fused = (1 - W) * host.eval().forward_features(feats) + W * linear(film_i(feats))
        torch.testing.assert_close(m.forward_features(feats), fused, atol=1e-5, rtol=1e-5)


def test_dept_kgcoop_keeps_the_knowledge_term_unscaled(vit, images):
    torch.manual_seed(0)
    m = build_method("dept_kgcoop", vit, BASE, w=2.0).train()
    _randomise(m)
    host = build_method("kgcoop", vit, BASE, w=2.0).train()
    host.load_state_dict(m.state_dict(), strict=False)
    feats = m.encode_images(images)
    ours, theirs = m.training_loss(feats, LABELS).terms, host.training_loss(feats, LABELS).terms
    torch.testing.assert_close(ours["kg"][0], theirs["kg"][0])
    torch.testing.assert_close(ours["ce"][0], (1 - W) * theirs["ce"][0])
    assert set(ours) == {"ce", "kg", "head"} and ours["head"][1] == 2 * len(LABELS)


def test_a_head_for_a_superset_of_the_classes_keeps_their_rows(vit, images, tmp_path):
    """ImageNet-A / -R of an ImageNet head: the authors keep the rows of the target classes (elp_coop.py l.265-287)."""
    torch.manual_seed(0)
    m = build_method("dept_coop", vit, BASE, n_ctx=2)
    _randomise(m)
    sub = load_prompt(save_prompt(tmp_path / "p.safetensors", m), vit, [BASE[2], BASE[0]], allow_new_classes=True)
    assert sub.head_active()
    torch.testing.assert_close(sub.dept_head.linear.weight, m.dept_head.linear.weight[[2, 0]])
    with torch.no_grad():
        torch.testing.assert_close(sub.eval()(images), m.eval()(images)[:, [2, 0]], atol=1e-5, rtol=1e-5)


def test_the_head_trains_at_lr_exp_after_the_warm_up(vit):
    m = build_method("dept_maple", vit, BASE)
    scales = m.lr_scales()
    names = [n for n, _ in m.learned_parameters()]
    assert {n for n in names if scales.get(n, 1.0) == 6.5} == {n for n in names if n.startswith("dept_head.")}
    opt = build_optimizer([p for _, p in m.learned_parameters()], OptimConfig(lr=0.0035),
                          [scales.get(n, 1.0) for n in names])
    set_lr(opt, 1e-5, warmup=True)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-5]
    set_lr(opt, 0.0035)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.0035, 0.0035 * 6.5])


def test_options_are_the_hosts_plus_depts():
    cfg = make_method_config("dept_kgcoop", {"w": 2.0, "lp_weight": 0.5})
    assert (cfg.w, cfg.n_ctx, cfg.ctx_init, cfg.lp_weight, cfg.lr_exp, cfg.film, cfg.test_time_fusion) == (
        2.0, 4, "a photo of a", 0.5, 6.5, True, True)
    assert get_method("dept_maple").capabilities_for().modifies_encoders
    assert get_method("dept_cocoop").capabilities_for().image_conditional
    assert get_method("dept_coop").capabilities_for(make_method_config("dept_coop", {"csc": True})).class_specific
    with pytest.raises(ConfigError, match="lp_weight"):
        make_method_config("dept_coop", {"lp_weight": 1.5})
    with pytest.raises(ConfigError, match="n_ctx"):
        make_method_config("dept_coop", {"n_ctx": 0})


def test_without_fusion_or_film_the_head_alone(vit, images):
    torch.manual_seed(0)
    m = build_method("dept_coop", vit, BASE, n_ctx=2, film=False, test_time_fusion=False).eval()
    assert m.dept_head.film_img is None and not any("film" in n for n, _ in m.learned_parameters())
    with torch.no_grad():
        f = m.encode_images(images)
        torch.testing.assert_close(m(images), m.dept_head.linear(f))
