"""CoOp: prompt layouts equal the real token sequences, gradients reach only the context, options."""

from __future__ import annotations

import pytest
import torch

from vlprompt.core.errors import ConfigError
from vlprompt.methods.registry import build_method

CLASSES = ["dog", "golden_retriever", "traffic light"]
WORDS = ["one", "two", "three", "four"]  # single BPE tokens each


def _set_ctx_to_words(model, backbone, words):
    ids = torch.tensor([backbone.encode_tokens(w)[0] for w in words])
    with torch.no_grad():
        emb = backbone.token_embedding(ids)
        if model.ctx.dim() == 3:
            emb = emb.unsqueeze(0).expand_as(model.ctx)
        model.ctx.copy_(emb)


def _reference_features(backbone, texts):
    with torch.no_grad():
        return torch.nn.functional.normalize(backbone.model.encode_text(backbone.tokenize(texts)), dim=-1)


@pytest.mark.parametrize("position,template", [
    ("end", "one two three four {}."),
    ("middle", "one two {} three four."),
    ("front", "{} one two three four."),
])
@pytest.mark.parametrize("csc", [False, True])
def test_prompt_layout_equals_encoding_the_written_prompt(tiny_backbone, position, template, csc):
    model = build_method("coop", tiny_backbone, CLASSES, n_ctx=4, class_token_position=position, csc=csc)
    _set_ctx_to_words(model, tiny_backbone, WORDS)
    with torch.no_grad():
        ours = model.text_features()
    names = [c.replace("_", " ") for c in CLASSES]
    ref = _reference_features(tiny_backbone, [template.format(n) for n in names])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_ctx_init_starts_from_the_words_and_sets_n_ctx(tiny_backbone):
    model = build_method("coop", tiny_backbone, CLASSES, ctx_init="a photo of a", n_ctx=16)
    assert model.ctx.shape == (4, tiny_backbone.text_width)
    with torch.no_grad():
        ours = model.text_features()
    ref = _reference_features(tiny_backbone, [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_random_init_shapes_and_std(vit_backbone):
    torch.manual_seed(0)
    uni = build_method("coop", vit_backbone, CLASSES * 20, n_ctx=16)
    csc = build_method("coop", vit_backbone, CLASSES, n_ctx=8, csc=True)
    assert uni.ctx.shape == (16, vit_backbone.text_width)
    assert csc.ctx.shape == (3, 8, vit_backbone.text_width)
    assert abs(float(uni.ctx.detach().std()) - 0.02) < 0.004
    assert abs(float(uni.ctx.detach().mean())) < 0.004


def test_class_specific_context_gets_the_gradient(tiny_backbone):
    """The contract checks the unified context (CoOp's default); class-specific context here."""
    model = build_method("coop", tiny_backbone, CLASSES, n_ctx=4, csc=True)
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    loss = model.loss(model(images), torch.tensor([0, 2]))
    loss.backward()
    assert model.ctx.grad is not None and model.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert [n for n, _ in model.learned_parameters()] == ["prompt_learner.ctx"]
    model.ctx.grad = None


def test_frozen_buffers_are_not_part_of_the_learned_state(vit_backbone):
    model = build_method("coop", vit_backbone, CLASSES, n_ctx=4)
    assert set(model.learned_state()) == {"prompt_learner.ctx"}


@pytest.mark.parametrize("options,match", [
    ({"n_ctx": 0}, "method.n_ctx"),
    ({"class_token_position": "back"}, "method.class_token_position"),
    ({"csc": "yes"}, "method.csc"),
    ({"nctx": 4}, "unknown option 'method.nctx'.*n_ctx"),
])
def test_bad_options_name_the_option(vit_backbone, options, match):
    with pytest.raises(ConfigError, match=match):
        build_method("coop", vit_backbone, CLASSES, **options)


def test_nearest_words_recovers_the_words_the_context_was_set_to(vit_backbone):
    from vlprompt.methods.coop.interpret import nearest_words

    model = build_method("coop", vit_backbone, CLASSES, n_ctx=4)
    _set_ctx_to_words(model, vit_backbone, WORDS)
    result = nearest_words(model.ctx, vit_backbone, topk=2)
    assert [row[0][0] for row in result] == WORDS
    assert all(row[0][1] == pytest.approx(0.0, abs=1e-4) for row in result)
    assert all(row[1][1] > 0 for row in result)


def test_zeroshot_single_template_and_ensemble(vit_backbone):
    z1 = build_method("zeroshot", vit_backbone, CLASSES, templates=["a photo of a {}."])
    ref = _reference_features(vit_backbone, [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    torch.testing.assert_close(z1.text_features(), ref, rtol=1e-5, atol=1e-5)
    templates = ["a photo of a {}.", "art of the {}.", "a {} in a video game."]
    z3 = build_method("zeroshot", vit_backbone, CLASSES, templates=templates, class_chunk=2)
    per = torch.stack([_reference_features(vit_backbone, [t.format(c.replace("_", " ")) for c in CLASSES])
                       for t in templates])
    expected = torch.nn.functional.normalize(per.mean(0), dim=-1)
    torch.testing.assert_close(z3.text_features(), expected, rtol=1e-5, atol=1e-5)
    images = torch.randn(3, 3, 32, 32)
    logits = z3(images)
    feats = torch.nn.functional.normalize(vit_backbone.encode_image(images), dim=-1)
    torch.testing.assert_close(logits, vit_backbone.logit_scale * feats @ expected.t(), rtol=1e-4, atol=1e-4)


def test_zeroshot_rejects_templates_without_placeholder(vit_backbone):
    with pytest.raises(ConfigError, match="exactly one"):
        build_method("zeroshot", vit_backbone, CLASSES, templates=["a photo"])


def test_public_api_example(vit_backbone):
    import vlprompt

    model = vlprompt.build_method("coop", vit_backbone, CLASSES, n_ctx=16, csc=False,
                                  class_token_position="end", ctx_init=None)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3)
    assert model.ctx.shape == (16, vit_backbone.text_width)
    assert "coop" in vlprompt.list_methods() and "zeroshot" in vlprompt.list_methods()
