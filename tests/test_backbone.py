"""Backbone adapter: our text path equals open_clip's encode_text; truncation is exact; frozen; loading."""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones.openclip import load_backbone
from vlprompt.core.errors import ModelError, VlpromptError

TEXTS = ["a photo of a dog.", "x", "an unusually long caption about a small red striped triangle on grass", ""]


def test_text_path_equals_open_clip_encode_text(tiny_backbone):
    ids = tiny_backbone.tokenize(TEXTS)
    with torch.no_grad():
        ref = tiny_backbone.model.encode_text(ids)
        ours = tiny_backbone.encode_text(ids)
    assert ours.shape == ref.shape == (len(TEXTS), tiny_backbone.embed_dim)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_tokenize_matches_open_clip_tokenizer(tiny_backbone):
    import open_clip

    ref = open_clip.get_tokenizer(tiny_backbone.name)(TEXTS)
    assert torch.equal(tiny_backbone.tokenize(TEXTS), ref)


def test_truncated_equals_full_sequence_on_arbitrary_embeddings(tiny_backbone):
    # Random prompt embeddings (not real tokens): cutting after the longest EOT must not change
    # any EOT feature, because the causal mask hides later positions.
    g = torch.Generator().manual_seed(0)
    n, length = 5, tiny_backbone.context_length
    embeds = torch.randn(n, length, tiny_backbone.text_width, generator=g)
    eot = torch.tensor([3, 9, 17, 4, 12])
    with torch.no_grad():
        cut = tiny_backbone.encode_text_embeddings(embeds, eot)
        full = tiny_backbone.encode_text_embeddings(embeds, eot, truncate=False)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)
    # and the padding after the EOT really is irrelevant
    embeds2 = embeds.clone()
    embeds2[:, 18:] = torch.randn(n, length - 18, tiny_backbone.text_width, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(tiny_backbone.encode_text_embeddings(embeds2, eot), cut)


def test_backbone_is_frozen_and_stays_in_eval(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not any(m.training for m in tiny_backbone.modules())


def test_image_encoding_shapes_and_transforms(tiny_backbone):
    from PIL import Image

    img = Image.new("RGB", (50, 40), (200, 10, 10))
    for tf in (tiny_backbone.eval_transform(), tiny_backbone.train_transform()):
        x = tf(img)
        assert x.shape == (3, tiny_backbone.image_size, tiny_backbone.image_size)
    feats = tiny_backbone.encode_image(torch.stack([tiny_backbone.eval_transform()(img)] * 2))
    assert feats.shape == (2, tiny_backbone.embed_dim)
    assert float(tiny_backbone.logit_scale) == pytest.approx(1 / 0.07, rel=1e-4)


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = load_backbone("vlprompt-test-vit")
    assert torch.equal(torch.get_rng_state(), before)
    b = load_backbone("vlprompt-test-vit")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_too_long_prompt_is_refused_with_the_excess(vit_backbone):
    text = "word " * 80
    with pytest.raises(VlpromptError, match=r"more than the context length 77"):
        vit_backbone.tokenize([text], what="class name")


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ModelError, match=r"unknown model 'ViT-B-61'.*Did you mean"):
        load_backbone("ViT-B-61")


def test_unknown_pretrained_tag_lists_tags():
    with pytest.raises(ModelError, match=r"unknown pretrained tag 'nope'.*available tags.*openai"):
        load_backbone("RN50-quickgelu", pretrained="nope")


def test_openai_tag_on_non_quickgelu_name_hints_quickgelu():
    with pytest.raises(ModelError, match="quickgelu"):
        load_backbone("vlprompt-test-vit", pretrained="openai")


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_backbone("vlprompt-test-vit", pretrained=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_file_loads_through_open_clip(tmp_path, vit_backbone, suffix):
    state = {k: v.clone() + 0.01 for k, v in vit_backbone.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_backbone("vlprompt-test-vit", pretrained=str(path))
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert loaded.info.pretrained == str(path)


def test_weights_for_another_architecture_give_a_clear_error(tmp_path, vit_backbone):
    path = tmp_path / "vit.pt"
    torch.save(vit_backbone.model.state_dict(), path)
    with pytest.raises(ModelError, match="does not match this architecture"):
        load_backbone("vlprompt-test-rn", pretrained=str(path))
