"""SCT: the loss equals an independent re-implementation of the authors' trainer (values and gradients).

The reference below re-writes what tmlr-group/SCT ``trainers/sct.py`` computes in its fp32 path
(``forward_backward`` lines 313-329 and ``entropy_select_topk`` lines 24-41), in the authors' layout (local logits
flattened to ``[B*P, C]``, the label and the global probability repeated per patch), on CPU in fp32 (the authors
run fp16 / CUDA). It shares only the model's text features and the image features with vlprompt's SCT.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.methods.registry import build_method

NAMES = ["a", "b", "c", "d", "e", "f"]


def authors_sct_loss(logits, logits_local, labels, top_k, lambda_value, detach_weights=False):
    """SCT's loss as trainers/sct.py computes it (fp32 branch): ``logits [B, C]``, ``logits_local [B, P, C]``.
    ``detach_weights`` (not the authors') stops the gradient through the weights, to show that it matters."""
    n_cls = logits.shape[1]
    onehot = F.one_hot(labels, num_classes=n_cls)
    probs = F.softmax(logits, dim=1)
    true = torch.gather(probs, 1, labels.unsqueeze(1)).squeeze(1)  # not detached (sct.py:319)
    if detach_weights:
        true = true.detach()
    loss_id = (-(onehot * F.log_softmax(logits, dim=1)).sum(dim=1) * (1.0000001 - true)).mean()  # sct.py:320-321
    b, p = logits_local.shape[:2]
    flat = logits_local.reshape(b * p, -1)  # sct.py:325
    true_rep = true.repeat_interleave(p)  # sct.py:29
    label_rep = labels.repeat_interleave(p)  # sct.py:31
    sm = F.softmax(flat, dim=-1)
    keep = ~torch.topk(sm, k=top_k, dim=1)[1].eq(label_rep.unsqueeze(1)).any(dim=1)  # sct.py:33-34
    if keep.sum() == 0:  # sct.py:38-39
        reg = torch.zeros(())
    else:
        sel, w = sm[keep], true_rep[keep]
        reg = -torch.mean(torch.sum(sel * torch.log(sel + 1e-5), 1) * (0.0000001 + w))  # sct.py:41
    loss_en = -reg  # sct.py:326
    return loss_id + lambda_value * loss_en, int(keep.sum())


def _setup(vit_backbone, top_k, lambda_value=0.5):
    torch.manual_seed(0)
    m = build_method("sct", vit_backbone, NAMES, n_ctx=4, top_k=top_k, lambda_value=lambda_value)
    with torch.no_grad():
        m.ctx.add_(0.5 * torch.randn_like(m.ctx))  # a prompt away from its initial value
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, vit_backbone.image_size, vit_backbone.image_size, generator=g)
    feats = m.encode_images(images).detach()  # [B, 1 + P, E]
    return m, feats, torch.tensor([0, 3, 5, 1])


def _reference(m, feats, labels, top_k, lambda_value, detach_weights=False):
    text = m.text_features()
    scale = m.backbone.logit_scale
    glob = F.normalize(feats[:, 0].float(), dim=-1)
    loc = F.normalize(feats[:, 1:].float(), dim=-1)
    return authors_sct_loss(scale * glob @ text.t(), scale * loc @ text.t(), labels, top_k, lambda_value,
                            detach_weights)


@pytest.mark.parametrize("top_k", [2, 6])  # 6 = every class: no patch selected, the regulariser is 0
def test_loss_and_gradient_equal_the_authors(vit_backbone, top_k):
    m, feats, labels = _setup(vit_backbone, top_k)
    out = m.training_loss(feats, labels)
    ours = out.total()
    (g_ours,) = torch.autograd.grad(ours, m.ctx)
    ref, n_sel = _reference(m, feats, labels, top_k, 0.5)
    (g_ref,) = torch.autograd.grad(ref, m.ctx)
    if top_k == 2:
        assert 0 < n_sel < feats.shape[0] * (feats.shape[1] - 1)  # both kinds of patch occur
        assert out.terms["ood"][1] == n_sel
    else:
        assert n_sel == 0 and out.terms["ood"][1] == 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # fp32 sums in another order: elements near 0 differ by ~1e-7 absolute, so the tolerance follows the gradient's
    # scale (a detached weight changes it by > 1e-4 of its largest element: the test below)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5 * float(g_ref.abs().max()))
    assert float(g_ref.abs().sum()) > 0


def test_the_calibration_changes_loss_and_gradient_from_locoop(vit_backbone):
    """The same prompt and features under LoCoOp give another loss (the weights are what SCT adds), and weights
    without gradient (detached) would give another gradient: the test above can tell both apart."""
    m, feats, labels = _setup(vit_backbone, 2)
    locoop = build_method("locoop", vit_backbone, NAMES, n_ctx=4, top_k=2, lambda_value=0.5)
    locoop.load_learned_state(m.learned_state())
    with torch.no_grad():
        a, b = m.training_loss(feats, labels).total(), locoop.training_loss(feats, labels).total()
    assert abs(float(a) - float(b)) > 1e-3
    (g_ours,) = torch.autograd.grad(m.training_loss(feats, labels).total(), m.ctx)
    (g_detached,) = torch.autograd.grad(_reference(m, feats, labels, 2, 0.5, detach_weights=True)[0], m.ctx)
    assert float((g_ours - g_detached).abs().max()) > 1e-4 * float(g_ours.abs().max())
