"""OOD metrics against scikit-learn on many random cases, ties and constant scores included; scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from vlprompt.core.ood import aupr, auroc, fpr_at_tpr, ood_metrics, ood_scores


def _sk_fpr95(pos, neg):
    """FPR at the TPR closest to 0.95 from sklearn's ROC (thresholds down to the first full recall)."""
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, _ = roc_curve(y, np.r_[pos, neg], drop_intermediate=False)
    last = int(np.argmax(tpr >= 1.0))
    cand = np.arange(1, last + 1)
    dist = np.abs(tpr[cand] - 0.95)
    best = cand[np.flatnonzero(dist == dist.min())[-1]]  # ties: the lower threshold (higher recall)
    return fpr[best]


def _cases():
    rng = np.random.default_rng(0)
    for i in range(60):
        n_pos, n_neg = rng.integers(1, 80), rng.integers(1, 80)
        pos, neg = rng.normal(1.0, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)
        if i % 3 == 0:  # heavy ties
            pos, neg = np.round(pos, 1), np.round(neg, 1)
        if i % 10 == 1:  # discrete scores shared by both sides
            pos, neg = rng.integers(0, 4, n_pos).astype(float), rng.integers(0, 4, n_neg).astype(float)
        yield pos, neg
    yield np.ones(10), np.ones(7)  # constant scores
    yield np.array([0.5]), np.array([0.2, 0.9])


@pytest.mark.parametrize("pos,neg", list(_cases()))
def test_metrics_match_sklearn(pos, neg):
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert aupr(pos, neg) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert fpr_at_tpr(pos, neg) == pytest.approx(_sk_fpr95(pos, neg), abs=1e-12)


def test_perfect_and_reversed_separation():
    m = ood_metrics([2.0, 3.0, 4.0], [0.0, 1.0])
    assert m == {"fpr95": 0.0, "auroc": 100.0, "aupr": 100.0}
    assert ood_metrics([0.0, 1.0], [2.0, 3.0])["fpr95"] == 100.0


def test_scores():
    torch.manual_seed(0)
    g, t, loc = torch.randn(4, 8), torch.randn(5, 8), torch.randn(4, 3, 8)
    cos = torch.nn.functional.normalize(g, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).t()
    mcm = ood_scores(g, t, kind="mcm")
    torch.testing.assert_close(mcm, cos.softmax(-1).max(-1).values)
    torch.testing.assert_close(ood_scores(g, t, kind="mcm", temperature=0.01), (cos / 0.01).softmax(-1).max(-1).values)
    lcos = torch.nn.functional.normalize(loc, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).t()
    gl = ood_scores(g, t, kind="glmcm", local_features=loc)
    torch.testing.assert_close(gl, mcm + lcos.softmax(-1).flatten(1).max(-1).values)
    torch.testing.assert_close(ood_scores(g, t, kind="energy", logit_scale=10.0), torch.logsumexp(10 * cos, -1))
    torch.testing.assert_close(ood_scores(g, t, kind="maxlogit", logit_scale=10.0), (10 * cos).max(-1).values)
    # fp16 inputs are scored in fp32: no collapse into ties at T = 1
    s16 = ood_scores(g.half(), t.half(), kind="mcm")
    assert s16.dtype == torch.float32 and len(set(s16.tolist())) == 4
