"""APE and APE-T against an independent re-implementation of what yangyangyang127/APE@70460de computes
(``main.py``, ``utils.py``; lines cited at each step), on the tiny random towers' text features and random
cache / validation features, in fp32 on the CPU (the authors run fp16 on the GPU). The reference keeps the
authors' layouts (cache keys ``[E, NK]`` stored class-major, ``clip_weights [E, C]``) and loops.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fit_data import FixedFitData
from vlprompt.core.errors import ConfigError
from vlprompt.methods.ape.model import channel_criterion
from vlprompt.methods.base import MethodContext
from vlprompt.methods.registry import build_method, make_method_config

from conftest import tiny_config, write_config

NAMES = ["red car", "green apple", "blue whale", "tabby cat"]
TEMPLATE = "a photo of a {}, a type of thing."
CONTEXT = MethodContext(templates=[TEMPLATE])
SHOTS = 3


_FitData = FixedFitData


def _data(backbone, seed=0, noise=2.5):
    """Class-major few-shot views (``SHOTS`` per class, 10 views) around random class centres, and val."""
    g = torch.Generator().manual_seed(seed)
    e, c = backbone.embed_dim, len(NAMES)
    centers = torch.randn(c, e, generator=g) * 2
    labels = torch.arange(c).repeat_interleave(SHOTS)
    views = centers[labels].unsqueeze(0) + 1.5 * torch.randn(10, len(labels), e, generator=g)
    val_labels = torch.arange(c).repeat_interleave(6)
    val = centers[val_labels] + noise * torch.randn(len(val_labels), e, generator=g)
    return _FitData(views, labels, val, val_labels)


def _with_scale_100(method, monkeypatch):
    monkeypatch.setattr(method.backbone.model.logit_scale, "data", torch.tensor(math.log(100.0)))  # the reference's


# ------------------------------------------------------------------------------------------------ the reference
def ref_clip_weights(backbone):
    """``clip_weights [E, C]``: one template, normalised (``extract_features.py`` l.61-84 without CuPL)."""
    ids = backbone.tokenize([TEMPLATE.format(n) for n in NAMES])
    with torch.no_grad():
        return F.normalize(backbone.model.encode_text(ids).float(), dim=-1).t()


def ref_cache(data):
    """``extract_few_shot_feature`` (``extract_features.py`` l.20-43): keys ``[E, NK]``, one-hot values."""
    keys = data.views.float().mean(dim=0)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    return keys.permute(1, 0), F.one_hot(data.labels).float()


def ref_cal_criterion(w, feat_num, clip_weights, cache_keys, shots):
    """``utils.py`` ``cal_criterion`` l.22-72 with ``only_use_txt=False`` (the pair loops of l.54-63)."""
    feat_dim, cate_num = clip_weights.shape
    text_feat = clip_weights.t().unsqueeze(1)
    cache_feat = cache_keys.reshape(cate_num, shots, feat_dim)
    feats = torch.cat([text_feat, cache_feat], dim=1)
    samp_num = feats.shape[1]
    sim_sum = torch.zeros(feat_dim)
    count = 0
    for i in range(cate_num):
        for j in range(cate_num):
            for m in range(samp_num):
                for n in range(samp_num):
                    if i != j:
                        sim_sum += feats[i, m, :] * feats[j, n, :]
                        count += 1
    sim = sim_sum / count
    criterion = (-1) * w[0] * sim + w[1] * torch.var(clip_weights, dim=1)
    return torch.topk(criterion, k=feat_num)[1]


def ref_cls_acc(output, target):  # utils.py l.14-19
    pred = output.topk(1, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return 100 * float(correct[:1].reshape(-1).float().sum(0, keepdim=True)[0]) / target.shape[0]


def ref_ape(cfg, cache_keys, cache_values, val_features, val_labels, clip_weights):
    """``main.py`` ``APE`` l.28-93: channels, div, searched (beta, alpha, gamma) and the test-logit function."""
    feat_dim, cate_num = clip_weights.shape
    keys = cache_keys.t().reshape(cate_num, cfg["shots"], feat_dim).reshape(-1, feat_dim)  # l.34-36
    indices = ref_cal_criterion(cfg["w_training_free"], cfg["training_free_feat_num"], clip_weights, keys,
                                cfg["shots"])
    new_clip_weights = clip_weights[indices, :]
    new_clip_weights = new_clip_weights / new_clip_weights.norm(dim=0, keepdim=True)  # l.41-49
    new_cache_keys = keys[:, indices]
    new_cache_keys = new_cache_keys / new_cache_keys.norm(dim=-1, keepdim=True)
    new_val = val_features[:, indices]
    new_val = new_val / new_val.norm(dim=-1, keepdim=True)
    key_logits = (new_cache_keys @ new_clip_weights).softmax(1)  # l.62-64
    cache_div = torch.sum(cache_values * torch.log2((cache_values + 1e-6) / (key_logits + 1e-6)), dim=1)[:, None]
    best_search_acc, best = 0, (0, 0, 0)
    r_ff = new_val @ new_cache_keys.t()  # l.75-76
    r_fw = 100.0 * val_features @ clip_weights
    scale, step = cfg["search_scale"], cfg["search_step"]
    beta_list = [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]  # l.78-80
    alpha_list = [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    gamma_list = [i * scale[2] / step[2] for i in range(step[2])]
    for beta in beta_list:
        for alpha in alpha_list:
            for gamma in gamma_list:
                soft = cache_values * (cache_div * gamma).exp()
                logits = r_fw + ((-1) * (beta - beta * r_ff)).exp() @ soft * alpha
                acc = ref_cls_acc(logits, val_labels)
                if acc > best_search_acc:
                    best_search_acc, best = acc, (beta, alpha, gamma)
    beta, alpha, gamma = best

    def test_logits(test):  # l.95-101
        t = test / test.norm(dim=-1, keepdim=True)
        nt = t[:, indices] / t[:, indices].norm(dim=-1, keepdim=True)
        soft = cache_values * (cache_div * gamma).exp()
        return 100.0 * t @ clip_weights + ((-1) * (beta - beta * (nt @ new_cache_keys.t()))).exp() @ soft * alpha

    return indices, cache_div[:, 0], best, best_search_acc, test_logits


class RefApeTraining(torch.nn.Module):
    """``utils.py`` ``APE_Training`` l.115-139 (fp32, on the CPU): residual [C, feat_num], value weights."""

    def __init__(self, shots, clip_weights, indices, feat_num):
        super().__init__()
        self.shots = shots
        self.feat_dim, self.cate_num = clip_weights.shape
        self.value_weights = torch.nn.Parameter(torch.ones([self.cate_num * shots, 1]))
        self.indices = indices
        self.res = torch.nn.Parameter(torch.zeros([self.cate_num, feat_num]))
        self.feat_num = feat_num

    def forward(self, cache_keys, clip_weights, cache_values):
        res_keys = self.res.unsqueeze(1).repeat(1, self.shots, 1).reshape(-1, self.feat_num)
        new_cache_keys = cache_keys.clone().reshape(-1, self.feat_dim)
        new_cache_keys[:, self.indices] = new_cache_keys[:, self.indices] + res_keys
        new_clip_weights = clip_weights.clone()
        new_clip_weights[self.indices, :] = clip_weights[self.indices, :] + self.res.t()
        return new_cache_keys, new_clip_weights, cache_values * self.value_weights


def ref_ape_t_logits(adapter, keys, clip_weights, values, features, beta, alpha):
    """``main.py`` l.137-141 (and l.161-166, l.187-192): APE-T's logits of normalised ``features``."""
    new_cache_keys, new_clip_weights, r_fw_values = adapter(keys, clip_weights, values)
    r_ff = features @ new_cache_keys.t()
    cache_logits = ((-1) * (beta - beta * r_ff)).exp() @ r_fw_values
    return 100.0 * features @ new_clip_weights + cache_logits * alpha


