"""Deep prompts (backbones/deep_prompts.py) and the methods built on them: ivlp, vpt_deep, deep_language, maple.

The reference below is an independent re-implementation, written for this test, of what the authors'
code computes (muzairkhattak/multimodal-prompt-learning @ 69bce21):

* the blocks: clip/model.py ``ResidualAttentionBlock_IVLP.forward`` (lines 229-256) and
  ``ResidualAttentionBlock_MaPLe.forward`` (lines 287-331), run in their [L, N, D] layout, with the
  attention written out by hand (q k^T / sqrt(d) + mask, softmax, v) instead of open_clip's block;
* the text encoder: trainers/maple.py / trainers/independentVL.py ``TextEncoder.forward`` (prompts +
  positional embedding over the full 77 tokens, ln_final, EOT = argmax of the token ids, projection);
* the image encoder: clip/model.py ``VisionTransformer.forward`` (lines 393-422) and
  ``VisionTransformer_MaPLe.forward`` (lines 445-476): prompts appended after the patch tokens before
  ln_pre, the last n tokens replaced at blocks 1..J-1, ln_post of the class token, projection;
* the prompt learners: independentVL.py lines 82-114 and maple.py ``MultiModalPromptLearner`` (init from
  the first n_ctx tokens of "a photo of a", prompt text "a photo of a {name}."; V_0 = proj(ctx),
  V_i = proj_i(P_i)); logits = exp(logit_scale) * cos (maple.py ``CustomCLIP.forward``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.deep_prompts import encode_image_deep, encode_text_deep
from vlprompt.core.errors import ConfigError, ModelError
from vlprompt.methods.registry import build_method, get_method, make_method_config

CLASSES = ["circle", "red star", "big_square"]


# ------------------------------------------------------------------------------------------- reference
def ref_block(blk: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x + attn(ln_1(x)); x + mlp(ln_2(x)) on ``x [L, N, D]`` (clip/model.py lines 254-255, 329-330)."""
    assert isinstance(blk.ls_1, nn.Identity) and isinstance(blk.ls_2, nn.Identity)
    a = blk.attn
    h = blk.ln_1(x)
    length, n, d = h.shape
    heads = a.num_heads
    q, k, v = (h @ a.in_proj_weight.t() + a.in_proj_bias).chunk(3, dim=-1)

    def split(z):  # [L, N, D] -> [N * heads, L, d/heads]
        return z.reshape(length, n * heads, d // heads).transpose(0, 1)

    q, k, v = split(q), split(k), split(v)
    att = q @ k.transpose(1, 2) / math.sqrt(d // heads)
    if mask is not None:
        att = att + mask
    o = (att.softmax(-1) @ v).transpose(0, 1).reshape(length, n, d)
    x = x + a.out_proj(o)
    return x + blk.mlp(blk.ln_2(x))


def ref_text(model, prompts, tokenized, deep, n_ctx):
    """TextEncoder.forward with deep language prompts replacing positions 1..n_ctx at blocks 1..len(deep)."""
    x = prompts + model.positional_embedding
    x = x.permute(1, 0, 2)  # NLD -> LND
    mask = torch.full((x.shape[0], x.shape[0]), float("-inf")).triu_(1)  # CLIP's build_attention_mask
    counter = 0
    for i, blk in enumerate(model.transformer.resblocks):
        if i > 0 and counter < len(deep):
            ctx = deep[counter].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], ctx, x[1 + n_ctx:]], dim=0)
            counter += 1
        x = ref_block(blk, x, mask)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection


