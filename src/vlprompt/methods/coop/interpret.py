"""CoOp's interpretation of learned context: the nearest vocabulary words (Zhou et al., Sec. 4.5).

Each context vector is compared with every row of the frozen token-embedding table by Euclidean
distance (as CoOp's ``interpret_prompt.py``); the closest tokens are decoded to text.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlprompt.backbones.base import Backbone


@torch.no_grad()
def nearest_words(ctx: Tensor, backbone: Backbone, topk: int = 3) -> list[list[tuple[str, float]]]:
    """For each context vector, the ``topk`` nearest vocabulary tokens and their distances.

    Args:
        ctx: ``[M, D]`` unified or ``[n_cls, M, D]`` class-specific context (flattened in order).
        backbone: supplies the token-embedding table ``[vocab, D]`` and the tokenizer.

    Returns:
        ``M`` (or ``n_cls * M``) lists of ``(token text, distance)``, nearest first.
    """
    vectors = ctx.detach().float().reshape(-1, ctx.shape[-1]).to(backbone.device)  # [M', D]
    table = backbone.token_embedding_table().float()  # [vocab, D]
    dist = torch.cdist(vectors, table)  # [M', vocab]
    k = min(topk, table.shape[0])
    values, indices = dist.topk(k, dim=1, largest=False)
    out = []
    for vals, idxs in zip(values.tolist(), indices.tolist()):
        out.append([(backbone.decode([i]).strip(), float(v)) for v, i in zip(vals, idxs)])
    return out