# ------------------------------------------------------------------------------------------------ APE
CFG = {"shots": SHOTS, "w_training_free": [0.5, 0.5], "training_free_feat_num": 20,
       "search_scale": [7, 7, 1], "search_step": [50, 10, 8]}


def test_ape_channels_cache_search_and_logits_equal_the_reference(tiny_backbone, monkeypatch):
    m = build_method("ape", tiny_backbone, NAMES, context=CONTEXT, w_training_free=CFG["w_training_free"],
                     training_free_feat_num=20, search_scale=CFG["search_scale"], search_step=CFG["search_step"])
    _with_scale_100(m, monkeypatch)
    data = _data(tiny_backbone)
    info = m.fit(data)
    keys, values = ref_cache(data)
    weights = ref_clip_weights(tiny_backbone)
    val = data.val / data.val.norm(dim=-1, keepdim=True)  # extract_features.py l.52
    indices, div, best, acc, test_logits = ref_ape(CFG, keys, values, val, data.val_labels, weights)
    assert sorted(m.channels.tolist()) == sorted(indices.tolist()) and len(indices) == 20
    torch.testing.assert_close(m.cache_keys, keys.t(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.cache_div, div, rtol=1e-4, atol=1e-5)
    assert (info["beta"], info["alpha"], info["gamma"]) == best
    assert info["val_accuracy"] == pytest.approx(acc)
    assert best[0] > 0.1 and best[2] > 0  # the search found an inner point: the comparison is not trivial
    test = torch.randn(7, tiny_backbone.embed_dim)
    torch.testing.assert_close(m.logits(test, m.text_features()), test_logits(test), rtol=1e-4, atol=1e-4)


def test_ape_does_not_depend_on_the_order_of_the_cache(vit_backbone, monkeypatch):
    """The reference needs a class-major cache with K shots per class; vlprompt's cache may come in any order."""
    kw = {"training_free_feat_num": 16, "search_step": [20, 5, 4]}
    a, b = (build_method("ape", vit_backbone, NAMES, context=CONTEXT, **kw) for _ in range(2))
    data = _data(vit_backbone, seed=3)
    perm = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(0))
    shuffled = _FitData(data.views[:, perm], data.labels[perm], data.val, data.val_labels)
    info_a, info_b = a.fit(data), b.fit(shuffled)
    assert sorted(a.channels.tolist()) == sorted(b.channels.tolist())
    assert {k: info_a[k] for k in ("alpha", "beta", "gamma")} == {k: info_b[k] for k in ("alpha", "beta", "gamma")}
    test = torch.randn(5, vit_backbone.embed_dim)
    torch.testing.assert_close(a.logits(test, a.text_features()), b.logits(test, b.text_features()))


