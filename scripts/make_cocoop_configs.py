"""Write configs/cocoop/*.yaml: the settings of CoCoOp (Zhou et al., CVPR 2022).

* ``base2new/<dataset>_{cocoop,coop}_vit_b16.yaml``: 16 shots, ViT-B/16, train on base classes
  (run with ``vlprompt protocol base2new -c FILE``; the protocol evaluates base and new).
* ``dg_imagenet_{cocoop,coop}_vit_b16.yaml``: ImageNet 16 shots as the source; run
  ``vlprompt protocol dg -c FILE --targets imagenetv2,imagenet_sketch,imagenet_a,imagenet_r``.
* ``xd_imagenet_{cocoop,coop}_vit_b16.yaml``: the same source for cross-dataset transfer to the other
  10 datasets (``vlprompt protocol xd -c FILE --targets caltech101,oxford_pets,...``).

CoCoOp: M = 4 context tokens initialised from "a photo of a", Meta-Net E -> E/16 -> D, SGD lr 0.002,
batch size 1 (the paper's setting; vlprompt's batched text pass also runs batch >= 8), 10 epochs,
one constant warm-up epoch at 1e-5, cosine. CoOp in CoCoOp's comparison: M = 16, random init,
batch 32; base-to-new epochs as CoCoOp's appendix reports for its CoOp runs are not given per dataset,
so CoOp keeps its own recipe (200 epochs for 16 shots; ImageNet 50).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1] / "configs" / "cocoop"
DATASETS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
            "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
MODEL = "ViT-B-16-quickgelu"


def method_block(method: str) -> dict:
    if method == "cocoop":
        return {"name": "cocoop", "n_ctx": 4, "ctx_init": "a photo of a"}
    return {"name": "coop", "n_ctx": 16, "ctx_init": None, "csc": False, "class_token_position": "end"}


def optim_block(method: str, dataset: str) -> dict:
    if method == "cocoop":
        return {"name": "sgd", "lr": 0.002, "max_epoch": 10, "batch_size": 1, "warmup_epoch": 1,
                "warmup_lr": 1.0e-5, "lr_scheduler": "cosine", "test_batch_size": 100}
    return {"name": "sgd", "lr": 0.002, "max_epoch": 50 if dataset == "imagenet" else 200, "batch_size": 32,
            "warmup_epoch": 1, "warmup_lr": 1.0e-5, "lr_scheduler": "cosine", "test_batch_size": 100}


def config(method: str, dataset: str, subsample: str, out: str) -> dict:
    return {
        "method": method_block(method),
        "backbone": {"model": MODEL, "pretrained": "openai"},
        "data": {"dataset": dataset, "root": "./data", "shots": 16, "subsample_classes": subsample, "num_workers": 8},
        "optim": optim_block(method, dataset),
        "train": {"seed": 1, "precision": "amp", "output_dir": out},
    }


def expected_files() -> dict[Path, str]:
    files = {}
    for method in ("cocoop", "coop"):
        for ds in DATASETS:
            cfg = config(method, ds, "base", f"runs/base2new/{method}/{ds}/seed{{seed}}")
            files[ROOT / "base2new" / f"{ds}_{method}_vit_b16.yaml"] = (
                f"# {method} base-to-new on {ds} (CoCoOp, CVPR 2022): vlprompt protocol base2new -c THIS_FILE\n"
                + yaml.safe_dump(cfg, sort_keys=False))
        for kind in ("dg", "xd"):
            cfg = config(method, "imagenet", "all", f"runs/{kind}/{method}/imagenet/seed{{seed}}")
            targets = ("imagenetv2,imagenet_sketch,imagenet_a,imagenet_r" if kind == "dg"
                       else ",".join(d for d in DATASETS if d != "imagenet"))
            files[ROOT / f"{kind}_imagenet_{method}_vit_b16.yaml"] = (
                f"# {method}, ImageNet 16 shots as source (CoCoOp, CVPR 2022):\n"
                f"# vlprompt protocol {kind} -c THIS_FILE --targets {targets}\n"
                + yaml.safe_dump(cfg, sort_keys=False))
    return files


def main() -> int:
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(expected_files())} configs under {ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
