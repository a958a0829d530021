"""CoPrompt (Roy & Etemad, ICLR 2024) against an independent re-implementation of the authors' code.

ShuvenduRoy/CoPrompt@a2a6c12, read for this file:

* ``trainers/coprompt.py`` ``CustomCLIP.forward`` l.304-368: MaPLe's prompted towers (their clip/model.py
  ``ResidualAttentionBlock_MaPLe`` l.320-421 and ``VisionTransformer_MaPLe`` l.575-653 are MaPLe's, so the tower
  reference of tests/test_deep_prompts.py is reused), then ``Adapter`` (l.267-279: Linear(E, E/4, no bias), ReLU,
  Linear(E/4, E, no bias), ReLU) mixed 0.1 (image) / 0.2 (text) with the raw feature (l.321-329), normalised,
  ``logit_scale.exp() *`` cosine (l.331-334);
* the frozen text targets: ``gpt_clip_classifier`` l.375-401 encodes every sentence of each class with the frozen
  CLIP, normalises each and stacks them ``[S, n_cls, E]``; a step takes ``ori_embedding[k]`` for one ``k``
  (l.337-339); the frozen image target is ``encode_image`` of the second view (l.340);
* the loss (l.350-366): ``CE + W * ((1 - mean cos(text, target)) + (1 - mean cos(image, target)))`` with
  ``CosineSimilarity(dim=1, eps=1e-07)``; ``mse``: ``F.mse_loss`` of each pair.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from test_deep_prompts import ref_image, ref_prompts, ref_text
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import MethodContext
from vlprompt.methods.registry import build_method

CLASSES = ["circle", "red star", "big_square"]
SENTENCES = {"circle": ["a round shape.", "a circle has no corners.", "a ring drawn on paper."],
             "red star": ["a red star with five points.", "a star shape in red.", "a shining red star."],
             "big_square": ["a large square.", "a big square with four equal sides.", "a square tile."]}
CONTEXT = MethodContext(descriptions=SENTENCES)


@pytest.fixture(scope="module")
def vit():
    from vlprompt.backbones.openclip import load_backbone

    return load_backbone("vlprompt-test-vit", None)


def _views(seed=1):
    return torch.randn(4, 2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _build(vit, **options):
    m = build_method("coprompt", vit, CLASSES, context=CONTEXT, **options)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # away from the initial values (the adapters too)
        for _, p in m.learned_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def ref_adapter(adapter, x):
    """Adapter.fc (coprompt.py l.270-275) written as matrices."""
    w1, w2 = adapter.fc[0].weight, adapter.fc[2].weight
    return torch.relu(torch.relu(x @ w1.t()) @ w2.t())


def ref_forward(m, model, tokenizer, image1):
    """CustomCLIP.forward up to the logits (l.305-334): normalised image / text features and logits."""
    prompts, tokenized, _ = ref_prompts(model, tokenizer, CLASSES, m.text_prompt.ctx)
    text = ref_text(model, prompts, tokenized, list(m.compound_prompts_text), m.text_prompt.n_ctx)
    shared = m.proj(m.text_prompt.ctx)  # the prompt learner's proj(ctx), l.261
    deep = [f(p) for f, p in zip(m.compound_prompt_projections, m.compound_prompts_text)]  # l.255-256
    image = ref_image(model.visual, image1, shared, deep)
    image = 0.1 * ref_adapter(m.adapter_image, image) + 0.9 * image
    text = 0.2 * ref_adapter(m.adapter_text, text) + 0.8 * text
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return image, text, model.logit_scale.exp() * image @ text.t()


def ref_clip_weights(model, tokenizer):
    """gpt_clip_classifier (l.380-397): ``[S, n_cls, E]``, each sentence's normalised frozen feature."""
    per_class = []
    for name in CLASSES:
        emb = model.encode_text(tokenizer(SENTENCES[name]))
        per_class.append(emb / emb.norm(dim=-1, keepdim=True))
    return torch.stack(per_class, dim=1)


def ref_loss(m, model, tokenizer, views, labels, k, w, distill="cosine"):
    image, text, logits = ref_forward(m, model, tokenizer, views[:, 0])
    with torch.no_grad():
        target_text = ref_clip_weights(model, tokenizer)[k]
        target_image = model.encode_image(views[:, 1])
        target_image = target_image / target_image.norm(dim=-1, keepdim=True)
    loss = F.cross_entropy(logits, labels)
    if distill == "cosine":
        cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
        distance = (1.0 - torch.mean(cos(text, target_text))) + (1.0 - torch.mean(cos(image, target_image)))
    else:
        distance = F.mse_loss(text, target_text) + F.mse_loss(image, target_image)
    return loss + w * distance, logits


