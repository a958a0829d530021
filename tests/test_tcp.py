"""TCP (methods/tcp) against an independent re-implementation of the authors' forward and loss.

The reference below was written for this test from htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec:

* the class knowledge: ``trainers/tcp.py`` l.159-166 (the hand-crafted prompt of each class through the frozen
  text encoder, L2-normalised);
* the Textual Knowledge Embedding: l.168-173 and l.194-195 (Linear E -> E/4, QuickGELU, Linear E/4 -> 4 D, viewed as
  ``[n_cls, 4, D]``);
* the learned prompt: l.177-186 and l.196-207 (the template "X X X X <text around the class name>" tokenised; SOS,
  then the 4 learned context vectors, then the tokens after position 4);
* the text encoder: ``TextEncoder.forward`` (l.91-104) and ``ResidualAttentionBlock_MaPLe.forward`` of
  ``trainers/clip_text/model.py`` (l.262-282): a counter over the blocks, and when it equals 8 the tokens 1..n of
  the block's input become ``w * class tokens + (1 - w) * themselves``; blocks in the [L, N, D] layout with the
  attention written out by hand (``ref_block`` of tests/test_deep_prompts.py); ln_final, EOT = argmax of the
  ids, projection;
* the logits and loss: ``CustomCLIP.forward`` l.240-258 (logit_scale.exp() * cos; CE + 8.0 * (1 - mean cos(t_c,
  w_c^clip)) with cosine eps 1e-7).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_deep_prompts import ref_block
from vlprompt.config import OptimConfig, config_from_dict
from vlprompt.core.errors import ConfigError
from vlprompt.engine.optim import build_optimizer
from vlprompt.methods.base import MethodContext
from vlprompt.methods.registry import build_method

CLASSES = ["circle", "red star", "big_square"]
TEMPLATE = "a drawing of a {}."


@pytest.fixture(scope="module")
def vit():
    from vlprompt.backbones.openclip import load_backbone

    return load_backbone("vlprompt-test-vit", None)


# ------------------------------------------------------------------------------------------- reference
def ref_encode(model, x, ids, layer=None, tokens=None, weight=1.0):
    """TextEncoder.forward: ``x [N, 77, D]`` embeddings; before block ``layer`` (counter == layer) positions 1..n
    take ``weight * tokens + (1 - weight) * x`` (clip_text/model.py l.270-278)."""
    x = (x + model.positional_embedding).permute(1, 0, 2)  # NLD -> LND
    mask = torch.full((x.shape[0], x.shape[0]), float("-inf")).triu_(1)
    for counter, blk in enumerate(model.transformer.resblocks):
        if counter == layer:
            ctx = tokens.permute(1, 0, 2)  # [n, N, D]
            n = ctx.shape[0]
            x = torch.cat([x[:1], weight * ctx + (1 - weight) * x[1:1 + n], x[1 + n:]], dim=0)
        x = ref_block(blk, x, mask)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ model.text_projection


def ref_forward(vit, m, images, labels, prompt_text, layer, weight):
    """CustomCLIP.forward (training branch): logits and loss."""
    model, tok = vit.model, vit.tokenizer
    names = [c.replace("_", " ") for c in CLASSES]
    ids = tok([TEMPLATE.format(n) for n in names])
    knowledge = F.normalize(ref_encode(model, model.token_embedding(ids), ids), dim=-1)  # tcp.py l.164-166
    tke = m.meta_net
    h = tke.linear1(knowledge)
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU, tcp.py l.109-111
    class_tokens = tke.linear2(h).reshape(len(names), -1, model.token_embedding.weight.shape[1])  # l.194-195
    n_ctx = m.prompt_learner.ctx.shape[0]
    pids = tok([prompt_text.format(n) for n in names])
    emb = model.token_embedding(pids)
    prompts = torch.cat([emb[:, :1], m.prompt_learner.ctx.expand(len(names), -1, -1), emb[:, 1 + n_ctx:]], dim=1)
    txt = F.normalize(ref_encode(model, prompts, pids, layer, class_tokens, weight), dim=-1)
    img = F.normalize(model.encode_image(images), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.t()
    score = 1.0 - F.cosine_similarity(txt, knowledge, dim=1, eps=1e-7).mean()
    return logits, F.cross_entropy(logits, labels) + 8.0 * score


def _randomise(method, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in method.learned_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("layer,weight,template", [(8, 1.0, "{}."), (0, 0.5, "person doing {}.")])
def test_tcp_matches_the_reference(vit, layer, weight, template):
    """Logits, loss and the gradients of every learned tensor; block 8 is clamped to the tiny tower's last (1)."""
    torch.manual_seed(0)
    m = build_method("tcp", vit, CLASSES, context=MethodContext(templates=[TEMPLATE]), insert_layer=layer,
                     insert_weight=weight, prompt_template=template).train()
    assert m.insert_layer == min(layer, 1) and m.prompt_learner.n_ctx == 4
    assert m.meta_net.linear1.out_features == vit.embed_dim // 4
    assert m.meta_net.linear2.out_features == 4 * vit.text_width
    _randomise(m)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 2])
    params = [p for _, p in m.learned_parameters()]
    expected_logits, expected_loss = ref_forward(vit, m, images, labels, "X X X X " + template, m.insert_layer, weight)
    expected_grads = torch.autograd.grad(expected_loss, params)
    terms = m.training_loss(m.encode_images(images), labels)
    loss = terms.total()
    torch.testing.assert_close(terms.logits, expected_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    for got, exp in zip(torch.autograd.grad(loss, params), expected_grads, strict=True):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # eval: the same logits
        torch.testing.assert_close(m.eval()(images), expected_logits.detach(), atol=1e-4, rtol=1e-4)


def test_new_classes_get_their_own_class_aware_tokens(vit):
    """The learned state (context + TKE) is class-independent: a model for other classes loads it, and a class in
    both lists gets the same text feature (its tokens come from its own knowledge, tcp.py l.159-166, l.194)."""
    ctx = MethodContext(templates=[TEMPLATE])
    base = build_method("tcp", vit, CLASSES, context=ctx)
    _randomise(base, seed=3)
    new = build_method("tcp", vit, ["hexagon", "red star"], context=ctx)
    new.load_learned_state(base.learned_state())
    assert not new.capabilities.class_specific
    with torch.no_grad():
        torch.testing.assert_close(new.text_features()[1], base.text_features()[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options,match", [
    ({"csc": True}, "method.csc=false"),
    ({"class_token_position": "middle"}, "class_token_position=end"),
    ({"prompt_template": "no name here"}, "prompt_template must be text with exactly one"),
    ({"insert_layer": -1}, "insert_layer must be >= 0"),
])
def test_bad_options_are_one_error_line(options, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"method": {"name": "tcp", **options}, "data": {"dataset": "dtd"}})


def test_dassl_adam_with_the_authors_eps():
    """optim.name adam is Dassl's (dassl/optim/optimizer.py l.88-94): torch Adam, weight decay added to the gradient,
    eps from optim.eps (TCP's README l.32-44: 1e-3). First step by hand: g' = g + wd p, p - lr g' / (|g'| + eps)."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], OptimConfig(name="adam", lr=0.002, weight_decay=5e-4, eps=1e-3))
    assert type(opt) is torch.optim.Adam
    g = torch.tensor([1e-3, -2e-4, 5e-3])
    p.grad = g.clone()
    opt.step()
    g2 = g + 5e-4
    torch.testing.assert_close(p.detach(), 1 - 0.002 * g2 / (g2.abs() + 1e-3), rtol=0, atol=1e-7)
    with pytest.raises(ConfigError, match="optim.eps is AdamW's epsilon"):
        OptimConfig(name="sgd", eps=1e-3)
