"""GalLoP against an independent re-implementation of the authors' computation (MarcLafon/gallop, commit f75999e).

The reference below is written from the authors' files, cited per function, on the raw open_clip weights of the
tiny towers (fp32, CPU; their code runs fp16 on CUDA): it shares no code with ``vlprompt.methods.gallop``. Our
features, prediction, loss (values and gradients) and OOD scores must equal it on the same random weights.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vlprompt.core.errors import ConfigError
from vlprompt.methods.gallop.model import topk_patch_mean
from vlprompt.methods.registry import build_method

NAMES = ["red thing", "green thing", "blue thing", "yellow circle"]


# ------------------------------------------------------------------------------------ the reference
def ref_text(model, names: list[str], prompts: torch.Tensor) -> torch.Tensor:
    """gallop.py:176-245: class names tokenised alone, [SOS] + prompt + name tokens (the last n_ctx padding slots
    dropped), positional embedding, causal transformer, ln_final, the EOT token (shifted by n_ctx), text projection;
    one pass per prompt, stacked ``[C, K, E]`` and L2-normalised (train.py:44-45)."""
    ids = open_clip.tokenize(names)
    eot = ids.argmax(dim=-1)
    n_ctx = prompts.shape[1]
    emb = model.token_embedding(ids)
    prefix, suffix = emb[:, :1], emb[:, 1:-n_ctx]
    out = []
    for prompt in prompts:
        x = torch.cat([prefix, prompt.unsqueeze(0).expand(len(names), -1, -1), suffix], dim=1)
        x = x + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        out.append(x[torch.arange(len(names)), eot + n_ctx] @ model.text_projection)
    feats = torch.stack(out, dim=1)
    return feats / feats.norm(dim=-1, keepdim=True)


def ref_image(model, images: torch.Tensor, local_proj_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ``[B, E]`` and local ``[B, P, E]`` features (clip_local.py:70-102, 200-218, 280-300; gallop.py:247-257).

    ViT: the last block also returns its "value path" ``v = x + out_proj(W_v ln_1(x) + b_v)``, then
    ``v + mlp(ln_2(v))``; locals are ``ln_post(v)`` of the patches, ``local_proj``, then ``proj``. ResNet: the
    attention pool's value and output projections at every position, then ``local_proj`` (no separate projection)."""
    v = model.visual
    if hasattr(v, "attnpool"):
        fmap = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))
        glob = v.attnpool(fmap)
        pos = fmap.flatten(2).transpose(1, 2)  # [B, HW, C]
        loc = F.linear(F.linear(pos, v.attnpool.v_proj.weight, v.attnpool.v_proj.bias),
                       v.attnpool.c_proj.weight, v.attnpool.c_proj.bias)
        return glob, loc @ local_proj_w.t()
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    assert v.transformer.batch_first
    *first, last = v.transformer.resblocks
    for block in first:
        x = block(x)
    width = x.shape[-1]
    qkv = F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias)
    value = last.attn.out_proj(qkv[..., 2 * width :]) + x
    value = value + last.mlp(last.ln_2(value))
    x = last(x)
    glob = v.ln_post(x[:, 0]) @ v.proj
    loc = (v.ln_post(value[:, 1:]) @ local_proj_w.t()) @ v.proj
    return glob, loc


def ref_logits(model, images, names, gp, lp, w) -> tuple[torch.Tensor, torch.Tensor]:
    """gallop.py:259-289: cosines ``[B, C, G]`` (global) and ``[B, P, C, L]`` (local)."""
    glob, loc = ref_image(model, images, w)
    glob = glob / glob.norm(dim=-1, keepdim=True)
    loc = loc / loc.norm(dim=-1, keepdim=True)
    return (torch.einsum("bd,kmd->bkm", glob, ref_text(model, names, gp)),
            torch.einsum("bpd,knd->bpkn", loc, ref_text(model, names, lp)))