def test_the_criterion_closed_form_equals_the_pair_loops_with_unequal_shots():
    """sim_d = mean over all pairs of features of different classes (utils.py l.54-63), any shots per class."""
    g = torch.Generator().manual_seed(1)
    text = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    key_labels = torch.tensor([0, 0, 0, 1, 2, 2])
    keys = F.normalize(torch.randn(6, 6, generator=g), dim=-1)
    groups = [[text[c]] + [keys[i] for i in range(6) if key_labels[i] == c] for c in range(3)]
    sim_sum, count = torch.zeros(6, dtype=torch.float64), 0
    for i in range(3):
        for j in range(3):
            if i != j:
                for x in groups[i]:
                    for y in groups[j]:
                        sim_sum += (x * y).double()
                        count += 1
    ref = -0.3 * sim_sum / count + 0.7 * torch.var(text.t().double(), dim=1)
    torch.testing.assert_close(channel_criterion(text, keys, key_labels, [0.3, 0.7]), ref)


def test_ape_without_val_keeps_init_values_and_feat_num_is_cut_to_the_width(vit_backbone):
    m = build_method("ape", vit_backbone, NAMES, context=CONTEXT, init_alpha=1.5, init_beta=2.0, init_gamma=0.3,
                     training_free_feat_num=10_000)
    data = _data(vit_backbone)
    data.val, data.val_labels = data.val[:0], data.val_labels[:0]
    info = m.fit(data)
    assert (info["alpha"], info["beta"], info["gamma"], info["searched"]) == (1.5, 2.0, pytest.approx(0.3), False)
    assert data.logged and m.channels.shape == (vit_backbone.embed_dim,)


# ------------------------------------------------------------------------------------------------ APE-T
T_CFG = {"w_training": [0.2, 0.8], "training_feat_num": 24}


def _ape_t(backbone, monkeypatch, **kw):
    m = build_method("ape_t", backbone, NAMES, context=CONTEXT, init_alpha=2.0, init_beta=1.5, **T_CFG, **kw)
    _with_scale_100(m, monkeypatch)
    return m


def _ref_adapter(m, data, backbone):
    keys, values = ref_cache(data)
    weights = ref_clip_weights(backbone)
    # APE-T's channels as main.py runs them: APE's text + cache similarity (file written at l.28-47), w_training
    indices = ref_cal_criterion(T_CFG["w_training"], T_CFG["training_feat_num"], weights, keys.t(), SHOTS)
    adapter = RefApeTraining(SHOTS, weights, indices, T_CFG["training_feat_num"])
    return adapter, keys.t(), weights, values