@pytest.mark.parametrize("distill", ["cosine", "mse"])
def test_loss_logits_and_gradients_match_the_reference(vit, distill):
    m = _build(vit, w=2.0, distill=distill).train()
    assert len(m.compound_prompts_text) == 1  # PROMPT_DEPTH 9 clamped to the 2-block tiny towers
    views, labels = _views(), torch.tensor([0, 1, 2, 1])
    params = [p for _, p in m.learned_parameters()]
    m.draw_sentence = lambda: 2  # a fixed choice of sentences: k = 2 for every class
    out = m.training_loss(views, labels)  # the two-view batch, as the training loop hands it over
    assert set(out.terms) == {"ce", "consistency_text", "consistency_image"}
    ours = torch.autograd.grad(out.total(), params)
    expected, logits = ref_loss(m, vit.model, vit.tokenizer, views, labels, k=2, w=2.0, distill=distill)
    theirs = torch.autograd.grad(expected, params)
    torch.testing.assert_close(out.logits.detach(), logits.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.total().detach(), expected.detach(), atol=1e-5, rtol=1e-4)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    assert all(float(g.abs().sum()) > 0 for g in ours)  # prompts, couplings and both adapters learn
    m.eval()
    with torch.no_grad():  # inference: the adapted prompted logits of a plain image
        torch.testing.assert_close(m(views[:, 0]), logits.detach(), atol=1e-4, rtol=1e-4)


def test_the_drawn_sentence_follows_the_seed_and_the_step_and_resumes(vit):
    torch.manual_seed(5)
    m = build_method("coprompt", vit, CLASSES, context=CONTEXT).train()
    first = [m.draw_sentence() for _ in range(12)]
    assert int(m.draws) == 12 and set(first) == {0, 1, 2}
    state = m.learned_state()
    assert int(state["draws"]) == 12  # saved with the prompts: a resumed run continues the sequence
    torch.manual_seed(5)
    again = build_method("coprompt", vit, CLASSES, context=CONTEXT).train()
    assert [again.draw_sentence() for _ in range(12)] == first  # same seed, same steps: same sentences
    again.load_learned_state(state)
    rest = [m.draw_sentence() for _ in range(4)]
    assert [again.draw_sentence() for _ in range(4)] == rest
    torch.manual_seed(6)
    other = build_method("coprompt", vit, CLASSES, context=CONTEXT)
    assert [other.draw_sentence() for _ in range(12)] != first  # another run seed, other sentences
    k = 1  # row k holds every class's sentence k (the authors' stack), encoded raw
    with torch.no_grad():
        expected = ref_clip_weights(vit.model, vit.tokenizer)[k]
    torch.testing.assert_close(m.frozen_text(k), expected, atol=1e-5, rtol=1e-4)


def test_unequal_sentence_counts_wrap_per_class(vit):
    ctx = MethodContext(descriptions={"circle": ["a", "b", "c"], "red star": ["d"], "big_square": ["e", "f"]})
    m = build_method("coprompt", vit, CLASSES, context=ctx)
    assert m.sentence_rows.tolist() == [[0, 3, 4], [1, 3, 5], [2, 3, 4]]  # k mod S_c; k in 0 .. max S_c - 1


def test_without_descriptions_it_is_one_config_error(vit):
    with pytest.raises(ConfigError, match="data.descriptions_file"):
        build_method("coprompt", vit, CLASSES)
    with pytest.raises(ConfigError, match="no description of class 'big_square'"):
        build_method("coprompt", vit, CLASSES, context=MethodContext(descriptions={"circle": ["x"], "red star": ["y"]}))
    with pytest.raises(ConfigError, match="method.distill"):
        build_method("coprompt", vit, CLASSES, context=CONTEXT, distill="l1")
    with pytest.raises(ConfigError, match="method.text_adapter_ratio"):
        build_method("coprompt", vit, CLASSES, context=CONTEXT, text_adapter_ratio=1.5)


def test_two_randaugment_views_per_image_reproducible_under_the_seed(vit):
    from vlprompt.methods.coprompt.augment import OPERATIONS, RandAugment

    m = build_method("coprompt", vit, CLASSES, context=CONTEXT)
    tf = m.training_transform(None)
    img = Image.fromarray((torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(0)) * 255)
                          .to(torch.uint8).numpy())
    torch.manual_seed(3)
    a = tf(img)
    torch.manual_seed(3)
    assert a.shape == (2, 3, 32, 32) and torch.equal(tf(img), a)
    assert not torch.equal(a[0], a[1])  # two independent draws
    ra = RandAugment()
    for op, lo, hi in OPERATIONS:  # every operation of Dassl's list at m = 10 keeps the image's size and mode
        out = op(img, ra.m / 30 * (hi - lo) + lo)
        assert out.size == img.size and out.mode == "RGB"


def test_trains_with_two_views_through_the_trainer(tmp_path, tiny_imagefolder):
    from vlprompt.config import config_from_dict
    from vlprompt.engine.trainer import train

    from conftest import tiny_config

    (tmp_path / "d.json").write_text(json.dumps({n: [f"a {n}.", f"a photo of a {n}."]
                                                 for n in ("red thing", "green thing", "blue thing")}))
    raw = tiny_config(tmp_path, tiny_imagefolder, method={"name": "coprompt"},
                      data={"shots": 2, "augment": True, "descriptions_file": str(tmp_path / "d.json")},
                      optim={"max_epoch": 1, "batch_size": 2, "lr": 0.0035})
    raw["method"] = {"name": "coprompt", "w": 1.0}
    result = train(config_from_dict(raw))
    assert {"loss_consistency_text", "loss_consistency_image", "loss_ce"} <= set(result.history[0])
    assert 0 <= result.test["accuracy"] <= 100
