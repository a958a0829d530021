"""Property-based tests (hypothesis): metrics, few-shot sampling, pseudo-label selection, config loader."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from vlprompt.config import config_from_dict
from vlprompt.core.errors import VlpromptError
from vlprompt.core.ood import aupr, auroc, fpr_at_tpr
from vlprompt.data.fewshot import sample_fewshot
from vlprompt.data.types import Datum
from vlprompt.tasks.pseudo_label import select_top_k

scores = st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 1.0]) | st.floats(-5, 5, allow_nan=False),
                  min_size=1, max_size=40)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(pos=scores, neg=scores)
def test_ood_metrics_equal_sklearn(pos, neg):
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert aupr(pos, neg) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert 0.0 <= fpr_at_tpr(pos, neg) <= 1.0


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=6), shots=st.integers(1, 12),
       seed=st.integers(0, 2**31), shuffle_seed=st.integers(0, 1000))
def test_fewshot_sampling(counts, shots, seed, shuffle_seed):
    items = [Datum(f"/d/{c}/{i}.png", c, f"class{c}") for c, n in enumerate(counts) for i in range(n)]
    if min(counts) < shots:
        with pytest.raises(VlpromptError):
            sample_fewshot(items, shots, seed)
        return
    out = sample_fewshot(items, shots, seed)
    assert len(out) == shots * len(counts) and len({d.path for d in out}) == len(out)
    assert all(sum(d.label == c for d in out) == shots for c in range(len(counts)))
    shuffled = list(items)
    np.random.default_rng(shuffle_seed).shuffle(shuffled)
    assert sample_fewshot(shuffled, shots, seed) == out  # independent of input order, stable for a seed


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 60), c=st.integers(1, 6), k=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_pseudo_label_selection(n, c, k, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randint(0, 4, (n, c), generator=g).float().add(0.01).softmax(dim=1)  # many ties
    idx, lab = select_top_k(probs, k)
    assert len(set(idx)) == len(idx)
    conf, pred = probs.max(1)
    for cls in range(c):
        chosen = [i for i, lb in zip(idx, lab) if lb == cls]
        cand = [i for i in range(n) if pred[i] == cls]
        assert chosen == sorted(cand, key=lambda i: (-float(conf[i]), i))[:k]


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
sections = st.sampled_from(["method", "backbone", "data", "optim", "train", "bogus"])
keys = st.sampled_from(["name", "n_ctx", "csc", "lr", "shots", "dataset", "seed", "max_epoch", "precision", "x"])


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.dictionaries(sections, st.dictionaries(keys, yaml_values, max_size=4) | yaml_values, max_size=5))
def test_config_loader_never_crashes_with_a_traceback(raw):
    try:
        text = yaml.safe_dump(raw)
    except yaml.YAMLError:
        return
    with contextlib.suppress(VlpromptError):  # a clear, user-facing error is the expected outcome
        config_from_dict(yaml.safe_load(text))


number_texts = st.sampled_from(["1", "0.5", "-2", ".inf", "-.inf", ".nan", ".NaN", "1e300", "1.0e+300", "3.0e+38",
                                "-1e39", "99999999999999999999", "1e-3", "true", "null", "x", "[]", "{}"])
numeric_options = st.sampled_from(["optim.lr", "optim.momentum", "optim.weight_decay", "optim.warmup_lr",
                                   "optim.max_epoch", "optim.batch_size", "train.seed", "train.dist_timeout_min",
                                   "data.shots", "method.n_ctx"])


def _floats(obj):
    if isinstance(obj, dict):
        return [f for v in obj.values() for f in _floats(v)]
    if isinstance(obj, list):
        return [f for v in obj for f in _floats(v)]
    return [obj] if isinstance(obj, float) else []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=numeric_options, value=number_texts, duplicate=st.booleans(), depth=st.integers(0, 9),
       fan=st.integers(1, 12), recursive=st.booleans())
def test_config_text_with_aliases_duplicate_keys_and_non_finite_numbers(option, value, duplicate, depth, fan,
                                                                        recursive):
    """Any such text gives a config with finite numbers only, or one short ConfigError, and quickly."""
    import time

    from vlprompt.config import MAX_YAML_VALUES, parse_yaml
    from vlprompt.core.errors import ConfigError
    from vlprompt.methods.registry import list_methods

    list_methods()  # the first import of the method registry (torch, open_clip) is not what is timed

    section, key = option.split(".")
    lines = ["data:", "  dataset: imagefolder", "  options:", "    a0: &a0 [x, x]"]
    lines += [f"    a{d}: &a{d} [{', '.join([f'*a{d - 1}'] * fan)}]" for d in range(1, depth + 1)]
    if recursive:
        lines.append("    loop: &loop {again: *loop}")
    lines += [f"{section}:", f"  {key}: {value}"] + ([f"  {key}: 1"] if duplicate else [])
    if section == "method":
        lines.append("  name: coop")
    start = time.monotonic()
    try:
        cfg = config_from_dict(parse_yaml("\n".join(lines) + "\n", "'fuzz.yaml'"))
    except ConfigError as exc:
        assert len(str(exc)) < 1000 and "\n" not in str(exc)
    else:
        assert not duplicate and not recursive
        assert 2 * (fan ** depth) < MAX_YAML_VALUES  # a bomb is refused, not expanded
        settings_ = {k: v for k, v in cfg.as_dict().items() if k != "data"}
        assert all(abs(f) <= 3.5e38 for f in _floats(settings_))  # finite (NaN fails this too), float32 range
        cfg.to_yaml()  # copying the config (config.yaml) stays cheap
    assert time.monotonic() - start < 20  # generous (a busy machine); an accepted bomb would take hours