def test_ape_t_channels_loss_and_gradients_equal_the_reference(tiny_backbone, monkeypatch):
    m = _ape_t(tiny_backbone, monkeypatch)
    data = _data(tiny_backbone, seed=5)
    m.fit(data)
    assert dict(m.learned_parameters()).keys() == {"res", "value_weights"}
    adapter, keys, weights, values = _ref_adapter(m, data, tiny_backbone)
    assert sorted(m.channels.tolist()) == sorted(adapter.indices.tolist())
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # move both away from their initial values (zeros, ones)
        adapter.res.copy_(0.1 * torch.randn(adapter.res.shape, generator=g))
        adapter.value_weights.add_(0.2 * torch.randn(adapter.value_weights.shape, generator=g))
        position = {int(c): i for i, c in enumerate(adapter.indices)}
        m.res.copy_(adapter.res[:, [position[int(c)] for c in m.channels]])
        m.value_weights.copy_(adapter.value_weights)
    feats = torch.randn(6, tiny_backbone.embed_dim, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 2, 1])
    out = m.training_loss(feats, labels)
    grads = torch.autograd.grad(out.total(), [m.res, m.value_weights])
    f = feats / feats.norm(dim=-1, keepdim=True)
    ref_logits = ref_ape_t_logits(adapter, keys, weights, values, f, 1.5, 2.0)
    ref = F.cross_entropy(ref_logits, labels)  # SmoothCrossEntropy(alpha=0), utils.py l.102-113
    ref_grads = torch.autograd.grad(ref, [adapter.res, adapter.value_weights])
    torch.testing.assert_close(out.logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.total(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], ref_grads[0][:, [position[int(c)] for c in m.channels]], rtol=1e-4,
                               atol=1e-6)
    torch.testing.assert_close(grads[1], ref_grads[1], rtol=1e-4, atol=1e-6)


