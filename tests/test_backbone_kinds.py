"""Every open_clip text-tower kind: all architectures classified, prompts exact, methods train or refuse.

One tiny random-init representative per kind (``backbones/model_configs/vlprompt-test-*.json``):
causal EOT pooling (CLIP), bidirectional ``last`` pooling (SigLIP / SigLIP 2 / CLIPA), bidirectional
EOT pooling (MobileCLIP-S), appended class token with padding mask (CoCa). Each is checked against
open_clip's own ``encode_text`` of the written sentence.
"""

from __future__ import annotations

import collections

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones.base import TOWER_KINDS, Backbone
from vlprompt.backbones.catalog import classify, open_clip_catalog, text_kind_of
from vlprompt.backbones.configs import register_model_configs
from vlprompt.backbones.openclip import load_backbone
from vlprompt.core.errors import ModelError
from vlprompt.methods.registry import build_method

KINDS = {
    "vlprompt-test-vit": "causal-eot",
    "vlprompt-test-lastpool": "bidir-last",
    "vlprompt-test-mobileclip": "bidir-eot",
    "vlprompt-test-coca": "appended-cls",
}
CLASSES = ["dog", "golden_retriever", "traffic light"]
TEXTS = ["a photo of a dog.", "x", "a small red striped triangle", ""]


@pytest.fixture(scope="module", params=list(KINDS))
def kind_backbone(request):
    return load_backbone(request.param)


def _open_clip_text(backbone, texts):
    """open_clip's own features of the written sentences (its tokenizer, its encode_text)."""
    ids = open_clip.get_tokenizer(backbone.name)(texts)
    with torch.no_grad():
        return backbone.model.encode_text(ids, normalize=False)


def test_every_open_clip_architecture_is_classified():
    """The 144 architectures of open_clip 3.3.0 fall into the kinds counted in issue 15's table."""
    entries = [e for e in open_clip_catalog() if not e.name.startswith("vlprompt-")]
    counts = collections.Counter(e.text_kind for e in entries)
    assert set(counts) <= set(TOWER_KINDS)
    assert len(entries) == 144
    assert counts == {"causal-eot": 92, "bidir-last": 32, "bidir-eot": 7, "hf-encoder": 10, "appended-cls": 3}
    by_name = {e.name: e for e in entries}
    assert by_name["ViT-B-16-SigLIP2"].text_kind == by_name["ViT-L-14-CLIPA"].text_kind == "bidir-last"
    assert by_name["MobileCLIP-S2"].text_kind == "bidir-eot" and by_name["MobileCLIP-B"].text_kind == "causal-eot"
    assert by_name["coca_ViT-B-32"].text_kind == "appended-cls"
    assert by_name["xlm-roberta-base-ViT-B-32"].text_kind == "hf-encoder"
    assert by_name["ViT-B-16-quickgelu"].local_features and by_name["RN50"].local_features
    assert not by_name["ViT-B-16-SigLIP"].local_features and not by_name["coca_ViT-B-32"].local_features


def test_tiny_representative_is_classified_like_its_config(kind_backbone):
    assert isinstance(kind_backbone, Backbone)
    register_model_configs()
    cfg = open_clip.get_model_config(kind_backbone.name)
    assert kind_backbone.text_facts.kind == text_kind_of(cfg) == KINDS[kind_backbone.name]
    assert classify(kind_backbone.name, cfg).local_features == (kind_backbone.local_features_unsupported() is None)


@pytest.mark.slow
def test_text_path_equals_open_clip_encode_text(kind_backbone):
    ids = open_clip.get_tokenizer(kind_backbone.name)(TEXTS)
    assert torch.equal(kind_backbone.tokenize(TEXTS), ids)
    with torch.no_grad():
        ours = kind_backbone.encode_text(ids)
    torch.testing.assert_close(ours, _open_clip_text(kind_backbone, TEXTS), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [{"class_token_position": "end"}, {"class_token_position": "front"},
                                    {"csc": True}])
