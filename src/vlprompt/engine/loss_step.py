"""One optimisation step's backward pass from a method's named loss terms (the trainer's seam).

A method's ``training_loss`` returns :class:`~vlprompt.methods.base.LossTerms`: per term the sum over
this process's items and their count. The optimised loss is ``sum_t S_t / C_t`` over the *global*
batch, so with ``C_t`` all-reduced first, each rank back-propagates its share ``sum_t S_t,r / C_t`` and
the gradients are summed across ranks: the result is the single-process gradient of the whole global
batch for every loss written this way (cross-entropy means, LoCoOp's mean over the selected patches of
all ranks, per-batch penalties). Methods declaring ``owns_gradient_step`` (ProGrad) receive each term's
globally summed gradient in :meth:`~vlprompt.methods.base.PromptMethod.combine_gradients` and return
the update direction; the optimiser step stays the trainer's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from vlprompt.engine.distributed import (
    SINGLE,
    DistContext,
    all_reduce_values,
    sum_gradients,
)
from vlprompt.methods.base import LossTerms, PromptMethod


@dataclass
class StepStats:
    """Global (all ranks) statistics of one step: loss, per-term sums / counts, correct predictions, batch."""

    loss: float
    term_sums: dict[str, float]
    term_counts: dict[str, int]
    correct: int
    n: int


def local_objectives(out: LossTerms, global_counts: dict[str, int]) -> dict[str, Tensor]:
    """This rank's share of each term: ``S_t,r / C_t`` (terms with a global count of 0 are left out)."""
    return {name: s / global_counts[name] for name, (s, _) in out.terms.items() if global_counts[name] > 0}


def backward_terms(method: PromptMethod, out: LossTerms, params: Sequence[Tensor], labels: Tensor | None = None,
                   ctx: DistContext = SINGLE, owns_gradient_step: bool | None = None) -> StepStats:
    """Set ``p.grad`` of ``params`` for the global batch's loss (see the module doc) and return its statistics.

    Non-finite term values skip the backward pass (no gradient is set); the caller stops on the returned
    non-finite loss, on every rank alike (the values are all-reduced).
    """
    if owns_gradient_step is None:
        owns_gradient_step = method.capabilities.owns_gradient_step
    names = sorted(out.terms)
    local_counts = [int(out.terms[k][1]) for k in names]
    counts = dict(zip(names, (int(round(c)) for c in all_reduce_values(ctx, local_counts))))
    objectives = local_objectives(out, counts)
    values = [float(out.terms[k][0].detach()) for k in names]
    finite = all(math.isfinite(v) for v in values)
    for p in params:
        p.grad = None
    if labels is None:
        correct, n = 0, out.logits.shape[0]
    else:
        correct, n = int((out.logits.argmax(-1) == labels).sum()), int(labels.shape[0])
    stats_local = [*values, float(correct), float(n)]
    if owns_gradient_step:
        per_term = {}
        for k in names:
            grads = None
            if finite and k in objectives and objectives[k].requires_grad:
                grads = torch.autograd.grad(objectives[k], list(params), retain_graph=True, allow_unused=True)
            per_term[k] = list(grads) if grads is not None else [None] * len(params)
        flat = [g for k in names for g in per_term[k]]
        reduced, stats = sum_gradients(ctx, flat, list(params) * len(names), stats_local)
        grads_by_term = {k: reduced[i * len(params):(i + 1) * len(params)] for i, k in enumerate(names)}
        combined = method.combine_gradients(grads_by_term) if finite else [None] * len(params)
        for p, g in zip(params, combined):
            p.grad = None if g is None else g.to(p.dtype)
    else:
        if finite and objectives:
            total = cast(Tensor, sum(objectives.values()))  # at least one term
            if total.requires_grad:
                total.backward()
        reduced, stats = sum_gradients(ctx, [p.grad for p in params], list(params), stats_local)
        for p, g in zip(params, reduced):
            p.grad = g
    sums = dict(zip(names, stats[:len(names)]))
    loss = sum(sums[k] / counts[k] for k in names if counts[k] > 0)
    return StepStats(loss=loss, term_sums=sums, term_counts=counts, correct=int(round(stats[-2])),
                     n=int(round(stats[-1])))
