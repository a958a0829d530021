"""The per-backbone feature cache: each image encoded once, same features as encoding afresh."""

from __future__ import annotations

import pytest
import torch

from vlprompt.data.registry import build_dataset
from vlprompt.engine.evaluate import evaluate_items
from vlprompt.engine.features import encode_items
from vlprompt.methods.registry import build_method


@pytest.mark.world
def test_cache_encodes_each_image_once_and_matches_fresh_encoding(tiny_backbone):
    splits = build_dataset("world_patterns", None, n_train=2, n_val=0, n_test=3, image_size=32)
    calls = []

    def encode(images):
        calls.append(images.shape[0])
        return tiny_backbone.encode_image(images)

    tf = tiny_backbone.eval_transform()
    fresh, labels = encode_items(encode, splits.test, splits.loader, tf)
    assert sum(calls) == len(splits.test)
    calls.clear()
    a, _ = encode_items(encode, splits.test[:10], splits.loader, tf, cache_owner=tiny_backbone)
    b, lb = encode_items(encode, splits.test, splits.loader, tf, cache_owner=tiny_backbone)
    assert sum(calls) == len(splits.test)  # the first 10 were not encoded twice
    torch.testing.assert_close(b, fresh, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, fresh[:10], rtol=1e-5, atol=1e-5)
    assert torch.equal(lb.cpu(), labels.cpu())


@pytest.mark.world
def test_cached_evaluation_equals_uncached(tiny_backbone):
    splits = build_dataset("world_patterns", None, n_train=2, n_val=0, n_test=3, image_size=32)
    method = build_method("coop", tiny_backbone, splits.classnames, n_ctx=2)
    first = evaluate_items(method, splits.test, splits.loader)
    second = evaluate_items(method, splits.test, splits.loader)  # from the cache
    feats, labels = encode_items(tiny_backbone.encode_image, splits.test, splits.loader,
                                 tiny_backbone.eval_transform())
    with torch.no_grad():
        preds = method.logits(feats, method.text_features()).argmax(-1)
    assert first == second
    assert first["accuracy"] == 100.0 * int((preds == labels).sum()) / len(labels)  # exact: counts, float64


@pytest.mark.world
def test_disk_cache_is_reused_by_a_fresh_backbone(tmp_path):
    from vlprompt.backbones.openclip import load_backbone

    splits = build_dataset("world_patterns", None, n_train=2, n_val=0, n_test=2, image_size=32)
    b1 = load_backbone("vlprompt-test-vit")
    f1, _ = encode_items(b1.encode_image, splits.test, splits.loader, b1.eval_transform(), cache_owner=b1,
                         disk_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 1
    b2 = load_backbone("vlprompt-test-vit")  # another process, in effect: empty in-memory cache

    def must_not_encode(images):
        raise AssertionError("features should come from the disk cache")

    f2, _ = encode_items(must_not_encode, splits.test, splits.loader, b2.eval_transform(), cache_owner=b2,
                         disk_dir=tmp_path)
    torch.testing.assert_close(f1, f2)