def ref_image(visual, image, first, deep):
    """VisionTransformer(_MaPLe).forward with prompts ``first [n, W]`` and replacements ``deep``."""
    x = visual.conv1(image)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = x + visual.positional_embedding
    n = 0
    if first is not None:
        n = first.shape[0]
        x = torch.cat([x, first.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)
    counter = 0
    for i, blk in enumerate(visual.transformer.resblocks):
        if i > 0 and counter < len(deep):
            x = torch.cat([x[: x.shape[0] - n], deep[counter].expand(x.shape[1], -1, -1).permute(1, 0, 2)], dim=0)
            counter += 1
        x = ref_block(blk, x, None)
    x = visual.ln_post(x.permute(1, 0, 2)[:, 0, :])
    return x @ visual.proj


def ref_prompts(model, tokenizer, classnames, ctx, ctx_init="a photo of a"):
    """independentVL.py lines 82-114 / maple.py: prefix = SOS, suffix = tokens after 1 + n_ctx."""
    n_ctx = ctx.shape[0]
    names = [c.replace("_", " ") for c in classnames]
    tokenized = tokenizer([f"{ctx_init} {name}." for name in names])
    emb = model.token_embedding(tokenized)
    prompts = torch.cat([emb[:, :1], ctx.expand(len(names), -1, -1), emb[:, 1 + n_ctx:]], dim=1)
    init = model.token_embedding(tokenizer([ctx_init]))[0, 1:1 + n_ctx]
    return prompts, tokenized, init


def ref_logits(model, img, txt):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    return model.logit_scale.exp() * img @ txt.t()


def _randomise(method, seed=0):
    """Move every learned tensor away from its initial value (so the comparison is not at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in method.learned_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def vit():
    from vlprompt.backbones.openclip import load_backbone

    return load_backbone("vlprompt-test-vit", None)


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("depth", [1, 2])
def test_ivlp_matches_the_reference(vit, images, depth):
    m = build_method("ivlp", vit, CLASSES, n_ctx_text=2, n_ctx_vision=3, prompt_depth_text=depth,
                     prompt_depth_vision=depth).eval()
    model = vit.model
    prompts, tokenized, init = ref_prompts(model, vit.tokenizer, CLASSES, m.text_prompt.ctx.detach())
    torch.testing.assert_close(m.text_prompt.ctx.detach(), init)  # "a photo" of "a photo of a"
    assert len(m.text_deep) == len(m.vision_deep) == depth - 1
    _randomise(m)
    with torch.no_grad():
        prompts, tokenized, _ = ref_prompts(model, vit.tokenizer, CLASSES, m.text_prompt.ctx)
        txt = ref_text(model, prompts, tokenized, list(m.text_deep), 2)
        img = ref_image(model.visual, images, m.vision_ctx, list(m.vision_deep))
        expected = ref_logits(model, img, txt)
        got = m(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_maple_matches_the_reference(vit, images):
    m = build_method("maple", vit, CLASSES).eval()  # J = 9 clamped to the 2-block towers
    model = vit.model
    assert len(m.compound_prompts_text) == 1 and m.text_prompt.n_ctx == 2
    _randomise(m)
    with torch.no_grad():
        prompts, tokenized, _ = ref_prompts(model, vit.tokenizer, CLASSES, m.text_prompt.ctx)
        txt = ref_text(model, prompts, tokenized, list(m.compound_prompts_text), 2)
        first = m.proj.weight @ m.text_prompt.ctx.t()
        first = first.t() + m.proj.bias
        deep = [p @ f.weight.t() + f.bias for f, p in zip(m.compound_prompt_projections, m.compound_prompts_text)]
        img = ref_image(model.visual, images, first, deep)
        expected = ref_logits(model, img, txt)
        got = m(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_maple_couplings_start_as_copies_of_one_layer(vit):
    from vlprompt.backbones.openclip import load_backbone  # a deeper tower is not shipped: check the rule on 2

    m = build_method("maple", vit, CLASSES, prompt_depth=2)
    assert len(m.compound_prompt_projections) == 1
    m3 = build_method("maple", load_backbone("vlprompt-test-vit"), CLASSES, prompt_depth=1)
    assert len(m3.compound_prompt_projections) == 0 and len(m3.compound_prompts_text) == 0


def test_shared_prefix_pass_equals_the_full_deep_text_pass(vit):
    """SOS + deep prompts are class-independent at every block (causal mask): the shared-prefix pass that the
    methods use gives the full pass's features and gradients."""
    from vlprompt.backbones.shared_prefix import supports_shared_prefix

    assert supports_shared_prefix(vit._tower.transformer)
    m = build_method("ivlp", vit, CLASSES, n_ctx_text=2, prompt_depth_text=2)
    _randomise(m, seed=5)
    tp, deep = m.text_prompt, list(m.text_deep)
    shared = tp.encode(vit, deep)
    full = encode_text_deep(vit, tp(), tp.eot_index, deep, n_ctx=tp.n_ctx, truncate=False)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    g_shared = torch.autograd.grad(shared.square().sum(), [tp.ctx, *deep])
    g_full = torch.autograd.grad(full.square().sum(), [tp.ctx, *deep])
    for a, b in zip(g_shared, g_full):  # float32 summation orders differ: tolerance relative to the gradient's size
        torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, float(b.abs().max())), rtol=1e-4)