def test_ape_t_keeps_the_best_validation_epoch_and_searches_as_the_reference(vit_backbone, monkeypatch):
    """main.py l.158-197: per epoch the val accuracy at init alpha / beta, the first best epoch kept (also across
    a save / load of the learned state, as a resumed run does), then beta / alpha searched with that adapter."""
    m = _ape_t(vit_backbone, monkeypatch, search_scale=[7, 7], search_step=[40, 10])
    data = _data(vit_backbone, seed=6, noise=3.0)
    m.fit(data)
    adapter, keys, weights, values = _ref_adapter(m, data, vit_backbone)
    val = data.val / data.val.norm(dim=-1, keepdim=True)
    g = torch.Generator().manual_seed(2)
    order = [int(c) for c in m.channels]
    position = {int(c): i for i, c in enumerate(adapter.indices)}
    epochs = [(0.3 * torch.randn(adapter.res.shape, generator=g), 1 + 0.3 * torch.randn(len(values), 1, generator=g))
              for _ in range(4)]
    ref_accs = []
    for epoch, (res, vw) in enumerate(epochs):
        with torch.no_grad():
            adapter.res.copy_(res)
            adapter.value_weights.copy_(vw)
            m.res.copy_(res[:, [position[c] for c in order]])
            m.value_weights.copy_(vw)
            ref_accs.append(ref_cls_acc(ref_ape_t_logits(adapter, keys, weights, values, val, 1.5, 2.0),
                                        data.val_labels))
        m.on_epoch_end(epoch, len(epochs))
        if epoch == 1:  # a resumed run: the learned state carries the best epoch so far
            state = m.learned_state()
            m._best = None
            m.load_learned_state(state)
    best_epoch = max(range(len(epochs)), key=lambda i: (ref_accs[i], -i))
    assert len(set(ref_accs)) > 1 and best_epoch != len(epochs) - 1  # the selection matters here
    info = m.after_training(data)
    assert info["best_epoch"] == best_epoch + 1 and "best.res" not in m.learned_state()
    with torch.no_grad():
        adapter.res.copy_(epochs[best_epoch][0])
        adapter.value_weights.copy_(epochs[best_epoch][1])
    best_acc, best = 0, (0, 0)
    for beta in [i * (7 - 0.1) / 40 + 0.1 for i in range(40)]:  # l.180-197
        for alpha in [i * (7 - 0.1) / 10 + 0.1 for i in range(10)]:
            acc = ref_cls_acc(ref_ape_t_logits(adapter, keys, weights, values, val, beta, alpha), data.val_labels)
            if acc > best_acc:
                best_acc, best = acc, (beta, alpha)
    assert (info["beta"], info["alpha"]) == best and info["val_accuracy"] == pytest.approx(best_acc)
    test = F.normalize(torch.randn(5, vit_backbone.embed_dim), dim=-1)
    torch.testing.assert_close(m.logits(test, m.text_features()),
                               ref_ape_t_logits(adapter, keys, weights, values, test, *best), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ options, CLI
@pytest.mark.parametrize("name, options", [
    ("ape", {"search_scale": [7, 7]}), ("ape", {"search_step": [200, 20, 2.5]}), ("ape", {"search_scale": "7"}),
    ("ape", {"training_free_feat_num": 0}), ("ape", {"w_training_free": [0.5]}), ("ape", {"init_gamma": -1}),
    ("ape", {"crop_scale": [0.9, 0.5]}), ("ape", {"search_hp": "yes"}), ("ape", {"w_training_free": [True, 1]}),
    ("ape_t", {"search_step": [200]}), ("ape_t", {"training_feat_num": 1.5}), ("ape_t", {"select_best_epoch": 1}),
    ("ape_t", {"w_training": [0.2, float("nan")]}), ("ape_t", {"augment_epoch": 0}),
])
def test_bad_options_are_config_errors(name, options):
    with pytest.raises(ConfigError, match=f"method.{next(iter(options))}"):
        make_method_config(name, options)


def test_defaults_are_the_authors_imagenet_yaml():
    ape, ape_t = make_method_config("ape", {}), make_method_config("ape_t", {})
    assert (ape.search_scale, ape.search_step, ape.init_beta, ape.init_alpha, ape.init_gamma) == (
        [7.0, 7.0, 0.5], [200, 20, 5], 1.0, 2.0, 0.1)
    assert (ape.training_free_feat_num, ape.w_training_free, ape.augment_epoch) == (500, [0.7, 0.3], 10)
    assert (ape_t.training_feat_num, ape_t.w_training, ape_t.select_best_epoch) == (500, [0.2, 0.8], True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ape", "ape_t"])
def test_vlprompt_train_fits_on_the_tiny_imagefolder(name, tmp_path, tiny_imagefolder):
    from vlprompt.cli.main import main

    method = {"name": name, "augment_epoch": 2, "search_step": [20, 5, 4]}
    optim = {"name": "adamw", "lr": 0.001, "weight_decay": 0.1, "max_epoch": 3, "batch_size": 4, "warmup_epoch": 0}
    cfg = {**tiny_config(tmp_path, tiny_imagefolder, optim=optim), "method": method}
    if name == "ape":
        del cfg["optim"]
    assert main(["train", "-c", str(write_config(tmp_path / "cfg.yaml", **cfg))]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    fit = metrics["fit"]
    assert fit["searched"] is True and fit["cache_size"] == 12
    assert len(metrics["history"]) == (3 if name == "ape_t" else 0) and 0 <= metrics["test"]["accuracy"] <= 100
    if name == "ape_t":
        assert 1 <= fit["best_epoch"] <= 3


def test_the_alpha_intervals_equal_the_argmax_at_every_alpha():
    """The search decides all alphas at once (correct_at_alphas); the same as argmax(z + alpha q) == y per alpha."""
    from vlprompt.methods.ape.model import correct_at_alphas

    g = torch.Generator().manual_seed(4)
    n, c, groups = 300, 12, 3
    z = 5 * torch.randn(n, c, generator=g)
    q = torch.rand(groups, n, c, generator=g) * 4
    y = torch.randint(0, c, (n,), generator=g)
    z[torch.arange(n), y] += 6.0  # right at some alphas, wrong at others
    alphas = torch.tensor([i * (7 - 0.1) / 20 + 0.1 for i in range(20)])
    margin = z.gather(1, y.view(-1, 1)) - z
    margin.scatter_(1, y.view(-1, 1), float("inf"))
    ours = correct_at_alphas(margin, q, y, alphas)
    ref = torch.stack([(z + a * q).argmax(dim=-1) == y for a in alphas.tolist()])
    assert torch.equal(ours, ref)
    assert 0.2 < ref.float().mean() < 0.8 and (ref.any(dim=0) & ~ref.all(dim=0)).float().mean() > 0.2


def test_the_alpha_intervals_handle_equal_cache_logits():
    """b_c = q_y - q_c = 0: no bound if the zero-shot margin is positive; never right if it is 0 or negative."""
    from vlprompt.methods.ape.model import correct_at_alphas

    z = torch.tensor([[3.0, 1.0, 0.0], [3.0, 3.0, 0.0], [3.0, 4.0, 0.0]])
    q = torch.tensor([[[2.0, 2.0, 0.5], [2.0, 2.0, 0.5], [2.0, 2.0, 0.5]]])
    y = torch.zeros(3, dtype=torch.long)
    alphas = torch.tensor([0.5, 1.0, 8.0])
    margin = z.gather(1, y.view(-1, 1)) - z
    margin.scatter_(1, y.view(-1, 1), float("inf"))
    ours = correct_at_alphas(margin, q, y, alphas)[:, 0]
    assert ours.tolist() == [[True, False, False]] * 3
