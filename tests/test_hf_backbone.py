"""Hugging Face ``transformers`` family (``--model hf:<dir>``): offline loading, equivalence with open_clip.

A tiny open_clip CLIP is converted to ``CLIPModel`` (key mapping in ``backbones/hf_convert.py``) and
saved with ``save_pretrained``; both families must then give the same image / text features and the
same CoOp / CoCoOp logits. A tiny random ``SiglipModel`` checks the bidirectional ``last``-pooled
text tower, its logit bias and the processor-config mapping.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from vlprompt.backbones.base import Backbone, family_of  # noqa: E402
from vlprompt.backbones.hf import load_hf_backbone  # noqa: E402
from vlprompt.backbones.hf_convert import clip_tokenizer_from_open_clip, save_open_clip_as_hf  # noqa: E402
from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.core.errors import CheckpointError, ModelError  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402

CLASSES = ["dog", "golden_retriever", "traffic light"]
TEXTS = ["a photo of a dog.", "x", "a small red striped triangle"]


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory):
    """(open_clip tiny ViT backbone, the same weights loaded as a transformers CLIPModel directory)."""
    oc = load_backbone("vlprompt-test-vit")
    directory = tmp_path_factory.mktemp("hf_clip")
    save_open_clip_as_hf(oc.model, str(directory), oc.preprocess_cfg)
    fam, model = family_of(f"hf:{directory}")
    assert fam.name == "hf"
    return oc, fam.load(model, None), directory


def _close(a, b):
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.slow
def test_hf_clip_features_equal_open_clip(clip_pair):
    oc, hf, _ = clip_pair
    assert isinstance(hf, Backbone) and isinstance(oc, Backbone)
    assert hf.info.family == "hf" and oc.info.family == "open_clip"
    assert hf.text_facts.kind == oc.text_facts.kind == "causal-eot"
    assert (hf.embed_dim, hf.text_width, hf.context_length) == (oc.embed_dim, oc.text_width, oc.context_length)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _close(hf.encode_image(images), oc.encode_image(images))
    with torch.no_grad():
        _close(hf.encode_text(hf.tokenize(TEXTS)), oc.encode_text(oc.tokenize(TEXTS)))
    _close(hf.logit_scale, oc.logit_scale)
    from PIL import Image

    img = Image.new("RGB", (50, 40), (200, 10, 10))
    torch.testing.assert_close(hf.eval_transform()(img), oc.eval_transform()(img))


def test_coop_and_cocoop_logits_equal_across_families(clip_pair):
    oc, hf, _ = clip_pair
    feats = torch.randn(4, oc.embed_dim, generator=torch.Generator().manual_seed(1))
    for name, options in (("coop", {"n_ctx": 4}), ("coop", {"ctx_init": "a photo of a", "csc": True}),
                          ("cocoop", {"n_ctx": 4})):
        torch.manual_seed(0)
        a = build_method(name, oc, CLASSES, **options)
        if name == "cocoop":
            with torch.no_grad():
                for p in a.meta_net.parameters():
                    p.normal_(std=0.1)
        b = build_method(name, hf, CLASSES, **options)
        b.load_learned_state(a.learned_state())
        with torch.no_grad():
            _close(b.forward_features(feats), a.forward_features(feats))


def test_zeroshot_and_upl_equal_across_families(clip_pair):
    oc, hf, _ = clip_pair
    feats = torch.randn(3, oc.embed_dim, generator=torch.Generator().manual_seed(2))
    for name, options in (("zeroshot", {}), ("upl", {"n_ctx": 4, "n_prompts": 2})):
        torch.manual_seed(0)
        a = build_method(name, oc, CLASSES, **options)
        b = build_method(name, hf, CLASSES, **options)
        b.load_learned_state(a.learned_state())
        a.eval()
        b.eval()
        with torch.no_grad():
            _close(b.forward_features(feats), a.forward_features(feats))


def test_train_transform_takes_the_crop_scale_in_both_families(clip_pair):
    """Tip-Adapter / GDA / APE build their cache views with ``train_transform(scale=...)`` (the Backbone protocol)."""
    oc, hf, _ = clip_pair
    for backbone in (oc, hf):
        crop = backbone.train_transform(scale=(0.5, 1.0)).transforms[0]
        assert type(crop).__name__ == "RandomResizedCrop" and tuple(crop.scale) == (0.5, 1.0)
        assert tuple(backbone.train_transform().transforms[0].scale) == (0.08, 1.0)


def test_prompt_from_another_family_is_refused(clip_pair, tmp_path):
    from vlprompt.engine.checkpoint import load_prompt, save_prompt

    oc, hf, _ = clip_pair
    path = save_prompt(tmp_path / "p.safetensors", build_method("coop", oc, CLASSES, n_ctx=4))
    with pytest.raises(CheckpointError, match="family: file has 'open_clip', backbone has 'hf'"):
        load_prompt(path, hf)


def test_missing_hf_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not available locally"):
        load_hf_backbone(str(tmp_path / "nothing-here"))
    with pytest.raises(ModelError, match="not available locally"):
        load_hf_backbone("some-org/some-model-not-in-the-cache")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    config = SiglipConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    )
    model = SiglipModel(config)
    with torch.no_grad():
        model.logit_bias.fill_(-10.0)
    directory = tmp_path_factory.mktemp("hf_siglip")
    model.save_pretrained(directory)
    tok = clip_tokenizer_from_open_clip()
    tok.pad_token = "!"  # a padding token distinct from EOS, as SigLIP's tokenizers have
    tok.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
        "resample": 2, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    return directory


def test_hf_siglip_prompts_equal_the_written_sentence(siglip_dir):
    bb = load_hf_backbone(str(siglip_dir))
    assert bb.text_facts.kind == "bidir-last" and not bb.text_facts.truncate_exact
    assert float(bb.logit_bias) == -10.0
    assert bb.preprocess_cfg["resize_mode"] == "squash" and bb.preprocess_cfg["interpolation"] == "bilinear"
    assert tuple(bb.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)
    model = build_method("coop", bb, CLASSES, ctx_init="a photo of a")
    sentences = [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]
    ids = bb.tokenizer(sentences, padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert int(ids[0, -1]) == bb.tokenizer.pad_token_id != bb.tokenizer.eos_token_id
    with torch.no_grad():
        ref = F.normalize(bb.model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        _close(model.text_features(), ref)
        feats = torch.randn(2, bb.embed_dim)
        cos = F.normalize(feats, dim=-1) @ ref.t()
        _close(model.forward_features(feats), bb.logit_scale * cos - 10.0)


def test_hf_siglip_cocoop_batched_equals_loop(siglip_dir):
    bb = load_hf_backbone(str(siglip_dir))
    torch.manual_seed(0)
    model = build_method("cocoop", bb, CLASSES, n_ctx=3, max_prompts_per_pass=3)
    feats = torch.randn(3, bb.embed_dim)
    pl = model.prompt_learner
    with torch.no_grad():
        ours = model.forward_features(feats)
        rows = []
        for ctx_i, img_i in zip(model.conditional_ctx(feats), F.normalize(feats, dim=-1)):
            text = F.normalize(bb.encode_text_embeddings(pl(ctx_i), pl.eot_index, ids=pl.token_ids), dim=-1)
            rows.append(bb.logit_scale * img_i @ text.t() + bb.logit_bias)
    _close(ours, torch.stack(rows))


def test_locoop_refuses_hf_backbones_clearly(siglip_dir):
    bb = load_hf_backbone(str(siglip_dir))
    with pytest.raises(ModelError, match="'locoop' needs local .* open_clip image towers only"):
        build_method("locoop", bb, CLASSES)


@pytest.mark.slow
@pytest.mark.subprocess
def test_core_imports_and_runs_without_transformers():
    """vlprompt's core (open_clip family) needs no transformers: block the import and train a step."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'transformers': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "from vlprompt.backbones.openclip import load_backbone\n"
        "from vlprompt.methods.registry import build_method\n"
        "bb = load_backbone('vlprompt-test-vit')\n"
        "m = build_method('coop', bb, ['a', 'b'], n_ctx=2)\n"
        "loss = m.training_loss(torch.randn(2, bb.embed_dim), torch.tensor([0, 1])).total()\n"
        "loss.backward()\n"
        "from vlprompt.backbones.base import family_of\n"
        "fam, model = family_of('hf:/x')\n"
        "try:\n"
        "    fam.load(model, None)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
        "assert 'transformers' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ModelError" in out.stdout and "pip install -e '.[hf]' in the vlprompt clone" in out.stdout