def ref_topk_reduce(local: torch.Tensor, topk: list[int]) -> torch.Tensor:
    """topk_reduce.py:9-32, written with a full sort: per local prompt i, mean of its k_i best patches."""
    maxk = min(max(topk), local.shape[1])
    best = local.sort(dim=1, descending=True).values[:, :maxk]
    if len(topk) == 1:
        return best.mean(dim=1)
    return torch.stack([best[:, :k, :, i].mean(dim=1) for i, k in enumerate(topk)], dim=-1)


def ref_loss(g, loc, targets, scale, topk, p):
    """global_local_loss.py:29-59 (the prompt-dropout indices drawn from torch's generator, as there)."""
    red = ref_topk_reduce(loc, topk)
    local_loss = F.cross_entropy(scale * red, targets.unsqueeze(-1).expand(-1, red.shape[-1]))
    keep = max(g.shape[-1] - int(p * g.shape[-1]), 1)
    index = torch.randint(g.shape[-1], (g.shape[0], 1, keep)).expand(-1, g.shape[1], -1)
    global_loss = F.cross_entropy(scale * g.gather(-1, index).mean(-1), targets)
    return global_loss + local_loss


def ref_scores(g, loc, temp=1.0):
    """gallop.py:372-404: GL-MCM, MCM and L-MCM (their sign: higher = OOD)."""
    mcm = -torch.softmax(g.mean(dim=-1) / temp, dim=-1).amax(dim=-1)
    lmcm = -torch.softmax(loc.mean(dim=-1) / temp, dim=-1).amax(dim=(1, 2))
    return {"gallop": mcm + lmcm, "gallop_mcm": mcm, "gallop_lmcm": lmcm}


# ------------------------------------------------------------------------------------ helpers
def _moved(backbone, **options):
    """A GalLoP whose learned tensors are moved off their (shared) initialisation."""
    torch.manual_seed(0)
    m = build_method("gallop", backbone, NAMES, **options)
    with torch.no_grad():
        m.global_prompt.add_(0.05 * torch.randn_like(m.global_prompt))
        m.local_prompts.add_(0.05 * torch.randn_like(m.local_prompts))
        m.local_proj.weight.add_(0.05 * torch.randn_like(m.local_proj.weight))
    return m


def _images(backbone, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g)


def _leaves(m):
    return [m.global_prompt.detach().clone().requires_grad_(), m.local_prompts.detach().clone().requires_grad_(),
            m.local_proj.weight.detach().clone().requires_grad_()]


# ------------------------------------------------------------------------------------ tests
def test_forward_prediction_and_ood_scores_equal_the_authors(tiny_backbone):
    m = _moved(tiny_backbone).eval()
    model, images = tiny_backbone.model, _images(tiny_backbone)
    with torch.no_grad():
        g_ref, l_ref = ref_logits(model, images, NAMES, *_leaves(m))
        feats, text = m.encode_images(images), m.text_features()
        g, loc = m._similarities(feats, text, m.n_global)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loc, l_ref, rtol=1e-5, atol=1e-6)
        # prediction: softmax(scale * (mean global + mean top-k local) / 2), gallop.py:424-444
        scale = float(tiny_backbone.logit_scale)
        probs = torch.softmax(scale * (g_ref.mean(-1) + ref_topk_reduce(l_ref, [5, 10, 15, 20]).mean(-1)) / 2, -1)
        torch.testing.assert_close(m(images).softmax(-1), probs, rtol=1e-5, atol=1e-6)
        ood = m.ood_features(images, local=True)
        for temp in (1.0, 0.5):
            for kind, ref in ref_scores(g_ref, l_ref, temp).items():
                torch.testing.assert_close(m.ood_score(ood, kind, temperature=temp), -ref, rtol=1e-5, atol=1e-6)
        # the generic scores still work, on GalLoP's own (learned) local features
        assert m.ood_score(ood, "glmcm").shape == (3,) and m.ood_score(ood[:, 0], "mcm").shape == (3,)
        with pytest.raises(ValueError, match="patch features"):
            m.ood_score(ood[:, 0], "gallop")


