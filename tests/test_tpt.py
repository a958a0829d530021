"""TPT and C-TPT against an independent re-implementation of the authors' per-image step; episodic reset;
starting from CoOp / CoCoOp prompt files; refusals.

The reference (:class:`AuthorsStep`) is written here from what azshue/TPT ``tpt_classification.py`` and
``clip/custom_clip.py`` / ``clip/cocoop.py`` compute (and hee-suk-yoon/C-TPT's additions), on the open_clip
model's own modules: the n_cls full 77-token prompts through the text transformer (no shared prefix), the image
tower called again at every step and for the prediction as the authors do, AdamW written out by hand with a fresh
state per image, the confidence selection and the entropy of the mean probability. The authors run fp16 autocast
with a GradScaler on GPU; both sides here run fp32 on CPU, without loss scaling (scaling by s and unscaling by s
is the identity up to rounding).
"""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from vlprompt.backbones.openclip import load_backbone
from vlprompt.core.errors import ConfigError
from vlprompt.data.test_time_views import views_for
from vlprompt.engine.checkpoint import load_prompt, read_prompt, save_prompt
from vlprompt.engine.test_time import adapt_stream
from vlprompt.methods.registry import build_method, make_method_config

from conftest import TINY_MODELS

NAMES = ["red thing", "green thing", "blue thing", "a rather long and winding class name", "cat"]
N_VIEWS = 32  # int(32 * 0.1) = 3 selected views
#: fp32 on CPU: the shared-prefix text pass and the full one differ by float rounding only
TOL = {"rtol": 1e-4, "atol": 2e-5}


@pytest.fixture(scope="module", params=TINY_MODELS)
def backbone(request):
    return load_backbone(request.param)