@pytest.fixture(scope="module", params=["mean_pooler", "cls_pooler"])
def hf_text_tower_model(request, tmp_path_factory):
    """An open_clip model whose text tower is a tiny local RoBERTa (``HFTextEncoder``), like xlm-roberta-*."""
    import open_clip

    from vlprompt.backbones.hf_convert import write_test_text_encoder

    root = tmp_path_factory.mktemp("hf_text")
    text_dir = root / "roberta"
    write_test_text_encoder(text_dir, pooling_layer=request.param == "cls_pooler", max_positions=40)
    name = f"vlprompt-test-hftext-{request.param}"
    (root / f"{name}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir), "context_length": 16,
                     "hf_pooler_type": request.param, "hf_proj_type": "linear"},
    }))
    open_clip.add_model_config(root)
    return load_backbone(name)


@pytest.mark.slow
def test_open_clip_hf_text_tower_prompts_equal_the_written_sentence(hf_text_tower_model):
    import open_clip

    bb = hf_text_tower_model
    assert bb.text_facts.kind == "hf-encoder"
    ids = open_clip.get_tokenizer(bb.name)(TEXTS)
    assert torch.equal(bb.tokenize(TEXTS), ids)
    with torch.no_grad():
        _close(bb.encode_text(ids), bb.model.encode_text(ids))
    model = build_method("coop", bb, CLASSES, ctx_init="a photo of a")
    sentences = [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]
    with torch.no_grad():
        ref = F.normalize(bb.model.encode_text(open_clip.get_tokenizer(bb.name)(sentences)), dim=-1)
        _close(model.text_features(), ref)
    torch.manual_seed(0)
    cocoop = build_method("cocoop", bb, CLASSES, n_ctx=3)
    feats = torch.randn(2, bb.embed_dim)
    pl = cocoop.prompt_learner
    with torch.no_grad():
        rows = [bb.logit_scale * i @ F.normalize(bb.encode_text_embeddings(pl(c), pl.eot_index, ids=pl.token_ids),
                                                 dim=-1).t()
                for c, i in zip(cocoop.conditional_ctx(feats), F.normalize(feats, dim=-1))]
        _close(cocoop.forward_features(feats), torch.stack(rows))