def test_without_prompts_the_deep_path_is_the_plain_encoder(vit, images):
    with torch.no_grad():
        torch.testing.assert_close(encode_image_deep(vit, images, None, []), vit.encode_image(images))
        ids = vit.tokenize(["a photo of a circle.", "a red star"])
        plain = vit.encode_text(ids)
        deep = encode_text_deep(vit, vit.token_embedding(ids), vit.eot_index(ids), [], n_ctx=0)
        torch.testing.assert_close(deep, plain)
        # the open_clip model's own forward agrees too
        torch.testing.assert_close(deep, vit.model.encode_text(ids.to(vit.device)), atol=1e-5, rtol=1e-5)


def test_vpt_deep_uses_the_fixed_clip_prompt_and_deep_language_the_frozen_image_tower(vit, images):
    vpt = build_method("vpt_deep", vit, CLASSES).eval()
    ids = vit.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    with torch.no_grad():
        torch.testing.assert_close(vpt.text_features(), F.normalize(vit.model.encode_text(ids), dim=-1))
    assert vpt.vision_ctx.shape == (8, 64) and vpt.capabilities.modifies_encoders
    dl = build_method("deep_language", vit, CLASSES).eval()
    assert dl.text_prompt.n_ctx == 4 and dl.vision_ctx is None and not dl.capabilities.modifies_encoders
    with torch.no_grad():
        torch.testing.assert_close(dl.encode_images(images), vit.encode_image(images))


def test_capabilities_are_declared():
    """Methods that learn in the image tower modify the encoders; deep_language (and an ivlp config without
    vision prompts) does not: its image features are the frozen tower's and may be cached."""
    for name in ("ivlp", "vpt_deep", "maple", "promptsrc"):
        caps = get_method(name).capabilities_for()
        assert caps.modifies_encoders and caps.training == "sgd" and not caps.image_conditional
    assert not get_method("deep_language").capabilities_for().modifies_encoders
    ivlp = get_method("ivlp")
    assert not ivlp.capabilities_for(make_method_config("ivlp", {"n_ctx_vision": 0})).modifies_encoders
    promptsrc = get_method("promptsrc")  # trains on packed prompted + frozen features: never cached
    assert promptsrc.capabilities_for(make_method_config("promptsrc", {"n_ctx_vision": 0})).modifies_encoders


def test_image_towers_without_tokens_are_refused_clearly():
    from vlprompt.backbones.openclip import load_backbone

    rn = load_backbone("vlprompt-test-rn", None)
    for name in ("maple", "ivlp", "vpt_deep", "promptsrc"):
        with pytest.raises(ModelError, match="not a vision transformer"):
            build_method(name, rn, CLASSES)
    m = build_method("deep_language", rn, CLASSES)  # text prompts alone are fine on a ResNet model
    assert m(torch.randn(2, 3, rn.image_size, rn.image_size)).shape == (2, 3)


def test_bad_options_are_config_errors(vit):
    with pytest.raises(ConfigError, match="nothing to learn"):
        build_method("ivlp", vit, CLASSES, n_ctx_text=0, n_ctx_vision=0)
    with pytest.raises(ConfigError, match="method.n_ctx"):
        build_method("maple", vit, CLASSES, n_ctx=4, ctx_init="a photo")