def test_loss_and_its_gradients_equal_the_authors(tiny_backbone):
    topk = [5, 10, 15, 20]  # more than the patches of the tiny towers (16 and 4): capped as theirs
    m = _moved(tiny_backbone).train()
    images, labels = _images(tiny_backbone, 4, seed=2), torch.tensor([0, 3, 1, 0])
    feats = m.encode_images(images)
    torch.manual_seed(7)
    out = m.training_loss(feats, labels)
    loss = out.total()
    assert set(out.terms) == {"global", "local"} and out.terms["local"][1] == 4 * 4
    loss.backward()
    leaves = _leaves(m)
    torch.manual_seed(7)  # the same prompt-dropout draw
    g_ref, l_ref = ref_logits(tiny_backbone.model, images, NAMES, *leaves)
    expected = ref_loss(g_ref, l_ref, labels, tiny_backbone.logit_scale, topk, 0.75)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for ours, ref in zip((m.global_prompt, m.local_prompts, m.local_proj.weight), leaves):
        assert ours.grad is not None and float(ours.grad.abs().sum()) > 0
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-4, atol=1e-4 * float(ref.grad.abs().max()))
    assert all(p.grad is None for p in tiny_backbone.parameters())


def test_prompt_dropout_draws_per_image_in_training_and_averages_in_eval(vit_backbone):
    m = _moved(vit_backbone, n_global_prompts=4, global_dropout_p=0.75)
    feats, labels = m.encode_images(_images(vit_backbone, 6)), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        g, _ = m._similarities(feats, m.text_features(), m.n_global)  # [B, C, 4]
        m.eval()
        torch.testing.assert_close(m._dropped_global(g), g.mean(-1))
        m.train()
        torch.manual_seed(3)
        drawn = m._dropped_global(g)  # one prompt (4 - int(3.0)) per image
        torch.manual_seed(3)
        index = torch.randint(4, (6, 1, 1))
        torch.testing.assert_close(drawn, g.gather(-1, index.expand(-1, g.shape[1], -1)).squeeze(-1))
    only_local = build_method("gallop", vit_backbone, NAMES, use_global_loss=False)
    assert set(only_local.training_loss(feats, labels).terms) == {"local"}


def test_topk_patch_mean_by_hand():
    # 1 image, 3 patches, 1 class, 2 local prompts with k = 2 and k = 5 (capped at 3 patches)
    sims = torch.tensor([[[[0.1, 0.3]], [[0.9, 0.2]], [[0.5, 0.4]]]])  # [1, 3, 1, 2]
    got = topk_patch_mean(sims, [2, 5])
    torch.testing.assert_close(got, torch.tensor([[[(0.9 + 0.5) / 2, (0.3 + 0.2 + 0.4) / 3]]]))
    torch.testing.assert_close(topk_patch_mean(sims, [1]), torch.tensor([[[0.9, 0.4]]]))


def test_defaults_prompts_and_option_errors(vit_backbone):
    m = build_method("gallop", vit_backbone, NAMES)
    cfg = m.config
    assert (cfg.n_global_prompts, cfg.n_local_prompts, cfg.topk, cfg.global_dropout_p) == (4, 4, [5, 10, 15, 20], 0.75)
    # every prompt starts as "a photo of a" (4 tokens), class names without a trailing "."
    assert m.global_prompt.shape[:2] == (4, 4) and torch.equal(m.global_prompt[0], m.local_prompts[3])
    ids = m.prompt_learner.token_ids[0]
    assert vit_backbone.decode(ids[5 : int(m.prompt_learner.eot_index[0])].tolist()).strip() == "red thing"
    assert torch.equal(m.local_proj.weight, torch.eye(m.local_proj.weight.shape[0]))
    assert {n for n, _ in m.learned_parameters()} == {"global_prompt", "local_prompts", "local_proj.weight"}
    frozen = build_method("gallop", vit_backbone, NAMES, learn_local_proj=False)
    assert "local_proj.weight" not in dict(frozen.learned_parameters())
    for bad, match in [({"topk": [1, 2]}, "one k for all"), ({"topk": [0]}, "topk"),
                       ({"global_dropout_p": 1.5}, "global_dropout_p"), ({"n_local_prompts": 0}, "n_local_prompts"),
                       ({"use_global_loss": False, "use_local_loss": False}, "at least one"),
                       ({"ctx_init": " "}, "ctx_init")]:
        with pytest.raises(ConfigError, match=match):
            build_method("gallop", vit_backbone, NAMES, **bad)