def test_coop_with_sentence_context_equals_the_written_prompt(kind_backbone, layout):
    """CoOp with context = word embeddings of "a photo of a" gives open_clip's features of the sentence."""
    model = build_method("coop", kind_backbone, CLASSES, ctx_init="a photo of a", **layout)
    names = [c.replace("_", " ") for c in CLASSES]
    if layout.get("class_token_position") == "front":
        sentences = [f"{n} a photo of a." for n in names]
    else:
        sentences = [f"a photo of a {n}." for n in names]
    with torch.no_grad():
        ours = model.text_features()
    ref = F.normalize(_open_clip_text(kind_backbone, sentences), dim=-1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_cocoop_batched_equals_image_by_image(kind_backbone):
    torch.manual_seed(0)
    model = build_method("cocoop", kind_backbone, CLASSES, max_prompts_per_pass=4)
    with torch.no_grad():
        for p in model.meta_net.parameters():
            p.normal_(std=0.1)
    feats = torch.randn(3, kind_backbone.embed_dim)
    pl = model.prompt_learner
    with torch.no_grad():
        ours = model.forward_features(feats)
        img = F.normalize(feats, dim=-1)
        rows = []
        for ctx_i, img_i in zip(model.conditional_ctx(feats), img):
            text = kind_backbone.encode_text_embeddings(pl(ctx_i), pl.eot_index, ids=pl.token_ids)
            row = kind_backbone.logit_scale * img_i @ F.normalize(text, dim=-1).t()
            bias = kind_backbone.logit_bias
            rows.append(row if bias is None else row + bias)
    torch.testing.assert_close(ours, torch.stack(rows), rtol=1e-5, atol=1e-4)


def test_siglip_logit_bias_is_kept():
    backbone = load_backbone("vlprompt-test-lastpool")
    assert backbone.logit_bias is not None and float(backbone.logit_bias) == -10.0
    model = build_method("coop", backbone, CLASSES, n_ctx=4)
    feats = torch.randn(2, backbone.embed_dim)
    with torch.no_grad():
        text = model.text_features()
        cos = F.normalize(feats, dim=-1) @ text.t()
        torch.testing.assert_close(model.forward_features(feats), backbone.logit_scale * cos - 10.0)


@pytest.mark.parametrize("method", ["zeroshot", "coop", "cocoop", "upl", "locoop"])
def test_every_method_trains_or_refuses_clearly(kind_backbone, method):
    why = kind_backbone.local_features_unsupported()
    if method == "locoop" and why is not None:
        with pytest.raises(ModelError, match="'locoop' needs local"):
            build_method(method, kind_backbone, CLASSES)
        return
    torch.manual_seed(0)
    options = {} if method == "zeroshot" else {"n_ctx": 4}
    if method == "locoop":
        options["top_k"] = 1
    if method == "upl":
        options["n_prompts"] = 2
    model = build_method(method, kind_backbone, CLASSES, **options)
    images = torch.randn(4, 3, kind_backbone.image_size, kind_backbone.image_size)
    labels = torch.tensor([0, 1, 2, 0])
    feats = model.encode_images(images)
    params = [p for _, p in model.learned_parameters()]
    if not params:  # training-free
        assert model(images).shape == (4, len(CLASSES))
        return
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.5)
    model.train()
    losses = []
    for _ in range(4):
        loss = model.training_loss(feats, labels).total()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    assert losses[-1] < losses[0]
    model.eval()
    assert model(images).shape == (4, len(CLASSES))


def test_refusal_names_method_backbone_and_reason():
    backbone = load_backbone("vlprompt-test-coca")
    with pytest.raises(ModelError) as err:
        build_method("locoop", backbone, CLASSES)
    msg = str(err.value)
    assert "locoop" in msg and "vlprompt-test-coca" in msg and "attention pool" in msg


def test_models_command_lists_kind_and_the_methods_that_run(capsys):
    from vlprompt.cli.main import main

    assert main(["models", "--filter", "B-16-SigLIP2-256"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [i for i, ln in enumerate(out) if ln.startswith("ViT-B-16-SigLIP2-256")]
    assert len(rows) == 1
    fields = out[rows[0]].split()
    assert fields[1] == "bidir-last" and fields[2].startswith("timm:") and "webli" in out[rows[0]]
    runs = next(ln for ln in out[rows[0]:] if ln.strip().startswith("methods:"))
    # a timm image tower: deep vision prompts and local features refuse it, so they are not listed
    assert "coop" in runs and "cocoop" in runs and "locoop" not in runs and "maple" not in runs
    assert main(["models", "--filter", "RN50-quickgelu"]) == 0
    out = capsys.readouterr().out
    assert "causal-eot" in out and "locoop" in out and "openai" in out and "maple" not in out


def test_a_tokenizer_that_cannot_be_loaded_is_one_clear_error(tmp_path):
    """SigLIP / CLIPA / multilingual tokenizers come from the Hugging Face hub: offline, one ModelError."""
    import json

    register_model_configs()
    cfg = dict(open_clip.get_model_config("vlprompt-test-lastpool"))
    cfg["text_cfg"] = {**cfg["text_cfg"], "hf_tokenizer_name": str(tmp_path / "no-tokenizer-here")}
    (tmp_path / "vlprompt-test-missing-tokenizer.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    with pytest.raises(ModelError, match="could not load the tokenizer of model 'vlprompt-test-missing-tokenizer'"):
        load_backbone("vlprompt-test-missing-tokenizer")