def _views(backbone, seed: int = 0, index: int = 0, n_views: int = N_VIEWS) -> Tensor:
    """The real test-time views (AugMix) of a synthetic image: ``[V, 3, S, S]``."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((48, 40, 3)) * 255).astype(np.uint8)
    pixels[:, :20, 0] = 220  # some structure for the crops to see
    return views_for(backbone, n_views=n_views, augmix=True, seed=seed)(Image.fromarray(pixels), index)


class AuthorsStep:
    """What azshue/TPT computes for one test image (with C-TPT's term when ``lambda_term > 0``).

    Args:
        model: the open_clip CLIP model (its ``visual``, ``transformer``, ``token_embedding``, ...).
        start_ctx: the initial context ``[M, D]``: the ``ctx_init`` embedding (custom_clip.py l.76-92), or a
            CoOp file's ``ctx`` (tpt_classification.py l.113-119), or CoCoOp's ``ctx`` with ``meta_net``.
        placeholder: the prompt prefix text whose tokens the context replaces (custom_clip.py l.93-98, 114).
        meta_net: TPT+CoCoOp: the CoCoOp Meta-Net (cocoop.py l.52-56); the start is ``ctx + meta_net(f)``.
    """

    def __init__(self, model: nn.Module, classnames: list[str], start_ctx: Tensor, placeholder: str, *,
                 lr: float = 5e-3, weight_decay: float = 0.01, tta_steps: int = 1, selection_p: float = 0.1,
                 lambda_term: float = 0.0, meta_net: nn.Module | None = None) -> None:
        self.model = model
        self.start_ctx = start_ctx.detach().clone()
        self.lr, self.wd, self.steps, self.p, self.lam = lr, weight_decay, tta_steps, selection_p, lambda_term
        self.meta_net = meta_net
        n_ctx = start_ctx.shape[0]
        # custom_clip.py l.112-137: "<prefix> <name>." tokenised, SOS kept, the n_ctx prefix tokens replaced
        prompts = [f"{placeholder} {name.replace('_', ' ')}." for name in classnames]
        self.tokens = open_clip.tokenize(prompts)  # [n_cls, 77]
        with torch.no_grad():
            emb = model.token_embedding(self.tokens)
        self.sos, self.rest = emb[:, :1], emb[:, 1 + n_ctx :]

    # ---- clip/custom_clip.py
    def text_features(self, ctx: Tensor) -> Tensor:
        """PromptLearner.forward (l.183-223, class token at the end) + TextEncoder (l.48-59), normalised (l.305)."""
        n_cls = self.sos.shape[0]
        x = torch.cat([self.sos, ctx.unsqueeze(0).expand(n_cls, -1, -1), self.rest], dim=1)  # [n_cls, 77, D]
        x = x + self.model.positional_embedding
        x = self.model.transformer(x, attn_mask=self.model.attn_mask)  # batch-first open_clip blocks
        x = self.model.ln_final(x)
        x = x[torch.arange(n_cls), self.tokens.argmax(dim=-1)] @ self.model.text_projection
        return x / x.norm(dim=-1, keepdim=True)

    def image_features(self, images: Tensor) -> Tensor:
        with torch.no_grad():  # ``inference`` l.311-312
            return self.model.visual(images)

    def logits(self, image_features: Tensor, text: Tensor) -> Tensor:
        """l.315-318: logit_scale.exp() * normalised image features @ text.T."""
        img = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.exp() * img @ text.t()

    # ---- tpt_classification.py
    @staticmethod
    def confident(logits: Tensor, p: float) -> Tensor:
        """l.41-44: argsort of the per-view entropy, the first int(V * p)."""
        probs = logits.softmax(dim=1)
        entropy = -(probs * torch.log(probs)).sum(dim=1)
        return torch.argsort(entropy)[: int(logits.shape[0] * p)]

    @staticmethod
    def mean_prob_entropy(logits: Tensor) -> Tensor:
        """l.46-51 in probability space: H of the mean of the views' softmax."""
        mean = logits.softmax(dim=-1).mean(dim=0)
        return -(mean * torch.log(mean)).sum()

    def loss(self, logits: Tensor, text: Tensor) -> Tensor:
        loss = self.mean_prob_entropy(logits)
        if self.lam:  # C-TPT custom_clip.py l.319-330, tpt_classification.py l.159-160
            centre = text.mean(dim=0)
            loss = loss - self.lam * torch.linalg.norm(text - centre, dim=-1).mean()
        return loss

    def adamw(self, p: Tensor, g: Tensor, state: dict) -> Tensor:
        """torch.optim.AdamW(params, lr) (l.145): decoupled decay, bias-corrected moments, betas (0.9, 0.999),
        eps 1e-8; ``state`` empty for a fresh optimiser (l.275 loads the initial state before every image)."""
        b1, b2, eps = 0.9, 0.999, 1e-8
        t = state.get("t", 0) + 1
        m = b1 * state.get("m", torch.zeros_like(p)) + (1 - b1) * g
        v = b2 * state.get("v", torch.zeros_like(p)) + (1 - b2) * g * g
        state.update(t=t, m=m, v=v)
        p = p * (1 - self.lr * self.wd)
        return p - self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)

    def __call__(self, views: Tensor) -> tuple[Tensor, Tensor]:
        """(tuned context ``[M, D]``, logits ``[n_cls]`` of ``views[0]``) for one image."""
        if self.meta_net is None:
            ctx = self.start_ctx.clone()
            feats = None
        else:  # cocoop.py gen_ctx l.172-182: features once, the raw feature of the original view into meta_net
            feats = self.image_features(views)
            with torch.no_grad():
                ctx = self.start_ctx + self.meta_net(feats[:1])  # [M, D] + [1, D]
        state: dict = {}  # fresh AdamW (l.275; l.58 for CoCoOp)
        chosen = None
        for _ in range(self.steps):
            ctx = ctx.detach().requires_grad_(True)
            feats_step = self.image_features(views) if feats is None else feats  # model(inputs), l.66
            text = self.text_features(ctx)
            out = self.logits(feats_step, text)
            if chosen is None:
                chosen = self.confident(out, self.p)  # l.68-71: chosen once, reused by later steps
            loss = self.loss(out[chosen], text)
            loss.backward()
            with torch.no_grad():
                ctx = self.adamw(ctx, ctx.grad, state)
        with torch.no_grad():  # l.289-294: model(image), the original image encoded again
            f0 = self.image_features(views[:1]) if feats is None else feats[:1]
            logits = self.logits(f0, self.text_features(ctx))[0]
        return ctx.detach(), logits


def _reference(method, **overrides) -> AuthorsStep:
    cfg = method.config
    kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, tta_steps=cfg.tta_steps, selection_p=cfg.selection_p,
              lambda_term=getattr(cfg, "lambda_term", 0.0))
    kw.update(overrides)
    return AuthorsStep(method.backbone.model, method.classnames, method.initial_ctx, "a photo of a", **kw)


def _ctx_init_embedding(model: nn.Module, words: str) -> Tensor:
    """custom_clip.py l.76-92: the embeddings of ``words`` after SOS, one per word."""
    with torch.no_grad():
        return model.token_embedding(open_clip.tokenize(words))[0, 1 : 1 + len(words.split(" "))]


