"""NegLabel's tensor steps, as pure functions: the batched text pass, the selection of negative labels, the score.

Citations are to XueJiang16/NegLabel@3253db6 (``multi_modal.py`` = mmcls/models/classifiers/multi_modal.py,
``clip_ood.py`` = mmcls/models/ood/clip_ood.py) and MengyuanChen21/NeurIPS2024-CSP@3a7bdab (``CSP multi_modal.py``).
Shapes: ``C`` ID classes, ``N`` candidate words, ``M`` selected negative labels, ``E`` embedding width, ``B`` images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from vlprompt.backbones.base import Backbone


@torch.no_grad()
def encode_words(backbone: Backbone, words: Sequence[str], templates: Sequence[str], *, chunk: int = 1000,
                 progress: bool = False, desc: str = "encoding words", sort_by_length: bool = True) -> Tensor:
    """L2-normalised ``[N, E]``: for each word, the mean of the *raw* text features of ``template.format(word)``
    over ``templates``, then normalised (CSP multi_modal.py l.58-70 and l.137-141: mean before normalising; with
    one template this is NegLabel's ``encode_text`` then ``/= norm``, multi_modal.py l.100-113).

    The text tower runs in passes of at most ``chunk`` prompts (the authors' ``emb_batchsize``, l.109-111), all
    prompts of a word in one pass; fp32 features whatever the tower's dtype. With ``sort_by_length`` (default) the
    words go through the tower in the order of their longest prompt's token count (stable), so that each pass runs
    only up to its own longest prompt (``encode_text`` cuts after the last EOT where that is exact: every prompt's
    feature is the same as in any other pass); the result is in ``words``' order either way.
    """
    if not words:
        return torch.zeros(0, backbone.embed_dim, device=backbone.device)
    n_t = len(templates)
    per_pass = max(1, chunk // n_t)
    pieces = []  # token ids of every prompt, word-major: [w0 t0, w0 t1, ..., w1 t0, ...]
    for start in tqdm(range(0, len(words), per_pass), desc=f"{desc} (tokenizing)", unit="pass",
                      disable=not progress, leave=False):
        prompts = [t.format(w) for w in words[start:start + per_pass] for t in templates]
        pieces.append(backbone.tokenize(prompts, what="the word prompt").to(torch.int32))
    ids = torch.cat(pieces)  # [N * T, L]
    if sort_by_length:
        lengths = backbone.pooled_index(ids.long()).view(len(words), n_t).amax(dim=1)  # [N]
        order = torch.argsort(lengths, stable=True)
    else:
        order = torch.arange(len(words))
    out = torch.empty(len(words), backbone.embed_dim, dtype=torch.float32, device=backbone.device)
    for start in tqdm(range(0, len(words), per_pass), desc=desc, unit="pass", disable=not progress, leave=False):
        sel = order[start:start + per_pass]
        rows = (sel.unsqueeze(1) * n_t + torch.arange(n_t)).reshape(-1)
        feats = backbone.encode_text(ids[rows].long().to(backbone.device)).float()
        out[sel.to(out.device)] = feats.view(len(sel), n_t, -1).mean(dim=1)
    return F.normalize(out, dim=-1)


@torch.no_grad()
def percentile_similarity(negatives: Tensor, positives: Tensor, q: float, *, chunk: int = 1000,
                          max_similarity: float | None = None) -> Tensor:
    """``[N]``: the ``q``-quantile over ID classes of each candidate's cosine similarity to the ID labels
    (multi_modal.py l.140-146: ``torch.quantile(neg @ pos.T, q, dim=-1)`` in chunks of ``emb_batchsize``); with
    ``max_similarity`` (CSP multi_modal.py l.166-167), a candidate whose largest similarity exceeds it gets 1.0
    (never selected).

    Args:
        negatives: ``[N, E]`` normalised candidate features; positives: ``[C, E]`` normalised ID features.
    """
    sims = []
    for start in range(0, negatives.shape[0], chunk):
        cos = (negatives[start:start + chunk].float() @ positives.float().t())  # [n, C]
        sim = torch.quantile(cos, q=q, dim=-1)
        if max_similarity is not None:
            sim[cos.max(dim=1).values > max_similarity] = 1.0
        sims.append(sim)
    return torch.cat(sims) if sims else negatives.new_zeros(0)


def lowest(similarity: Tensor, fraction: float) -> Tensor:
    """Indices of the ``int(len * fraction)`` least similar candidates, least similar first (multi_modal.py
    l.152-157: ``argsort`` ascending, ``[0:int(len(ind) * neg_topk)]``; a stable sort, so ties keep corpus order)."""
    order = torch.argsort(similarity, stable=True)
    return order[: int(len(order) * fraction)]


def group_permutation(m: int, ngroup: int, seed: int) -> tuple[Tensor, int]:
    """The column order of the grouped score: the last ``m % ngroup`` negatives are dropped, the rest permuted by
    ``randperm`` seeded with ``seed`` (clip_ood.py l.25-36: ``neg[:, :-drop]``, ``torch.manual_seed(0)``; the authors
    draw on the GPU, vlprompt on the CPU generator, so the permutation differs from theirs). Returns the
    ``[m - drop]`` indices and ``drop``."""
    drop = m % ngroup if ngroup > 1 else 0
    kept = m - drop
    if ngroup <= 1:
        return torch.arange(kept), drop
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(kept, generator=g), drop


def grouped_score(pos_logits: Tensor, neg_logits: Tensor, ngroup: int, t: float = 1.0,
                  group_fuse_num: int | None = None) -> Tensor:
    """The NegLabel score ``[B]`` of logits already in group order (:func:`group_permutation` applied).

    ``pos_logits [B, C]``, ``neg_logits [B, G*K]`` (``100 * cos``, multi_modal.py l.191-193). For every group ``g``
    of ``K`` consecutive negatives, ``sum_c softmax([pos, neg_g] / t)_c`` (clip_ood.py l.40-44), then the mean over
    groups (l.48), over the first ``group_fuse_num - 1`` groups when set (l.46-47, the authors' slice). Computed as
    ``sigmoid(lse(pos / t) - lse(neg_g / t))``, which equals the softmax mass of the ID labels. ``ngroup <= 1``: one
    group of all negatives (the paper's score, CSP clip_ood.py l.70-72; NegLabel's l.66 sums the logits without the
    softmax, see docs/methods.md).
    """
    b = pos_logits.shape[0]
    groups = max(1, ngroup)
    pos = torch.logsumexp(pos_logits.float() / t, dim=-1, keepdim=True)  # [B, 1]
    neg = torch.logsumexp((neg_logits.float() / t).reshape(b, groups, -1), dim=-1)  # [B, G]
    scores = torch.sigmoid(pos - neg)
    if group_fuse_num is not None:
        scores = scores[:, : group_fuse_num - 1]
    return scores.mean(dim=-1)
