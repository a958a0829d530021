"""Write configs/upl/*.yaml (UPL, Huang et al. 2022) and configs/locoop/*.yaml (LoCoOp, NeurIPS 2023).

UPL: RN50 (OpenAI), 16 context tokens from random init, top-16 pseudo-labels per class, SGD lr 0.002,
batch 32, 50 epochs, ensemble of 16 prompts. Usage::

    vlprompt pseudo-label -c configs/upl/dtd_rn50.yaml --root /data -o runs/upl/dtd/pseudo.json
    vlprompt train -c configs/upl/dtd_rn50.yaml --root /data --set data.fewshot_file=runs/upl/dtd/pseudo.json

LoCoOp: ImageNet-1K as ID, ViT-B/16, 16 unified context tokens, lambda 0.25, top-K 200, SGD lr 0.002,
batch 32, 50 epochs, 1 or 16 shots; evaluate with
``vlprompt ood --run RUN --ood-sets /data/ood/iNaturalist,/data/ood/SUN,/data/ood/Places,/data/ood/dtd``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1] / "configs"
DATASETS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
            "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
OPTIM = {"name": "sgd", "lr": 0.002, "max_epoch": 50, "batch_size": 32, "warmup_epoch": 1, "warmup_lr": 1.0e-5,
         "lr_scheduler": "cosine", "test_batch_size": 100}


def upl(dataset: str) -> dict:
    return {
        "method": {"name": "upl", "n_ctx": 16, "n_prompts": 16},
        "backbone": {"model": "RN50-quickgelu", "pretrained": "openai"},
        "data": {"dataset": dataset, "root": "./data", "shots": 16, "num_workers": 8},
        "optim": OPTIM,
        "train": {"seed": 1, "precision": "amp", "output_dir": f"runs/upl/{dataset}/rn50_ens16/seed{{seed}}"},
    }


def locoop(shots: int) -> dict:
    return {
        "method": {"name": "locoop", "n_ctx": 16, "ctx_init": None, "csc": False, "class_token_position": "end",
                   "lambda_value": 0.25, "top_k": 200},
        "backbone": {"model": "ViT-B-16-quickgelu", "pretrained": "openai"},
        "data": {"dataset": "imagenet", "root": "./data", "shots": shots, "num_workers": 8},
        "optim": OPTIM,
        "train": {"seed": 1, "precision": "amp",
                  "output_dir": f"runs/locoop/imagenet/vit_b16_{shots}shots/seed{{seed}}"},
    }


def expected_files() -> dict[Path, str]:
    files = {}
    for ds in DATASETS:
        files[ROOT / "upl" / f"{ds}_rn50.yaml"] = (
            f"# UPL on {ds} (Huang et al., 2022). First: vlprompt pseudo-label -c THIS_FILE -o PSEUDO.json;\n"
            "# then: vlprompt train -c THIS_FILE --set data.fewshot_file=PSEUDO.json\n"
            + yaml.safe_dump(upl(ds), sort_keys=False))
    for shots in (1, 16):
        files[ROOT / "locoop" / f"imagenet_vit_b16_{shots}shots.yaml"] = (
            f"# LoCoOp, ImageNet-1K {shots}-shot (Miyai et al., NeurIPS 2023). After training:\n"
            "# vlprompt ood --run RUN --ood-sets DATA/iNaturalist,DATA/SUN,DATA/Places,DATA/dtd\n"
            + yaml.safe_dump(locoop(shots), sort_keys=False))
    return files


def main() -> int:
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(expected_files())} configs under {ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