# ------------------------------------------------------------------------------------------- the step
@pytest.mark.parametrize(("name", "options"), [("tpt", {}), ("tpt", {"tta_steps": 3, "lr": 0.05}),
                                               ("ctpt", {}), ("ctpt", {"lambda_term": 20.0, "tta_steps": 2})])
def test_one_image_step_matches_the_authors(backbone, name, options):
    """Tuned context and final logits equal the reference's; the context moved, so the comparison can fail."""
    method = build_method(name, backbone, NAMES, **options).eval()
    torch.testing.assert_close(method.initial_ctx, _ctx_init_embedding(backbone.model, "a photo of a"))
    views = _views(backbone)
    method.reset_adaptation()
    out = method.adapt_and_predict(views)
    ref_ctx, ref_logits = _reference(method)(views)
    assert float((ref_ctx - method.initial_ctx).abs().max()) > 1e-3, "the step did not move the context"
    torch.testing.assert_close(method.ctx, ref_ctx, **TOL)
    torch.testing.assert_close(out.logits, ref_logits, **TOL)
    steps = method.config.tta_steps
    assert out.cost == {"image_forward": N_VIEWS, "text_forward": steps + 1, "backward": steps}
    if name == "ctpt":  # the dispersion term is active: without it the reference ends elsewhere
        plain_ctx, _ = _reference(method, lambda_term=0.0)(views)
        assert not torch.allclose(plain_ctx, ref_ctx, **TOL)


def test_the_backbone_gets_no_gradient_and_no_update(backbone):
    method = build_method("ctpt", backbone, NAMES).eval()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    method.reset_adaptation()
    method.adapt_and_predict(_views(backbone))
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert not dict(method.learned_parameters()) and not method.ctx.requires_grad


def test_reset_restores_the_context_and_a_fresh_optimiser(backbone):
    """After a step the AdamW moments exist; the reset empties them (a fresh AdamW's state, l.146 / l.275) and puts
    the initial context back, so adapting the same image again gives the same result; without the reset the second
    adaptation starts elsewhere and gives another one."""
    method = build_method("tpt", backbone, NAMES).eval()
    views = _views(backbone, seed=3)
    method.reset_adaptation()
    first = method.adapt_and_predict(views).logits
    tuned = method.ctx.clone()
    assert method._optimizer.state and not torch.equal(tuned, method.initial_ctx)
    carried = method.adapt_and_predict(views).logits  # no reset: the state of the last image is carried
    assert not torch.allclose(carried, first)
    method.reset_adaptation()
    fresh = torch.optim.AdamW([nn.Parameter(method.ctx.clone())], lr=method.config.lr)
    assert not method._optimizer.state and method._optimizer.state_dict()["state"] == fresh.state_dict()["state"]
    assert method._optimizer.state_dict()["param_groups"][0]["lr"] == fresh.state_dict()["param_groups"][0]["lr"]
    assert torch.equal(method.ctx, method.initial_ctx)
    torch.testing.assert_close(method.adapt_and_predict(views).logits, first, rtol=0, atol=0)
    assert torch.equal(method.ctx, tuned)


# ------------------------------------------------------------------------------------------- a stream
@pytest.mark.parametrize("name", ["tpt", "ctpt"])
def test_episodic_stream_is_order_free_repeatable_and_the_authors(name, vit_backbone, tiny_imagefolder):
    from vlprompt.data.registry import build_dataset

    splits = build_dataset("imagefolder", str(tiny_imagefolder))
    items = splits.test[:5]
    method = build_method(name, vit_backbone, splits.classnames).eval()
    views = views_for(vit_backbone, n_views=20, augmix=True, seed=7)
    first = adapt_stream(method, items, splits.loader, views)
    again = adapt_stream(method, items, splits.loader, views)
    shuffled = adapt_stream(method, items, splits.loader, views, order_seed=1)
    assert shuffled.order != first.order
    torch.testing.assert_close(again.logits, first.logits, rtol=0, atol=0)
    torch.testing.assert_close(shuffled.logits, first.logits, rtol=0, atol=0)
    assert torch.equal(method.ctx, method.initial_ctx) and not method._optimizer.state
    assert first.cost == {"image_forward": 20.0, "text_forward": 2.0, "backward": 1.0}
    reference = _reference(method)  # fresh prompt and optimiser for every image, as l.270-276
    for i in (0, 3):
        _, logits = reference(views(splits.loader(items[i].path), i))
        torch.testing.assert_close(first.logits[i], logits, **TOL)


