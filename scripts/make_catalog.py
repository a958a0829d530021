"""Write src/vlprompt/core/catalog.json: what ``vlprompt methods`` and ``vlprompt models`` print, without torch.

The catalogue is computed here from the live library (the method registry, open_clip's model configs and
pretrained tags) and checked against it by tests/test_catalog.py, so it cannot drift silently:

* ``methods``: every built-in method's options (name, default, help) and capabilities;
* ``models``: every open_clip architecture (plus vlprompt's own configs) classified by
  :func:`vlprompt.backbones.catalog.classify`, with its pretrained tags;
* ``support``: for each pair of tower kinds (image, text) that some architecture has, the methods that really
  run there. It is measured, not declared: every method is built on a tiny random-init model of that pair,
  fitted when it fits, and asked for logits of two images; a method that refuses the towers (a
  ``ModelError``, e.g. deep vision prompts on a ResNet image tower) or fails is left out.

Run: ``python scripts/make_catalog.py`` (about a minute on 2 CPU cores) after adding a method or updating
open_clip.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "vlprompt" / "core" / "catalog.json"
CLASSES = ["red thing", "green thing", "blue thing"]
DESCRIPTIONS = {n: [f"a {n}, which has a colour."] for n in CLASSES}

# the tiny towers: vision / text sections of open_clip model configs (tests' vlprompt-test-* models)
_VIT = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}
IMAGE_TOWERS: dict[str, dict[str, Any]] = {
    "vit": _VIT,
    "modified-resnet": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "vit-attention-pool": {**_VIT, "attentional_pool": True, "attn_pooler_heads": 2},
    "timm": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "avg",
             "timm_proj": "linear", "image_size": 160},
}
_CAUSAL = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TEXT_TOWERS: dict[str, dict[str, Any]] = {
    "causal-eot": {"text_cfg": _CAUSAL},
    "bidir-last": {"custom_text": True, "init_logit_bias": -10,
                   "text_cfg": {**_CAUSAL, "no_causal_mask": True, "proj_bias": True,
                                "pool_type": "last"}},
    "bidir-eot": {"custom_text": True, "text_cfg": {**_CAUSAL, "no_causal_mask": True}},
    "appended-cls": {"custom_text": True, "text_cfg": {**_CAUSAL, "embed_cls": True, "output_tokens": True},
                     "multimodal_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                        "layers": 1, "attn_pooler_heads": 2}},
}


class _Fit:
    """Few-shot data for ``fit``: random images of the three classes through the method's own encoder."""

    def __init__(self, method: Any) -> None:
        import torch

        self.method = method
        self.labels = torch.arange(3).repeat_interleave(2)

    def _images(self, seed: int) -> Any:
        import torch

        size = self.method.backbone.image_size
        return torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def features(self, split: str) -> Any:
        import torch

        with torch.no_grad():
            return self.method.encode_images(self._images(1 if split == "train" else 2)), self.labels

    def augmented_features(self, views: int, crop_scale: Any = (0.5, 1.0)) -> Any:
        import torch

        with torch.no_grad():
            feats = [self.method.encode_images(self._images(10 + v)) for v in range(views)]
        return torch.stack(feats), self.labels

    def log(self, msg: str) -> None:
        pass


#: options that only make the measurement smaller (the contract test's)
SMALL: dict[str, dict[str, Any]] = {
    "tip_adapter": {"search_step": [20, 5], "augment_epoch": 2},
    "tip_adapter_f": {"search_step": [20, 5], "augment_epoch": 2}, "linear_probe": {"search_steps": 2},
    "idlike": {"n_ctx": 2, "n_ex_ctx": 2, "n_ex_prompts": 2, "n_crop": 4, "n_selection": 2, "crop_rounds": 1},
    "negprompt": {"ctx_init": "a photo", "positive_epochs": 1},
}


