"""NegPrompt: loss and OOD score equal an independent re-implementation of the authors' code (values, gradients).

The reference below re-writes, in the authors' layout (every class's positive prompt followed by its K negative
ones, logits ``[B, C (1 + K)]``), what mala-lab/NegPrompt computes: the stage-3 loss of ``train_nega_clip``
(core/train_clip.py:70-156: the positive CE x 1e-8, the MSP / OE term, the negative-positive distance, the
negative-negative term) and the score of ``test_nega_clip`` / ``get_ood_score`` with ``open_score`` msp
(core/test_clip.py:113-117, 251-264, then the max over classes, :151). fp32 on CPU (the authors: fp16 / CUDA).
Shared with vlprompt's NegPrompt: the tiny tower, the image features and the text features of the prompts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.methods.registry import build_method

NAMES = ["red thing", "green thing", "blue thing", "cat", "dog"]


def authors_layout(pos, neg):
    """``pos [C, E]``, ``neg [C, K, E]`` -> ``[C (1 + K), E]`` normalised, as forward_negative (models.py:471-477)."""
    text = torch.cat([pos.view(pos.shape[0], 1, -1), neg], dim=1)
    text = text.view(text.shape[0] * text.shape[1], -1)
    return text / text.norm(dim=-1, keepdim=True)


def authors_stage3_loss(image_features, text, labels, k, logit_scale, method, weights):
    """train_nega_clip's loss in stage 3 (train_clip.py:70-156); ``text [C (1 + K), E]`` in the authors' layout."""
    img = image_features / image_features.norm(dim=-1, keepdim=True)
    output = logit_scale * img @ text.t()
    output_posi = output.view(-1, output.shape[1] // (1 + k), 1 + k)[:, :, 0]
    ens = text.view(text.shape[0] // (1 + k), 1 + k, -1)
    posi, nega = ens[:, 0, :], ens[:, 1:, :]
    loss_positive = F.cross_entropy(output_posi, labels) * 1e-8
    nn_loss = 0
    for i in range(nega.shape[0]):
        nf = nega[i]
        mean_norm = nf.mean(dim=0, keepdim=True).norm(dim=-1, keepdim=True)
        nn_loss += -torch.mean(1 - nf.norm(dim=-1, keepdim=True) @ mean_norm.t())
    nn_loss /= nega.shape[0]
    target = torch.zeros(output.shape).long()
    target.view(target.shape[0], output.shape[1] // (1 + k), -1)[torch.arange(output.shape[0]), labels, :] = 1
    if method == "MSP":
        other = torch.nn.MultiLabelSoftMarginLoss(reduction="mean")(output, target)
    else:
        other = -(output.mean(1) - torch.logsumexp(output, dim=1)).mean()
    dis = 0
    for i in range(nega.shape[0]):
        p = posi[i : i + 1] / posi[i : i + 1].norm(dim=-1, keepdim=True)
        n = nega[i] / nega[i].norm(dim=-1, keepdim=True)
        dis += (1 - p @ n.t()).mean()
    to_posi = -dis / nega.shape[0] if method == "MSP" else dis / nega.shape[0]
    return (loss_positive + weights["negative_weight"] * other + weights["distance_weight"] * to_posi
            + weights["nega_nega_weight"] * nn_loss)


def authors_score(image_features, text, k):
    """get_ood_score(open_score='msp') on logits / logit_scale, then the max over classes (test_clip.py:151)."""
    img = image_features / image_features.norm(dim=-1, keepdim=True)
    sm = F.softmax(img @ text.t(), dim=1)
    return sm.view(-1, sm.shape[1] // (1 + k), 1 + k)[:, :, 0].max(dim=1).values


WEIGHTS = {"negative_weight": 1.0, "distance_weight": 0.3, "nega_nega_weight": 0.7}


def _stage3(vit_backbone, method="MSP"):
    torch.manual_seed(0)
    m = build_method("negprompt", vit_backbone, NAMES, positive_epochs=0, open_set_method=method, **WEIGHTS)
    with torch.no_grad():  # negatives apart from the positive context (as after some stage-3 steps)
        m.ctx_negative.add_(0.3 * torch.randn_like(m.ctx_negative))
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, vit_backbone.image_size, vit_backbone.image_size, generator=g)
    return m, m.encode_images(images).detach(), torch.tensor([0, 4, 2, 2])


@pytest.mark.parametrize("method", ["MSP", "OE"])
def test_stage3_loss_and_gradient_equal_the_authors(vit_backbone, method):
    m, feats, labels = _stage3(vit_backbone, method)
    assert m.in_negative_stage
    ours = m.training_loss(feats, labels).total()
    (g_ours,) = torch.autograd.grad(ours, m.ctx_negative)
    pos = m.text_features().detach()  # the frozen positive prompts (computed once by the authors, models.py:511)
    neg = m.all_text_features()[1:].transpose(0, 1)  # [C, K, E]
    ref = authors_stage3_loss(feats, authors_layout(pos, neg), labels, 2, m.backbone.logit_scale, method, WEIGHTS)
    (g_ref,) = torch.autograd.grad(ref, m.ctx_negative)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)
    assert float(g_ref.abs().sum()) > 0
    ours_pos = m.training_loss(feats, labels).total()
    assert torch.autograd.grad(ours_pos, m.ctx, allow_unused=True)[0] is None  # the positive context is frozen


def test_score_equals_the_authors_and_differs_from_mcm(vit_backbone):
    m, feats, _ = _stage3(vit_backbone)
    text = m.all_text_features()
    ref = authors_score(feats, authors_layout(text[0], text[1:].transpose(0, 1)), 2)
    torch.testing.assert_close(m.ood_score(feats, "negprompt"), ref, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(m.ood_score(feats, "mcm"), ref)  # the negatives are in the denominator
    assert m.ood_record()["negative_prompts_learned"]


def test_stage1_is_coop_ce_then_stage3_starts_from_the_positive_context(vit_backbone):
    torch.manual_seed(0)
    m = build_method("negprompt", vit_backbone, NAMES, positive_epochs=2)
    feats = m.encode_images(torch.randn(3, 3, vit_backbone.image_size, vit_backbone.image_size)).detach()
    labels = torch.tensor([1, 0, 3])
    out = m.training_loss(feats, labels)
    assert set(out.terms) == {"ce"}
    text = authors_layout(m.text_features(), m.all_text_features()[1:].transpose(0, 1))
    output = m.backbone.logit_scale * F.normalize(feats, dim=-1) @ text.t()
    ref = F.cross_entropy(output.view(3, len(NAMES), 3)[:, :, 0], labels)  # train_clip.py:73, 78
    torch.testing.assert_close(out.total(), ref, rtol=1e-5, atol=1e-6)
    # the prompt is "a photo of a {name}" without a period (models.py:272), starting from those words
    ids = m.backbone.tokenize([f"a photo of a {n}" for n in NAMES], what="the prompt")
    assert torch.equal(m.prompt_learner.token_ids, ids[:, : m.prompt_learner.token_ids.shape[1]])
    m.on_epoch_end(0, 4)
    assert not m.in_negative_stage
    with torch.no_grad():
        m.ctx.add_(0.1)
    m.on_epoch_end(1, 4)
    gap = (m.ctx_negative - m.ctx.unsqueeze(0)).abs()
    assert m.in_negative_stage and 0 < float(gap.max().detach()) <= 1e-5
    assert not torch.equal(m.ctx_negative[0], m.ctx_negative[1])
