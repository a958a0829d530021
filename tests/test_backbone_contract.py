"""The backbone-family contract, checked for every registered family on the tiny test model it declares.

The families are read from the registry when this module is collected (built-ins of
``vlprompt.core.plugins.BUILTINS`` and every installed plugin), so a family added later is covered with
no edit here: each test below runs once per family on ``register_backbone_family(..., test_model=)``
loaded through ``build_backbone``. tests/test_docs_examples.py proves it: the docs' ``toy`` family (the
code block of docs/backbones.md, "Adding a family") installed in a plugin package is collected here like a
built-in family, passes every test, and trains through ``vlprompt train --model toy:...``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import vlprompt
import vlprompt.backbones.base as base
from vlprompt.backbones.base import (
    TOWER_KINDS,
    Backbone,
    BackboneFamily,
    backbone_families,
    encode_prefix_suffix_in_full,
    family_of,
    load_any_backbone,
    register_backbone_family,
)
from vlprompt.backbones.build import build_backbone
from vlprompt.cli.main import main
from vlprompt.config import BackboneConfig
from vlprompt.core.backbone_record import BackboneRecord
from vlprompt.core.errors import ModelError, VlpromptError
from vlprompt.engine.checkpoint import load_prompt, save_prompt
from vlprompt.methods.base import MethodContext
from vlprompt.methods.registry import build_method

from conftest import tiny_config, write_config

FAMILIES = sorted(backbone_families())
TEXTS = ["a photo of a dog.", "x", "a small red striped triangle"]
NAMES = ["dog", "traffic light", "red thing"]
CONTEXT = MethodContext(templates=["a photo of a {}.", "a drawing of a {}."])


@dataclass
class Loaded:
    """A family, the ``backbone.model`` string of its test model and that model built by ``build_backbone``."""

    family: BackboneFamily
    model: str
    backbone: Backbone

    def images(self, n: int, seed: int = 0) -> torch.Tensor:
        size = self.backbone.image_size
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory) -> Loaded:
    family = backbone_families()[request.param]
    for package in family.requires:
        pytest.importorskip(package)
    model = family.make_test_model(tmp_path_factory.mktemp(f"family_{family.name}"))
    return Loaded(family, model, build_backbone(BackboneConfig(model, None)))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5 * max(1.0, float(b.abs().max())))


# ------------------------------------------------------------------------------------ the contract
@pytest.mark.slow
def test_identity_is_the_familys_and_the_model_is_frozen(loaded):
    bb, name = loaded.backbone, loaded.family.name
    assert isinstance(bb, Backbone) and isinstance(bb, nn.Module)
    assert family_of(loaded.model)[0].name == name
    assert bb.family == bb.info.family == name
    # both spellings of result files (run metrics' mapping, protocol / OOD results' model string) agree
    record = BackboneRecord.from_any(bb.info.as_dict())
    assert record == bb.info.record == BackboneRecord.from_any({"model": loaded.model, "pretrained": None})
    assert record.family == name and family_of(record.model_string()) == (loaded.family, record.model)
    bb.train()
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())


@pytest.mark.slow
def test_one_shared_instance_per_spec(loaded):
    spec = BackboneConfig(loaded.model, None)
    assert build_backbone(spec) is loaded.backbone
    assert build_backbone(spec, shared=False) is not loaded.backbone


def test_tokenizer_lays_out_text_as_the_facts_say(loaded):
    bb = loaded.backbone
    facts = bb.text_facts
    assert facts.kind in TOWER_KINDS
    ids = bb.tokenize(TEXTS)
    assert ids.dtype == torch.long and ids.shape == (len(TEXTS), bb.context_length)
    assert facts.context_length == bb.context_length
    for row, text in zip(ids, TEXTS):
        tokens = bb.encode_tokens(text)
        assert row[facts.prefix_len: facts.prefix_len + len(tokens)].tolist() == tokens
    pooled = bb.pooled_index(ids)
    assert pooled.shape == (len(TEXTS),) and bool(((pooled >= 0) & (pooled < ids.shape[1])).all())
    assert torch.equal(bb.eot_index(ids), pooled)
    if facts.pool == "eot" and facts.eot_id is not None:
        assert ids[torch.arange(len(TEXTS)), pooled].tolist() == [facts.eot_id] * len(TEXTS)
    expected = int(pooled.max()) + 1 if facts.truncate_exact else ids.shape[1]
    assert bb.prompt_length(ids) == expected
    with pytest.raises(VlpromptError, match="context length"):
        bb.tokenize("word " * (bb.context_length + 5))


def test_token_embeddings(loaded):
    bb = loaded.backbone
    ids = bb.tokenize(TEXTS)
    table = bb.token_embedding_table()
    emb = bb.token_embedding(ids)
    assert table.ndim == 2 and table.shape[1] == bb.text_width
    assert emb.shape == (len(TEXTS), bb.context_length, bb.text_width)
    _close(emb[1, 3], table[ids[1, 3]])


def test_text_from_embeddings_equals_text_from_ids_and_carries_gradients(loaded):
    bb = loaded.backbone
    ids = bb.tokenize(TEXTS)
    emb = bb.token_embedding(ids).detach().requires_grad_(True)
    from_emb = bb.encode_text_embeddings(emb, bb.pooled_index(ids), ids=ids)
    with torch.no_grad():
        from_ids = bb.encode_text(ids)
        untruncated = bb.encode_text_embeddings(emb, bb.pooled_index(ids), ids=ids, truncate=False)
    assert from_emb.shape == (len(TEXTS), bb.embed_dim)
    _close(from_emb.detach(), from_ids)
    _close(untruncated, from_ids)
    from_emb.sum().backward()
    assert emb.grad is not None and bool(emb.grad.abs().sum() > 0), "no gradient reaches the prompt embeddings"


def test_shared_prefix_pass_equals_the_full_pass(loaded):
    bb = loaded.backbone
    ids = bb.tokenize([f"X X X {c}." for c in NAMES])
    cut = bb.text_facts.prefix_len + 3
    with torch.no_grad():
        emb = bb.token_embedding(ids)
        prefix = emb[:1, :cut].repeat(2, 1, 1) + 0.1 * torch.randn(2, cut, bb.text_width,
                                                                    generator=torch.Generator().manual_seed(1))
        suffix, eot = emb[:, cut:], bb.pooled_index(ids) - cut
        shared = bb.encode_text_shared_prefix(prefix, suffix, eot, ids=ids)
        full = encode_prefix_suffix_in_full(bb, prefix, suffix, eot, ids=ids)
    assert shared.shape == (2, len(NAMES), bb.embed_dim)
    _close(shared, full)


def test_image_features_logit_scale_and_transforms(loaded):
    from PIL import Image

    bb = loaded.backbone
    feats = bb.encode_image(loaded.images(2))
    assert feats.shape == (2, bb.embed_dim) and feats.dtype.is_floating_point and not feats.requires_grad
    assert bool(torch.isfinite(feats).all())
    scale = bb.logit_scale
    assert scale.ndim == 0 and scale.dtype == torch.float32 and 0 < float(scale) < float("inf")
    assert bb.logit_bias is None or bb.logit_bias.ndim == 0
    image = Image.new("RGB", (50, 40), (200, 10, 10))
    for transform in (bb.eval_transform(), bb.train_transform()):
        assert transform(image).shape == (3, bb.image_size, bb.image_size)


def test_local_features_or_their_documented_refusal(loaded):
    bb = loaded.backbone
    images = loaded.images(2)
    reason = bb.local_features_unsupported()
    if reason is None:
        glob, local = bb.local_features(images)
        _close(glob, bb.encode_image(images))
        assert local.ndim == 3 and local.shape[0] == 2 and local.shape[2] == bb.embed_dim
    else:
        assert isinstance(reason, str) and reason
        with pytest.raises(ModelError, match=re.escape(reason)):
            bb.local_features(images)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["zeroshot", "coop"])
def test_prompt_files_load_back_by_family_and_model(loaded, method, tmp_path):
    torch.manual_seed(0)
    built = build_method(method, loaded.backbone, NAMES, context=CONTEXT, **({"n_ctx": 2} if method == "coop" else {}))
    with torch.no_grad():
        for _, p in built.learned_parameters():
            p.add_(torch.randn_like(p))
    path = save_prompt(tmp_path / "prompt.safetensors", built.eval())
    again = load_prompt(path).eval()  # no backbone given: loaded from the family and model recorded in the file
    assert again.backbone.info.as_dict() == loaded.backbone.info.as_dict()
    feats = torch.randn(4, loaded.backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _close(again.forward_features(feats), built.forward_features(feats))


# ------------------------------------------------------------------------------------ registration
@pytest.fixture
def registry(monkeypatch):
    """The family registry, restored after the test."""
    backbone_families()
    monkeypatch.setattr(base, "_FAMILIES", dict(base._FAMILIES))
    return base._FAMILIES


def _other_loader(model, pretrained=None, **options):
    raise AssertionError("never called")


def test_a_taken_name_with_another_loader_is_refused(registry):
    with pytest.raises(ModelError, match=r"backbone family 'hf' is already registered with loader "
                                         r"vlprompt\.backbones\.hf:load_hf_backbone"):
        register_backbone_family("hf", _other_loader, test_model="hf:/x")
    assert registry["hf"].loader is not _other_loader
    # the same loader again (a re-import of the family's module) replaces the declaration
    again = register_backbone_family("open_clip", registry["open_clip"].loader, test_model="vlprompt-test-rn")
    assert backbone_families()["open_clip"] is again and again.test_model == "vlprompt-test-rn"


@pytest.mark.parametrize("name", ["Fam", "fa-m", "fam:", "", "1fam", None])
def test_a_malformed_family_name_is_refused(registry, name):
    with pytest.raises(ModelError, match="must be lowercase letters, digits and '_'"):
        register_backbone_family(name, _other_loader, test_model="x")


def test_a_family_needs_a_loader_and_a_test_model(registry):
    with pytest.raises(ModelError, match="loader must be a function or 'module:function'"):
        register_backbone_family("scratch", "no_colon", test_model="scratch:x")
    with pytest.raises(ModelError, match="test_model must be a model string or a function"):
        register_backbone_family("scratch", _other_loader, test_model="")
    assert "scratch" not in backbone_families()


def test_a_family_registered_at_run_time_routes_its_prefix(registry):
    family = register_backbone_family("scratch", "vlprompt.backbones.openclip:load_backbone", test_model="scratch:x")
    assert family.prefix == "scratch:" and backbone_families()["open_clip"].prefix is None
    assert family_of("scratch:vlprompt-test-vit") == (family, "vlprompt-test-vit")
    assert family_of("hf-hub:timm/x")[0].name == "open_clip"  # open_clip's own schemes are not families
    assert load_any_backbone("scratch:vlprompt-test-vit").name == "vlprompt-test-vit"  # "module:function" loader


def test_one_cache_for_every_family_keyed_by_family_model_and_options():
    plain = build_backbone(BackboneConfig("vlprompt-test-vit", None))
    assert build_backbone(BackboneConfig("open_clip:vlprompt-test-vit", None)) is plain  # same family and model
    assert build_backbone(BackboneConfig("vlprompt-test-vit", None, "bf16"), shared=True) is not plain
    assert build_backbone(BackboneConfig("vlprompt-test-rn", None)) is not plain


def test_an_unknown_family_is_one_error_line(capsys, tmp_path, tiny_imagefolder):
    cfg = write_config(tmp_path / "cfg.yaml", **tiny_config(tmp_path, tiny_imagefolder))
    assert main(["zeroshot", "-c", str(cfg), "--model", "nofamily:ViT-B-16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown backbone family 'nofamily' in model 'nofamily:ViT-B-16'")
    assert "registered families: " in err[0] and "open_clip" in err[0]


def _env() -> dict[str, str]:
    """The environment of a subprocess that imports this vlprompt."""
    src = Path(vlprompt.__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
@pytest.mark.subprocess
def test_registering_the_families_imports_no_optional_dependency():
    code = ("import sys\nfrom vlprompt.backbones.base import backbone_families\n"
            "assert {'open_clip', 'hf'} <= set(backbone_families())\n"
            "print(sorted(m for m in ('transformers', 'open_clip') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