def test_unprojected_features_project_to_the_local_features(tiny_backbone):
    from vlprompt.backbones.local import image_projection, packed_global_local, packed_unprojected_global_local

    images = _images(tiny_backbone, 2)
    packed, raw = packed_global_local(tiny_backbone, images), packed_unprojected_global_local(tiny_backbone, images)
    proj = image_projection(tiny_backbone)
    torch.testing.assert_close(raw if proj is None else raw @ proj, packed, rtol=1e-5, atol=1e-6)
    assert proj is None or tiny_backbone.model.visual.proj is proj  # the projection is put back


@pytest.mark.slow
def test_a_trained_run_is_scored_by_vlprompt_ood_with_the_authors_scores(tmp_path, tiny_imagefolder):
    """Train one epoch through the trainer, then `vlprompt ood` (tasks.ood) on the run's prompt: GalLoP's own scores
    come first by default, and their metrics are those of the reference's scores on the learned tensors."""
    from vlprompt.backbones.build import build_backbone
    from vlprompt.config import config_from_dict
    from vlprompt.core.ood import ood_metrics
    from vlprompt.data.images import load_image
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.engine.checkpoint import load_prompt
    from vlprompt.engine.trainer import train
    from vlprompt.tasks.ood import ood_evaluate

    from conftest import tiny_config
    from data_trees import make_imagefolder

    raw = tiny_config(tmp_path, tiny_imagefolder, data={"shots": 2, "augment": False},
                      optim={"max_epoch": 1, "batch_size": 3, "lr": 0.05})
    raw["method"] = {"name": "gallop", "n_global_prompts": 2, "n_local_prompts": 2, "topk": [2, 3]}
    cfg = config_from_dict(raw)
    run = train(cfg)
    assert 0 <= run.test["accuracy"] <= 100
    prompt = tmp_path / "run" / "prompt.safetensors"
    ood = make_imagefolder(tmp_path / "ood", classes=("x",), per_class=3, size=32) / "train"
    out = ood_evaluate(cfg, prompt, [str(ood)], progress=False)
    assert out["scores"][:3] == ["gallop", "gallop_mcm", "gallop_lmcm"] and "glmcm" in out["scores"]
    assert out["id_accuracy"] == pytest.approx(run.test["accuracy"])  # GalLoP's global + local prediction

    backbone = build_backbone(cfg.backbone, device="cpu")
    m = load_prompt(prompt, backbone)
    assert not torch.equal(m.local_proj.weight, torch.eye(m.local_proj.weight.shape[0]))  # it learned
    tf = backbone.eval_transform()
    scores = []
    for paths in ([d.path for d in load_dataset(cfg.data).test], sorted(ood.rglob("*.png"))):
        images = torch.stack([tf(load_image(str(p))) for p in paths])
        with torch.no_grad():
            g, loc = ref_logits(backbone.model, images, m.classnames, *_leaves(m))
        scores.append({k: (-v).numpy() for k, v in ref_scores(g, loc).items()})
    for kind in ("gallop", "gallop_mcm", "gallop_lmcm"):
        assert out["per_set"]["train"][kind] == pytest.approx(ood_metrics(scores[0][kind], scores[1][kind]))
