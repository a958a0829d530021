"""``BackboneRecord``: one backbone identity read from both spellings of result files (issue 26)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlprompt.core.backbone_record import BackboneRecord

V0 = Path(__file__).parent / "data" / "results_v0"


def test_run_metrics_and_protocol_spellings_give_one_record():
    # run metrics / prompt files: the mapping of BackboneInfo; protocol / OOD results: the --model string
    metrics = {"family": "hf", "model": "/models/clip", "pretrained": None, "embed_dim": 512, "text_width": 512}
    protocol = {"model": "hf:/models/clip", "pretrained": None}
    assert BackboneRecord.from_any(metrics) == BackboneRecord.from_any(protocol) == BackboneRecord("hf", "/models/clip")
    assert BackboneRecord.from_any("hf:/models/clip") == BackboneRecord("hf", "/models/clip")
    oc = {"family": "open_clip", "model": "ViT-B-16", "pretrained": "openai", "embed_dim": 512, "text_width": 512}
    assert BackboneRecord.from_any(oc) == BackboneRecord.from_any({"model": "ViT-B-16", "pretrained": "openai"})
    assert BackboneRecord.from_any(oc).key() == ("open_clip", "ViT-B-16", "openai")


def test_the_previous_releases_files_all_name_one_backbone():
    files = [p for p in V0.rglob("*.json") if "backbone" in json.loads(p.read_text())]
    assert {p.name for p in files} >= {"metrics.json", "base2new_results.json", "xd_results.json",
                                       "ood_results.json", "zeroshot_eval.json"}
    records = {BackboneRecord.from_any(json.loads(p.read_text())["backbone"]) for p in files}
    assert records == {BackboneRecord("open_clip", "vlprompt-test-vit", None)}


@pytest.mark.parametrize("model", ["ViT-B-16", "hf-hub:timm/ViT-B-16-SigLIP", "local-dir:/models/x", "/w/x.pt"])
def test_strings_without_a_family_prefix_are_open_clip(model):
    record = BackboneRecord.from_any({"model": model, "pretrained": None})
    assert record == BackboneRecord("open_clip", model) and record.model_string() == model


def test_label_dict_and_model_string_round_trip():
    oc = BackboneRecord("open_clip", "ViT-B-16", "openai")
    hf = BackboneRecord("hf", "/models/clip")
    assert oc.label == "ViT-B-16" and hf.label == "hf:/models/clip"  # what reports group by
    assert oc.as_dict() == {"family": "open_clip", "model": "ViT-B-16", "pretrained": "openai"}
    for record in (oc, hf, BackboneRecord("toy", "vlprompt-test-vit")):
        assert BackboneRecord.from_any(record.as_dict()) == record
        assert BackboneRecord.from_model_string(record.model_string(), record.pretrained) == record
        assert BackboneRecord.from_any(record) is record
    assert hf.model_string() == "hf:/models/clip" and oc.model_string() == "ViT-B-16"
    assert BackboneRecord.from_any("open_clip:ViT-B-16") == BackboneRecord("open_clip", "ViT-B-16")


@pytest.mark.parametrize(("value", "message"), [
    (3, "must be a mapping with 'model', got int"),
    ("", "must name a model"),
    ({"pretrained": "openai"}, "'backbone.model' must be a non-empty string"),
    ({"model": ""}, "'backbone.model' must be a non-empty string"),
    ({"model": "x", "pretrained": 5}, "'backbone.pretrained' must be a string or null"),
    ({"model": "x", "family": "Open-CLIP"}, "'backbone.family' must be a family name"),
])
def test_malformed_backbones_are_refused_with_the_field(value, message):
    with pytest.raises(ValueError, match=message):
        BackboneRecord.from_any(value)


def test_a_loaded_backbone_gives_its_record(vit_backbone):
    assert vit_backbone.info.record == BackboneRecord("open_clip", "vlprompt-test-vit", None)
