"""CoCoOp: batched B x n_cls text pass equals the reference image-by-image loop; gradients; save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.methods.registry import build_method

CLASSES = ["dog", "golden_retriever", "traffic light", "cat"]


def _reference_logits(model, image_features):
    """CoCoOp's published forward, transcribed: one text pass over all classes per image."""
    pl = model.prompt_learner
    img = F.normalize(image_features, dim=-1)
    ctx_shifted = pl.ctx.unsqueeze(0) + model.meta_net(img).unsqueeze(1)  # (batch, n_ctx, ctx_dim)
    rows = []
    for ctx_i, imf_i in zip(ctx_shifted, img):
        prompts_i = pl(ctx_i)  # (n_cls, n_tkn, ctx_dim)
        text = F.normalize(model.backbone.encode_text_embeddings(prompts_i, pl.eot_index), dim=-1)
        rows.append(model.backbone.logit_scale * imf_i @ text.t())
    return torch.stack(rows)


@pytest.mark.parametrize("per_pass", [1, 5, 8192])
def test_batched_equals_image_by_image(tiny_backbone, per_pass):
    torch.manual_seed(0)
    model = build_method("cocoop", tiny_backbone, CLASSES, max_prompts_per_pass=per_pass)
    with torch.no_grad():
        for p in model.meta_net.parameters():
            p.normal_(std=0.1)
    feats = torch.randn(6, tiny_backbone.embed_dim)
    with torch.no_grad():
        ours = model.forward_features(feats)
        ref = _reference_logits(model, feats)
    assert ours.shape == (6, len(CLASSES))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    # prompts really differ per image
    assert not torch.allclose(model.text_features_for(feats[:1]), model.text_features_for(feats[1:2]))


def test_meta_net_shape_and_defaults(vit_backbone):
    model = build_method("cocoop", vit_backbone, CLASSES)
    e, d = vit_backbone.embed_dim, vit_backbone.text_width
    assert model.meta_net.linear1.in_features == e and model.meta_net.linear1.out_features == e // 16
    assert model.meta_net.linear2.out_features == d
    assert model.ctx.shape == (4, d)  # "a photo of a"


def test_zero_meta_net_reduces_to_coop(vit_backbone):
    cocoop = build_method("cocoop", vit_backbone, CLASSES)
    coop = build_method("coop", vit_backbone, CLASSES, ctx_init="a photo of a")
    with torch.no_grad():
        cocoop.meta_net.linear2.weight.zero_()
        cocoop.meta_net.linear2.bias.zero_()
        feats = torch.randn(3, vit_backbone.embed_dim)
        torch.testing.assert_close(cocoop.forward_features(feats), coop.forward_features(feats),
                                   rtol=1e-5, atol=1e-4)


def test_cocoop_trains_and_round_trips_through_a_prompt_file(tmp_path, tiny_imagefolder):
    from vlprompt.config import config_from_dict
    from vlprompt.engine.checkpoint import load_prompt
    from vlprompt.engine.trainer import train

    from conftest import tiny_config

    raw = tiny_config(tmp_path, tiny_imagefolder, method={"name": "cocoop", "n_ctx": 4},
                      optim={"max_epoch": 2}, data={"augment": False})
    raw["method"] = {"name": "cocoop"}
    metrics = train(config_from_dict(raw))
    model = load_prompt(tmp_path / "run" / "prompt.safetensors")
    assert model.method_name == "cocoop"
    from vlprompt.tasks.api import evaluate

    report = evaluate(config_from_dict(raw), tmp_path / "run" / "prompt.safetensors", progress=False)
    assert report["accuracy"] == pytest.approx(metrics.test["accuracy"])