def test_cli_trains_coop_on_an_hf_directory(clip_pair, tiny_imagefolder, tmp_path):
    from vlprompt.cli.main import main

    from conftest import tiny_config, write_config

    _, _, directory = clip_pair
    cfg = write_config(tmp_path / "cfg.yaml", **tiny_config(tmp_path, tiny_imagefolder, optim={"max_epoch": 2}))
    assert main(["train", "-c", str(cfg), "--model", f"hf:{directory}"]) == 0
    meta = json.loads((tmp_path / "run" / "prompt.json").read_text())
    assert meta["backbone"]["family"] == "hf" and meta["backbone"]["model"] == str(directory)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]


def test_hf_siglip2_matches_its_processor_and_written_sentences(tmp_path):
    """SigLIP 2 (NaFlex): our transform + patch sequence equals the saved processor's; its tokenizer pads on the
    left, so each class's context starts elsewhere and prompts still equal the written sentences."""
    from PIL import Image
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    torch.manual_seed(0)
    config = Siglip2Config(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "num_patches": 16, "patch_size": 8},
    )
    Siglip2Model(config).save_pretrained(tmp_path)
    tok = clip_tokenizer_from_open_clip()
    tok.pad_token = "!"
    tok.save_pretrained(tmp_path)
    processor = Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    processor.save_pretrained(tmp_path)
    bb = load_hf_backbone(str(tmp_path))
    assert bb.text_facts.kind == "bidir-last" and bb.image_size == 32
    rng = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(48, 48, 3, generator=rng) * 255).byte().numpy())
    ours = bb.encode_image(bb.eval_transform()(img).unsqueeze(0))
    with torch.no_grad():
        ref = bb.model.get_image_features(**processor(images=img, return_tensors="pt")).pooler_output
    _close(ours, ref)
    model = build_method("coop", bb, CLASSES, ctx_init="a photo of a")
    sentences = [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]
    ids = bb.tokenizer(sentences, padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert bb.tokenizer.padding_side == "left" and not model.prompt_learner.uniform_start  # per-class starts
    with torch.no_grad():
        _close(model.text_features(), F.normalize(bb.model.get_text_features(input_ids=ids).pooler_output, dim=-1))
    cocoop = build_method("cocoop", bb, CLASSES, n_ctx=3)
    feats = torch.randn(2, bb.embed_dim)
    pl = cocoop.prompt_learner
    with torch.no_grad():
        rows = [bb.logit_scale * i @ F.normalize(bb.encode_text_embeddings(pl(c), pl.eot_index, ids=pl.token_ids),
                                                 dim=-1).t() + bb.logit_bias
                for c, i in zip(cocoop.conditional_ctx(feats), F.normalize(feats, dim=-1))]
        _close(cocoop.forward_features(feats), torch.stack(rows))