@pytest.mark.world
def test_modifying_methods_are_never_served_cached_features(vit, tmp_path):
    """Training encodes images every step and evaluation sees the current prompts (no stale cache)."""
    from vlprompt.config import config_from_dict
    from vlprompt.data.pipeline import prepare_data
    from vlprompt.engine.distributed import SINGLE
    from vlprompt.engine.evaluate import evaluate_items
    from vlprompt.engine.loop import train_loader

    raw = {"method": {"name": "maple"}, "backbone": {"model": "vlprompt-test-vit", "pretrained": None},
           "data": {"dataset": "world_shapes", "shots": 1, "num_workers": 0, "augment": False,
                    "options": {"n_train": 1, "n_val": 1, "n_test": 1, "image_size": 32}},
           "optim": {"batch_size": 4}, "train": {"device": "cpu", "progress": False, "output_dir": str(tmp_path)}}
    cfg = config_from_dict(raw)
    data = prepare_data(cfg.data, seed=1)
    m = build_method("maple", vit, data.splits.classnames).eval()
    images, _ = next(iter(train_loader(m, data, vit, cfg, torch.device("cpu"), SINGLE, False)))
    assert images.dim() == 4  # images, not cached features
    items = data.splits.test[:6]
    calls = []
    encode = m.encode_images

    def counting(x):
        calls.append(x.shape[0])
        return encode(x)

    m.encode_images = counting
    r1 = evaluate_items(m, items, data.splits.loader, batch_size=6, disk_dir=str(tmp_path / "cache"))
    r2 = evaluate_items(m, items, data.splits.loader, batch_size=6, disk_dir=str(tmp_path / "cache"))
    assert calls == [6, 6] and r1 == r2  # encoded anew each time, never read from the backbone / disk cache
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.world
@pytest.mark.parametrize("name", ["maple", "ivlp"])
def test_train_eval_predict_through_the_cli(tmp_path, capsys, name):
    from vlprompt.cli.main import main

    from conftest import write_config

    cfg = write_config(
        tmp_path / "cfg.yaml",
        method={"name": name},
        backbone={"model": "vlprompt-test-vit", "pretrained": None},
        data={"dataset": "world_shapes", "shots": 1, "num_workers": 0,
              "options": {"n_train": 1, "n_val": 1, "n_test": 1, "image_size": 32}},
        optim={"max_epoch": 1, "batch_size": 4, "lr": 0.0035},
        train={"device": "cpu", "progress": False, "tensorboard": False, "output_dir": str(tmp_path / "run")},
    )
    assert main(["train", "-c", str(cfg)]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == name and math.isfinite(metrics["history"][0]["loss"])
    assert main(["eval", "--run", str(run), "--no-progress"]) == 0
    report = next(run.glob("eval_*_test.json"))
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    capsys.readouterr()
    from vlprompt.engine.checkpoint import read_prompt

    tensors, _ = read_prompt(run / "prompt.safetensors")
    assert "text_prompt.ctx" in tensors
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(img_dir / "a.png")
    assert main(["predict", "-p", str(run / "prompt.safetensors"), str(img_dir), "--topk", "2",
                 "--json", str(tmp_path / "p.json")]) == 0
    preds = json.loads((tmp_path / "p.json").read_text())
    assert len(preds) == 1 and len(preds[0]["top"]) == 2


@pytest.mark.world
def test_maple_on_a_resnet_model_is_one_error_line(tmp_path, capsys):
    from vlprompt.cli.main import main

    from conftest import write_config

    cfg = write_config(
        tmp_path / "cfg.yaml", method={"name": "maple"}, backbone={"model": "vlprompt-test-rn", "pretrained": None},
        data={"dataset": "world_shapes", "shots": 1, "num_workers": 0,
              "options": {"n_train": 1, "n_val": 1, "n_test": 1, "image_size": 32}},
        optim={"max_epoch": 1, "batch_size": 4},
        train={"device": "cpu", "progress": False, "tensorboard": False, "output_dir": str(tmp_path / "run")})
    assert main(["train", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not a vision transformer" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- PromptSRC
def test_promptsrc_loss_matches_the_reference(vit, images):
    """muzairkhattak/PromptSRC trainers/promptsrc.py: teacher text = mean over the 60 templates of
    trainers/imagenet_templates.py (the first 60 of CLIP's 80) of the frozen encode_text, then normalised
    (lines 116-128, 199-200); loss = CE + KL(sum, log_target) / numel + 25 * L1(text) + 10 * L1(image)
    (lines 297-313); the prompted model is IVLP's (clip/model.py, trainer 'IVLP' blocks)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from vlprompt.methods.promptsrc.config import PromptSRCConfig

    assert PromptSRCConfig().n_templates == 60  # the default; 12 here keeps the test fast
    m = build_method("promptsrc", vit, CLASSES, n_templates=12).train()
    _randomise(m, seed=3)
    model, labels = vit.model, torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        names = [c.replace("_", " ") for c in CLASSES]
        per_template = [model.encode_text(vit.tokenizer([t("{}").replace("{}", n) for n in names]))
                        for t in OPENAI_IMAGENET_TEMPLATES[:12]]
        fixed = torch.stack(per_template, dim=1).mean(dim=1)
        fixed = fixed / fixed.norm(dim=-1, keepdim=True)
        prompts, tokenized, _ = ref_prompts(model, vit.tokenizer, CLASSES, m.text_prompt.ctx)
        txt = F.normalize(ref_text(model, prompts, tokenized, list(m.text_deep), 4), dim=-1)
        img = F.normalize(ref_image(model.visual, images, m.vision_ctx, list(m.vision_deep)), dim=-1)
        scale = model.logit_scale.exp()
        logits = scale * img @ txt.t()
        zs_img = F.normalize(model.visual(images), dim=-1)
        zs_logits = scale * zs_img @ fixed.t()
        expected = (F.cross_entropy(logits, labels)
                    + F.kl_div(F.log_softmax(logits, 1), F.log_softmax(zs_logits, 1), reduction="sum",
                               log_target=True) / logits.numel()
                    + F.l1_loss(txt, fixed) * 25 + F.l1_loss(img, zs_img) * 10)
    out = m.training_loss(m.encode_images(images), labels)
    loss, got_logits = out.total(), out.logits  # one process: the sum of the terms' means
    torch.testing.assert_close(got_logits.detach(), logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-4, rtol=1e-4)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in m.learned_parameters())
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(images), logits, atol=1e-4, rtol=1e-4)  # inference = IVLP's logits


def test_promptsrc_gaussian_prompt_aggregation(vit):
    """promptsrc.py lines 262-335: weights N(e; 15, 1) at epochs 1..N normalised; after the last epoch the
    prompts are sum_e w_e * prompts_e."""
    import numpy as np

    m = build_method("promptsrc", vit, CLASSES, gpa_mean=2.0, gpa_std=1.0, n_templates=2)
    n = 4
    e = np.arange(1, n + 1)
    w = np.exp(-0.5 * (e - 2.0) ** 2) / np.sqrt(2 * np.pi)
    w = w / w.sum()
    snapshots = []
    for epoch in range(n):
        with torch.no_grad():
            for _, p in m.learned_parameters():
                p.normal_()
        snapshots.append({k: p.detach().clone() for k, p in m.learned_parameters()})
        m.on_epoch_end(epoch, n)
    for k, p in m.learned_parameters():
        expected = sum(float(w[i]) * snapshots[i][k] for i in range(n))
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)
    state = m.learned_state()  # the aggregate travels with checkpoints (exact resume)
    assert any(k.startswith("gpa.") for k in state)
    m2 = build_method("promptsrc", vit, CLASSES, gpa_mean=2.0, gpa_std=1.0, n_templates=2)
    m2.load_learned_state(state)
    for k, p in m2.learned_parameters():
        torch.testing.assert_close(p, dict(m.learned_parameters())[k])


@pytest.mark.world
def test_promptsrc_trains_and_evaluates_through_the_cli(tmp_path):
    from vlprompt.cli.main import main

    from conftest import write_config

    cfg = write_config(
        tmp_path / "cfg.yaml", method={"name": "promptsrc", "n_templates": 2},
        backbone={"model": "vlprompt-test-vit", "pretrained": None},
        data={"dataset": "world_shapes", "shots": 1, "num_workers": 0,
              "options": {"n_train": 1, "n_val": 1, "n_test": 1, "image_size": 32}},
        optim={"max_epoch": 2, "batch_size": 4, "lr": 0.0025},
        train={"device": "cpu", "progress": False, "tensorboard": False, "output_dir": str(tmp_path / "run")})
    assert main(["train", "-c", str(cfg)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and all(math.isfinite(h["loss"]) for h in metrics["history"])
    assert main(["eval", "--run", str(tmp_path / "run"), "--no-progress"]) == 0
    report = json.loads(next((tmp_path / "run").glob("eval_*_test.json")).read_text())
    assert report["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_promptsrc_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny_imagefolder, monkeypatch):
    """The Gaussian aggregate travels with the training checkpoints: a resumed run ends with the same prompt."""
    import vlprompt.engine.loop as loop_mod
    import vlprompt.engine.trainer as trainer_mod
    from vlprompt.config import config_from_dict
    from vlprompt.engine.checkpoint import read_prompt

    from conftest import tiny_config

    def raw(name):
        cfg = tiny_config(tmp_path, tiny_imagefolder, data={"shots": 2},
                          optim={"max_epoch": 3, "batch_size": 4, "lr": 0.01},
                          train={"output_dir": str(tmp_path / name)})
        cfg["method"] = {"name": "promptsrc", "n_templates": 1, "gpa_mean": 2.0, "gpa_std": 1.0}
        return cfg

    raw_full = raw("full")
    trainer_mod.train(config_from_dict(raw_full))
    ref, _ = read_prompt(tmp_path / "full" / "prompt.safetensors")

    original = loop_mod.save_training_state

    class Killed(Exception):
        pass

    def save_then_die(folder, epoch, *args, **kwargs):
        path = original(folder, epoch, *args, **kwargs)
        if epoch + 1 == 2:
            raise Killed()
        return path

    raw_cut = raw("cut")
    monkeypatch.setattr(loop_mod, "save_training_state", save_then_die)
    with pytest.raises(Killed):
        trainer_mod.train(config_from_dict(raw_cut))
    monkeypatch.setattr(loop_mod, "save_training_state", original)
    trainer_mod.train(config_from_dict(raw_cut), resume=True)
    got, _ = read_prompt(tmp_path / "cut" / "prompt.safetensors")
    assert set(got) == set(ref) and any(k.startswith("gpa.") for k in got)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-6)