def runs_on(name: str, backbone: Any) -> bool:
    """Whether method ``name`` builds on ``backbone``, fits when it fits and gives logits of two images."""
    import torch

    from vlprompt.methods.base import MethodContext
    from vlprompt.methods.registry import build_method

    context = MethodContext(templates=["a photo of a {}."], descriptions=DESCRIPTIONS)
    try:
        torch.manual_seed(0)
        method = build_method(name, backbone, CLASSES, context=context, **SMALL.get(name, {}))
        if method.capabilities.fitted:
            method.fit(_Fit(method))
        size = backbone.image_size
        with torch.no_grad():
            logits = method.eval()(torch.randn(2, 3, size, size))
        return tuple(logits.shape) == (2, len(CLASSES)) and bool(torch.isfinite(logits).all())
    except Exception as exc:  # noqa: BLE001 - any failure means "does not run here"
        logging.getLogger("make_catalog").info("%s on %s: %s", name, backbone.name, str(exc)[:200])
        return False


def tiny_hf_text_tower(folder: Path) -> dict[str, Any]:
    """The ``hf-encoder`` text tower: a tiny random-init RoBERTa (as xlm-roberta-*) saved in ``folder`` with CLIP's
    tokenizer (backbones.hf_convert.write_test_text_encoder, as the tests), pooled by mean as the XLM-R configs say."""
    from vlprompt.backbones.hf_convert import write_test_text_encoder

    write_test_text_encoder(folder, max_positions=80)
    return {"text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "context_length": 77,
                         "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear"}}


def tiny_config(image: str, text: str) -> dict[str, Any]:
    """An open_clip config of a tiny random-init model with these tower kinds (CoCa's image tower returns its
    tokens too, as every CoCa config says)."""
    vision = dict(IMAGE_TOWERS[image])
    if text == "appended-cls":
        vision["output_tokens"] = True
    return {"embed_dim": 32, "vision_cfg": vision, **TEXT_TOWERS[text]}


def measure_support(methods: list[str], pairs: list[str]) -> dict[str, list[str] | None]:
    """``{"<image kind>|<text kind>": [methods that run]}`` for each tower pair of the catalogue, measured on
    tiny random-init models; None for a pair that cannot be built here."""
    import open_clip

    from vlprompt.backbones.openclip import load_backbone

    out: dict[str, list[str] | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        TEXT_TOWERS["hf-encoder"] = tiny_hf_text_tower(Path(tmp) / "roberta")
        buildable = [p for p in pairs if p.split("|")[0] in IMAGE_TOWERS and p.split("|")[1] in TEXT_TOWERS]
        for pair in buildable:
            name = "vlprompt-catalog-" + pair.replace("|", "-")
            (Path(tmp) / f"{name}.json").write_text(json.dumps(tiny_config(*pair.split("|"))))
        open_clip.add_model_config(tmp)
        for pair in pairs:
            if pair not in buildable:
                out[pair] = None
                print(f"{pair:32s} not measured")
                continue
            backbone = load_backbone("vlprompt-catalog-" + pair.replace("|", "-"), pretrained=None)
            out[pair] = [m for m in methods if runs_on(m, backbone)]
            print(f"{pair:32s} {len(out[pair] or [])}/{len(methods)} methods run")
    return out


def build() -> dict[str, Any]:
    from vlprompt.core.catalog import support_key
    from vlprompt.tasks.catalog import describe_methods, describe_models, describe_towers

    methods = describe_methods()
    version, models = describe_models()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        support = measure_support(list(methods), sorted({support_key(m["image_tower"], m["text_kind"])
                                                          for m in models}))
    return {"comment": "generated by scripts/make_catalog.py; checked by tests/test_catalog.py",
            "open_clip_version": version, "methods": methods, "models": models, "support": support,
            **describe_towers()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(OUT))
    args = parser.parse_args()
    data = build()
    Path(args.output).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: {len(data['methods'])} methods, {len(data['models'])} models")


if __name__ == "__main__":
    main()