# ------------------------------------------------------------------------------------------- starting points
def _perturb(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.learned_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _started(name, backbone, source_name, seed, tmp_path, **options):
    """A ``source_name`` prompt (its learned tensors perturbed by ``seed``) saved to a file, loaded back, and method
    ``name`` started from it: ``(path, the prompt saved, its loaded copy, method)``."""
    trained = build_method(source_name, backbone, NAMES, **options)
    _perturb(trained, seed)
    path = save_prompt(tmp_path / f"{source_name}.safetensors", trained)
    source = load_prompt(path, backbone, NAMES)
    method = build_method(name, backbone, NAMES).eval()
    method.start_from(source)
    return path, trained, source, method


@pytest.mark.parametrize("name", ["tpt", "ctpt"])
def test_start_from_a_coop_prompt_file(backbone, name, tmp_path):
    """TPT+CoOp (tpt_classification.py l.113-119): the file's context (of another length, 3) is the start; the
    unadapted prediction is CoOp's; the step is the reference's started from the file's ``ctx``."""
    path, _, source, method = _started(name, backbone, "coop", 1, tmp_path, n_ctx=3)
    views = _views(backbone, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(method(views[:4]), source.eval()(views[:4]), **TOL)
    out = method.adapt_and_predict(views)
    tensors, _ = read_prompt(path)
    reference = AuthorsStep(backbone.model, NAMES, tensors["prompt_learner.ctx"], "X X X", lr=method.config.lr,
                            lambda_term=getattr(method.config, "lambda_term", 0.0))
    ref_ctx, ref_logits = reference(views)
    torch.testing.assert_close(method.ctx, ref_ctx, **TOL)
    torch.testing.assert_close(out.logits, ref_logits, **TOL)
    method.reset_adaptation()
    assert torch.equal(method.ctx, tensors["prompt_learner.ctx"])


@pytest.mark.parametrize("name", ["tpt", "ctpt"])
def test_start_from_a_cocoop_prompt_file(backbone, name, tmp_path):
    """TPT+CoCoOp (cocoop.py gen_ctx / forward_ctx, tpt_classification.py l.55-58, 278-282): per image the start is
    ctx + meta_net(raw feature of the original view), tuned alone with a fresh AdamW."""
    path, cocoop, _, method = _started(name, backbone, "cocoop", 2, tmp_path)
    tensors, _ = read_prompt(path)
    hidden, vis = tensors["meta_net.linear1.weight"].shape
    meta_net = nn.Sequential(nn.Linear(vis, hidden), nn.ReLU(), nn.Linear(hidden, backbone.text_width))
    meta_net.load_state_dict({f"{i}.{k}": tensors[f"meta_net.linear{j}.{k}"]
                              for i, j in ((0, 1), (2, 2)) for k in ("weight", "bias")})
    reference = AuthorsStep(backbone.model, NAMES, tensors["prompt_learner.ctx"], "a photo of a",
                            lr=method.config.lr, lambda_term=getattr(method.config, "lambda_term", 0.0),
                            meta_net=meta_net)
    for seed in (5, 6):  # two images: each its own start, whatever came before
        views = _views(backbone, seed=seed)
        out = method.adapt_and_predict(views)
        ref_ctx, ref_logits = reference(views)
        torch.testing.assert_close(method.ctx, ref_ctx, **TOL)
        torch.testing.assert_close(out.logits, ref_logits, **TOL)
    with torch.no_grad():  # unadapted, with the normalised feature: CoCoOp's own prediction
        normalized = build_method(name, backbone, NAMES, cocoop_meta_input="normalized").eval()
        normalized.start_from(load_prompt(path, backbone, NAMES))
        torch.testing.assert_close(normalized(views[:3]), cocoop.eval()(views[:3]), **TOL)


@pytest.mark.parametrize("name", ["tpt", "ctpt"])
def test_start_from_a_maple_prompt_file_tunes_all_its_prompts(vit_backbone, name, tmp_path):
    """TPT+MaPLe as jameelhassan/PromptAlign trainers/prompt_align.py runs it without its alignment term
    (``tpt`` l.617-636: AdamW over all of MaPLe's prompt-learner tensors; ``reset`` l.236-252 restores all of
    them; ``test_time_tuning`` l.736-768: ``model(inputs)`` on every view through the prompted towers, the
    confident views, ``avg_entropy``, one step; the prediction re-encodes the original, l.711-716). The
    reference here is that loop written out on a copy of the loaded MaPLe prompt."""
    import copy
    import math

    path, _, source, method = _started(name, vit_backbone, "maple", 3, tmp_path)
    views = _views(vit_backbone, seed=7)
    out = method.adapt_and_predict(views)

    ref = copy.deepcopy(load_prompt(path, vit_backbone, NAMES)).eval()
    params = [p for _, p in ref.learned_parameters()]
    optimizer = torch.optim.AdamW(params, lr=method.config.lr)  # torch's default weight decay, as the authors
    logits = ref(views)  # [V, n_cls]
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    picked = logits[torch.argsort(entropy)[: int(logits.shape[0] * method.config.selection_p)]]
    log_p = picked - picked.logsumexp(dim=-1, keepdim=True)
    avg = log_p.logsumexp(dim=0) - math.log(picked.shape[0])
    loss = -(avg * avg.exp()).sum()
    if name == "ctpt":  # C-TPT's dispersion term on the same text features
        text = torch.nn.functional.normalize(ref.text_features().float(), dim=-1)
        loss = loss - method.config.lambda_term * (text - text.mean(dim=0)).norm(dim=-1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        ref_logits = ref(views[:1])[0]
        untuned = source.eval()(views[:1])[0]
    torch.testing.assert_close(out.logits, ref_logits, **TOL)
    assert not torch.allclose(out.logits, untuned, atol=1e-4)  # the step changed the prompts
    assert out.cost == {"image_forward": N_VIEWS + 1, "text_forward": 2, "backward": 1}
    method.reset_adaptation()  # every MaPLe tensor back to the file's, the optimiser fresh: the same again
    assert torch.equal(method.adapt_and_predict(views).logits, out.logits)
    saved, _ = read_prompt(path)
    assert all(torch.equal(p, saved[n]) for n, p in source.learned_parameters())  # the loaded source untouched
    assert all(p.grad is None and not p.requires_grad for p in vit_backbone.parameters())


def test_start_from_refuses_other_prompts_in_one_line(vit_backbone):
    method = build_method("tpt", vit_backbone, NAMES)
    sources = [build_method("coop", vit_backbone, NAMES, n_ctx=2, csc=True),
               build_method("zeroshot", vit_backbone, NAMES), build_method("kgcoop", vit_backbone, NAMES, n_ctx=2)]
    for source in sources:
        with pytest.raises(ValueError) as err:
            method.start_from(source)
        message = str(err.value)
        assert "\n" not in message and "'coop' prompt with unified context" in message and "'cocoop'" in message
        assert f"'{source.method_name}'" in message
    with pytest.raises(ValueError, match="other class names"):
        method.start_from(build_method("coop", vit_backbone, NAMES[:3], n_ctx=2))
    assert torch.equal(method.ctx, method.initial_ctx)  # a refusal changes nothing


# ------------------------------------------------------------------------------------------- options, CLI
@pytest.mark.parametrize(("options", "words"), [
    ({"selection_p": 1.5}, "at most 1"), ({"selection_p": 0}, "selection_p"), ({"tta_steps": -1}, "tta_steps"),
    ({"cocoop_meta_input": "x"}, "raw"), ({"lambda_term": -1.0}, "lambda_term")])
def test_bad_options_are_one_config_error(options, words):
    with pytest.raises(ConfigError, match=words):
        make_method_config("ctpt", options)


def test_zero_steps_predict_with_the_start_and_few_views_keep_one(vit_backbone):
    method = build_method("tpt", vit_backbone, NAMES, tta_steps=0).eval()
    views = _views(vit_backbone, n_views=4)
    out = method.adapt_and_predict(views)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, method(views[:1])[0], **TOL)
    assert out.cost == {"image_forward": 4, "text_forward": 1, "backward": 0}
    method = build_method("tpt", vit_backbone, NAMES).eval()  # int(4 * 0.1) = 0: one view is kept
    method.reset_adaptation()
    assert torch.isfinite(method.adapt_and_predict(views).logits).all()
    assert not torch.equal(method.ctx, method.initial_ctx)


def test_train_refuses_a_test_time_method_with_the_way_to_run_it(tmp_path, tiny_imagefolder, capsys):
    from vlprompt.cli.main import main

    from conftest import tiny_config, write_config

    raw = tiny_config(tmp_path, tiny_imagefolder)
    raw["method"] = {"name": "tpt"}
    cfg = write_config(tmp_path / "cfg.yaml", **raw)
    assert main(["train", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "adapts at test time" in err and "Traceback" not in err
