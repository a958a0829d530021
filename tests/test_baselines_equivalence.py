"""KgCoOp, ProGrad, CLIP-Adapter, Tip-Adapter(-F), linear probe and CLIP-LoRA against independent
re-implementations of what the authors' code computes (file and lines cited at each reference), on the
tiny random towers. The references use open_clip's own forward (``model.encode_text`` / ``encode_image``
or the raw transformer), not vlprompt's prompt-encoding path.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlprompt.engine.loss_step import backward_terms
from vlprompt.methods.base import MethodContext
from vlprompt.methods.registry import build_method

NAMES = ["red car", "green apple", "blue whale", "tabby cat"]
TEMPLATE = "a photo of a {}, a type of thing."
CONTEXT = MethodContext(templates=[TEMPLATE])


def _images(backbone, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g)


def _ref_template_features(backbone, template=TEMPLATE, names=NAMES):
    """``clip_model.encode_text(clip.tokenize(template.format(c)))``, normalised (e.g. kgcoop.py l.135-143)."""
    ids = backbone.tokenize([template.format(n) for n in names])
    return F.normalize(backbone.model.encode_text(ids).float(), dim=-1)


def _ref_prompt_features(backbone, ctx, names=NAMES):
    """CoOp-style TextEncoder on [SOS][ctx][name].[EOT] at full context length (kgcoop.py l.60-76, 160-190)."""
    m = backbone.model
    n_ctx = ctx.shape[0]
    ids = backbone.tokenize([" ".join(["X"] * n_ctx) + " " + n + "." for n in names])
    emb = m.token_embedding(ids).float()
    x = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(names), -1, -1), emb[:, 1 + n_ctx:]], dim=1)
    x = x + m.positional_embedding
    x = m.transformer(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    x = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ m.text_projection
    return x


def _scale(backbone):
    return backbone.model.logit_scale.exp()


# ------------------------------------------------------------------------------------------------ KgCoOp
def test_kgcoop_loss_and_gradient_equal_the_reference(tiny_backbone):
    torch.manual_seed(0)
    m = build_method("kgcoop", tiny_backbone, NAMES, context=CONTEXT, ctx_init=None, n_ctx=4, w=8.0)
    with torch.no_grad():
        m.ctx.normal_(std=0.5)
    feats = tiny_backbone.encode_image(_images(tiny_backbone, 6))
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    out = m.training_loss(feats, labels)
    ours = out.total()
    (g_ours,) = torch.autograd.grad(ours, [m.ctx])

    ctx = m.ctx.detach().clone().requires_grad_(True)
    text = F.normalize(_ref_prompt_features(tiny_backbone, ctx), dim=-1)  # kgcoop.py l.226-233
    img = F.normalize(feats.float(), dim=-1)
    logits = _scale(tiny_backbone) * img @ text.t()  # l.235-236
    old = _ref_template_features(tiny_backbone)
    score = 1.0 - torch.nn.CosineSimilarity(dim=1, eps=1e-07)(text, old).mean()  # l.238-241
    ref = F.cross_entropy(logits, labels) + 8.0 * score  # l.309-310
    (g_ref,) = torch.autograd.grad(ref, [ctx])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)
    assert set(out.terms) == {"ce", "kg"}


# ------------------------------------------------------------------------------------------------ ProGrad
def test_prograd_terms_and_projected_gradient_equal_the_reference(tiny_backbone):
    torch.manual_seed(1)
    m = build_method("prograd", tiny_backbone, NAMES, context=CONTEXT, n_ctx=4, lambda_value=0.8, temperature=2.0)
    with torch.no_grad():
        m.ctx.normal_(std=0.5)
    feats = tiny_backbone.encode_image(_images(tiny_backbone, 5, seed=2))
    labels = torch.tensor([3, 1, 2, 0, 1])
    out = m.training_loss(feats, labels)
    params = [p for _, p in m.learned_parameters()]
    backward_terms(m, out, params)
    g_ours = m.ctx.grad.clone()

    ctx = m.ctx.detach().clone().requires_grad_(True)
    img = F.normalize(feats.float(), dim=-1)
    stu = _scale(tiny_backbone) * img @ F.normalize(_ref_prompt_features(tiny_backbone, ctx), dim=-1).t()
    tea = _scale(tiny_backbone) * img @ _ref_template_features(tiny_backbone).t()  # prograd.py l.240-249
    t = 2.0
    xe = F.cross_entropy(stu, labels)  # prograd.py l.285-293
    kl = (-F.softmax(tea / t, dim=-1) * F.log_softmax(stu / t, -1) * t * t).sum(1).mean()
    b = torch.autograd.grad(kl, [ctx], retain_graph=True)[0]  # trainer.py l.320-326
    a = torch.autograd.grad(xe, [ctx])[0]  # l.333-334
    b_n, a_n = b / torch.linalg.norm(b), a / torch.linalg.norm(a)  # l.338-340
    g_ref = a - 0.8 * torch.dot(a.flatten(), b_n.flatten()) * b_n if torch.dot(a_n.flatten(), b_n.flatten()) < 0 else a
    torch.testing.assert_close(out.terms["ce"][0] / 5, xe, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["kl"][0] / 5, kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_prograd_projects_only_conflicting_gradients():
    from vlprompt.methods.prograd.model import project_gradient

    g_kl = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(project_gradient(torch.tensor([1.0, 1.0]), g_kl, 1.0), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(project_gradient(torch.tensor([-1.0, 1.0]), g_kl, 1.0), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(project_gradient(torch.tensor([-1.0, 1.0]), g_kl, 0.5), torch.tensor([-0.5, 1.0]))


# ------------------------------------------------------------------------------------------------ CLIP-Adapter
def test_clip_adapter_logits_equal_the_reference(tiny_backbone):
    torch.manual_seed(2)
    m = build_method("clip_adapter", tiny_backbone, NAMES, context=CONTEXT)
    images = _images(tiny_backbone, 4, seed=3)
    ours = m(images)
    f = tiny_backbone.model.encode_image(images).float()
    w1, w2 = m.adapter.fc1.weight.detach(), m.adapter.fc2.weight.detach()
    x = F.relu(F.relu(f @ w1.t()) @ w2.t())  # clip_adapter.py l.55-67 (no biases)
    f = 0.2 * x + (1 - 0.2) * f  # l.104-105
    ref = _scale(tiny_backbone) * F.normalize(f, dim=-1) @ _ref_template_features(tiny_backbone).t()  # l.109-113
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert m.adapter.fc1.weight.shape == (tiny_backbone.embed_dim // 4, tiny_backbone.embed_dim)


# ------------------------------------------------------------------------------------------------ Tip-Adapter
class _FitData:
    """Hand-made few-shot data: fixed augmented views and validation features."""

    def __init__(self, views, labels, val, val_labels, train=None):
        self.views, self.labels, self.val, self.val_labels, self.train = views, labels, val, val_labels, train
        self.logged: list[str] = []

    def augmented_features(self, views, crop_scale=(0.5, 1.0)):
        assert views == self.views.shape[0]
        return self.views, self.labels

    def features(self, split):
        return (self.train, self.labels) if split == "train" else (self.val, self.val_labels)

    def log(self, msg):
        self.logged.append(msg)


def _ref_cls_acc(output, target):  # Tip-Adapter utils.py l.10-15
    pred = output.topk(1, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return 100 * float(correct[:1].reshape(-1).float().sum(0, keepdim=True)[0]) / target.shape[0]


def _ref_search_hp(scale, step, cache_keys, cache_values, features, labels, clip_weights, affinity=None):
    """Tip-Adapter utils.py search_hp l.99-129 (cache_keys [E, NK], clip_weights [E, C])."""
    beta_list = [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]
    alpha_list = [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            aff = features @ cache_keys if affinity is None else affinity
            cache_logits = ((-1) * (beta - beta * aff)).exp() @ cache_values
            clip_logits = 100.0 * features @ clip_weights
            acc = _ref_cls_acc(clip_logits + cache_logits * alpha, labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha


def _tip_data(backbone, seed=4):
    g = torch.Generator().manual_seed(seed)
    e, c = backbone.embed_dim, len(NAMES)
    centers = torch.randn(c, e, generator=g) * 2
    labels = torch.arange(c).repeat_interleave(3)  # 3 shots
    views = centers[labels].unsqueeze(0) + torch.randn(10, len(labels), e, generator=g)
    val_labels = torch.arange(c).repeat_interleave(4)
    val = centers[val_labels] + 1.5 * torch.randn(len(val_labels), e, generator=g)
    return _FitData(views, labels, val, val_labels)


def test_tip_adapter_cache_search_and_logits_equal_the_reference(tiny_backbone, monkeypatch):
    m = build_method("tip_adapter", tiny_backbone, NAMES, context=CONTEXT, search_scale=[7, 3], search_step=[30, 10])
    monkeypatch.setattr(m.backbone.model.logit_scale, "data", torch.tensor(math.log(100.0)))  # the reference's 100
    data = _tip_data(tiny_backbone)
    info = m.fit(data)
    # reference cache (utils.py l.38-62): mean over augment epochs, normalise, [E, NK]; one-hot values
    keys = data.views.mean(dim=0)
    keys = (keys / keys.norm(dim=-1, keepdim=True)).permute(1, 0)
    values = F.one_hot(data.labels).float()
    weights = _ref_template_features(tiny_backbone).t()  # [E, C] (utils.py clip_classifier l.18-35, 1 template)
    val = data.val / data.val.norm(dim=-1, keepdim=True)  # utils.py l.83
    beta, alpha = _ref_search_hp([7, 3], [30, 10], keys, values, val, data.val_labels, weights)
    assert (info["beta"], info["alpha"]) == (beta, alpha)
    test = F.normalize(torch.randn(5, tiny_backbone.embed_dim), dim=-1)
    ref = 100.0 * test @ weights + ((-1) * (beta - beta * (test @ keys))).exp() @ values * alpha  # main.py l.58-61
    torch.testing.assert_close(m.logits(test, m.text_features()), ref, rtol=1e-4, atol=1e-4)


def test_tip_adapter_search_with_no_right_validation_prediction_switches_the_cache_off(tiny_backbone, monkeypatch):
    """utils.py search_hp l.106-107, l.121: the best starts at accuracy 0 with beta = alpha = 0 and only a better
    point replaces it, so when every grid point scores 0 the reference keeps alpha = beta = 0 (cache off)."""
    m = build_method("tip_adapter", tiny_backbone, NAMES, context=CONTEXT, search_scale=[7, 3], search_step=[30, 10])
    monkeypatch.setattr(m.backbone.model.logit_scale, "data", torch.tensor(math.log(1e6)))  # zero-shot term rules
    data = _tip_data(tiny_backbone)
    val = F.normalize(data.val, dim=-1)
    zero_shot = m.backbone.logit_scale * val @ m.text_features().t()
    data.val_labels = (zero_shot.argmax(dim=-1) + 1) % len(NAMES)  # every validation label is not the predicted one
    top2 = zero_shot.topk(2, dim=-1).values  # alpha < 3 and each cache entry exp(-beta (1 - A)) <= 1:
    assert bool(((top2[:, 0] - top2[:, 1]) > 3 * len(data.labels)).all())  # no (alpha, beta) flips a prediction
    info = m.fit(data)
    assert (info["beta"], info["alpha"], info["val_accuracy"]) == (0.0, 0.0, 0.0)
    test = F.normalize(torch.randn(5, tiny_backbone.embed_dim), dim=-1)
    zero_shot_test = m.backbone.logit_scale * test @ m.text_features().t()
    torch.testing.assert_close(m.logits(test, m.text_features()), zero_shot_test, rtol=1e-5, atol=0)


def test_tip_adapter_f_training_loss_equals_the_reference(tiny_backbone):
    m = build_method("tip_adapter_f", tiny_backbone, NAMES, context=CONTEXT, init_alpha=2.0, init_beta=1.5)
    data = _tip_data(tiny_backbone, seed=5)
    m.fit(data)
    assert dict(m.learned_parameters()).keys() == {"cache_keys"}
    feats = torch.randn(6, tiny_backbone.embed_dim)
    labels = torch.tensor([0, 1, 2, 3, 2, 1])
    out = m.training_loss(feats, labels)
    (g_ours,) = torch.autograd.grad(out.total(), [m.cache_keys])
    # main.py l.69-96: adapter = Linear(E, NK) with weight = cache keys [NK, E]; features normalised (l.89)
    weight = m.cache_keys.detach().clone().requires_grad_(True)
    f = feats / feats.norm(dim=-1, keepdim=True)
    affinity = f @ weight.t()
    cache_logits = ((-1) * (1.5 - 1.5 * affinity)).exp() @ F.one_hot(data.labels).float()
    clip_logits = _scale(tiny_backbone) * f @ _ref_template_features(tiny_backbone).t()
    ref = F.cross_entropy(clip_logits + cache_logits * 2.0, labels)
    (g_ref,) = torch.autograd.grad(ref, [weight])
    torch.testing.assert_close(out.total(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ linear probe
def _ref_lpclip(train_x, train_y, val_x, val_y, num_step=8):
    """CoOp lpclip/linear_probe.py l.53-118 for one seed: the final C and classifier."""
    from sklearn.linear_model import LogisticRegression

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = []
    for c_weight in search_list:
        clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=c_weight).fit(train_x, train_y)
        acc_list.append(sum(clf.predict(val_x) == val_y) / len(val_y))
    c_peak = search_list[int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = clf_final = None
    for _ in range(num_step):
        clf_left = LogisticRegression(solver="lbfgs", max_iter=1000, C=c_left).fit(train_x, train_y)
        acc_left = sum(clf_left.predict(val_x) == val_y) / len(val_y)
        clf_right = LogisticRegression(solver="lbfgs", max_iter=1000, C=c_right).fit(train_x, train_y)
        acc_right = sum(clf_right.predict(val_x) == val_y) / len(val_y)
        if acc_left < acc_right:
            c_final, clf_final = c_right, clf_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final, clf_final = c_left, clf_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, clf_final


def test_linear_probe_search_and_predictions_equal_lpclip(tiny_backbone):
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(6)
    e, c = tiny_backbone.embed_dim, len(NAMES)
    centers = torch.randn(c, e, generator=g)
    y = torch.arange(c).repeat_interleave(4)
    x = centers[y] + 1.2 * torch.randn(len(y), e, generator=g)
    vy = torch.arange(c).repeat_interleave(3)
    vx = centers[vy] + 1.2 * torch.randn(len(vy), e, generator=g)
    data = _FitData(None, y, vx, vy, train=x)
    m = build_method("linear_probe", tiny_backbone, NAMES, context=CONTEXT, search_steps=4)
    info = m.fit(data)
    c_ref, clf = _ref_lpclip(x.double().numpy(), y.numpy(), vx.double().numpy(), vy.numpy(), num_step=4)
    assert info["C"] == pytest.approx(c_ref, rel=1e-12)
    test = torch.randn(20, e, generator=g)
    ours = m.logits(test, m.text_features())
    ref = torch.from_numpy(clf.decision_function(test.double().numpy())).float()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert (ours.argmax(-1).numpy() == clf.predict(test.double().numpy())).all()


# ------------------------------------------------------------------------------------------------ CLIP-LoRA
def test_clip_lora_equals_the_merged_low_rank_update(tiny_backbone):
    torch.manual_seed(7)
    m = build_method("clip_lora", tiny_backbone, NAMES, context=CONTEXT, r=2, alpha=1.0, dropout_rate=0.25).eval()
    lora = dict(m.learned_parameters())
    with torch.no_grad():
        for name, p in lora.items():
            if ".lora_B." in name:
                p.normal_(std=0.1)  # B starts at zero (layers.py l.63-68): move it
    images = _images(tiny_backbone, 3, seed=8)
    ours = m(images)
    # reference: W' = W + alpha / sqrt(r) * B A (layers.py l.42, l.75-86) merged into a copy of the frozen model
    ref_model = copy.deepcopy(tiny_backbone.model)
    s = 1.0 / math.sqrt(2)
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in lora.items():
        path, kind, proj = name.removeprefix("backbone.model.").rsplit(".", 2)
        per_module.setdefault(path.removesuffix(".lora_A").removesuffix(".lora_B"), {})[f"{kind[-1]}{proj}"] = p
    assert per_module, "no adapter found"
    with torch.no_grad():
        for path, mats in per_module.items():
            mha = ref_model.get_submodule(path)
            e = mha.embed_dim
            for i, proj in enumerate("qkv"):
                if f"A{proj}" in mats:
                    mha.in_proj_weight[i * e:(i + 1) * e] += s * mats[f"B{proj}"] @ mats[f"A{proj}"]
    img = F.normalize(ref_model.encode_image(images).float(), dim=-1)
    ids = tiny_backbone.tokenize([TEMPLATE.format(n) for n in NAMES])  # lora.py l.94-101: template[0]
    txt = F.normalize(ref_model.encode_text(ids).float(), dim=-1)
    ref = _scale(tiny_backbone) * img @ txt.t()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    n_text = len(tiny_backbone.model.transformer.resblocks)
    visual = getattr(tiny_backbone.model.visual, "transformer", None)
    assert len(m.adapters) == n_text + (len(visual.resblocks) if visual is not None else 0)
    # the shared backbone is untouched
    assert not any(isinstance(mod, type(m.adapters[0])) for mod in tiny_backbone.modules())


#: CLIP-LoRA's tables (MaxZanella/CLIP-LoRA@358f0d7 loralib/utils.py): 12-block towers l.10-19 (text; the
#: ViT-B image towers l.23-38 give the same lists), ViT-L/14's 24-block image tower l.40-43
CLIP_LORA_12 = {"top1": [11], "top2": [10, 11], "top3": [9, 10, 11], "bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7],
                "up": [8, 9, 10, 11], "half-up": [6, 7, 8, 9, 10, 11], "half-bottom": [0, 1, 2, 3, 4, 5],
                "all": list(range(12))}
CLIP_LORA_VIT_L14 = {"half-up": list(range(12, 24)), "half-bottom": list(range(12)), "all": list(range(24))}


def test_clip_lora_positions_scale_with_the_tower_depth(tmp_path):
    """On a tower of ViT-L/14's depths (24 image blocks, 12 text blocks) the presets adapt the blocks of
    CLIP-LoRA's ViT-L/14 table (half-up: 12-23, not 6-11); 12-block towers keep the authors' lists; a
    12-block-only preset on the 24-block tower is one clear error."""
    import json

    import open_clip

    from vlprompt.backbones.openclip import load_backbone
    from vlprompt.core.errors import ConfigError
    from vlprompt.methods.clip_lora.config import ClipLoRAConfig
    from vlprompt.methods.clip_lora.lora import LoRAMultiheadAttention

    for preset, blocks in CLIP_LORA_12.items():  # 12-block results unchanged
        assert ClipLoRAConfig(position=preset).blocks(12, "text") == blocks, preset
    (tmp_path / "vlprompt-test-vit24.json").write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 24, "width": 16, "head_width": 8, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 12}}))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    backbone = load_backbone("vlprompt-test-vit24")

    def adapted(m, tower):
        return [i for i, block in enumerate(m.backbone.transformer_blocks(tower))
                if any(isinstance(child, LoRAMultiheadAttention) for child in block.children())]

    assert len(backbone.transformer_blocks("image")) == 24 and len(backbone.transformer_blocks("text")) == 12
    m = build_method("clip_lora", backbone, NAMES, context=CONTEXT, position="half-up")  # one build: ~0.5 s
    assert adapted(m, "image") == CLIP_LORA_VIT_L14["half-up"]  # was 6-11
    assert adapted(m, "text") == CLIP_LORA_12["half-up"]  # ViT-L/14's text tower has 12 blocks
    for preset, blocks in CLIP_LORA_VIT_L14.items():
        assert ClipLoRAConfig(position=preset).blocks(24, "vision") == blocks, preset
    with pytest.raises(ConfigError, match="'up' is CLIP-LoRA's preset of a 12-block tower .* vision tower has 24"):
        ClipLoRAConfig(position="up").blocks(24, "vision")  # what the build calls per tower


def test_linear_probe_without_scikit_learn_is_one_clear_error(vit_backbone, monkeypatch):
    import sys

    from vlprompt.core.errors import ConfigError

    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)  # as if scikit-learn were not installed
    m = build_method("linear_probe", vit_backbone, NAMES, context=CONTEXT)
    x = torch.randn(8, vit_backbone.embed_dim)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[probe\]'"):
        m.fit(_FitData(None, torch.arange(4).repeat(2), x, torch.arange(4).repeat(2), train=x))
