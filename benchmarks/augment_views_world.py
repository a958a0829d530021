"""Accuracy and time of K cached augmented views (``data.augment_views``) vs on-the-fly augmentation.

    python benchmarks/augment_views_world.py [--datasets world_shapes,world_textures] [--seeds 1,2,3]
                                             [--views 4,8] [--epochs 50] [--device cpu] [--json out.json]

CoOp (M = 16, random init, 16 shots) with the shipped world CLIP on world datasets, three ways:
no augmentation (cached features, exact), CoOp's random resized crop + flip encoded anew every step
(the published recipe), and K augmented views per image encoded once and sampled per epoch (the opt-in
approximation). Prints test accuracy mean ± std over seeds and training seconds per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import append_rows  # noqa: E402

from vlprompt.config import BackboneConfig, config_from_dict  # noqa: E402
from vlprompt.core.tables import markdown_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="world_shapes,world_textures")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--views", default="4,8")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="append the result rows to this JSON file")
    args = ap.parse_args()
    from vlprompt.backbones.build import build_backbone
    from vlprompt.engine.trainer import train

    backbone = build_backbone(BackboneConfig("vlprompt-world-rn", "world"), device=args.device)
    modes = [("none", {"augment": False}), ("on the fly", {"augment": True})]
    modes += [(f"{k} cached views", {"augment": True, "augment_views": int(k)}) for k in args.views.split(",")]
    rows = []
    records: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets.split(","):
            for name, data in modes:
                accs, secs = [], []
                for seed in (int(s) for s in args.seeds.split(",")):
                    cfg = config_from_dict({
                        "method": {"name": "coop", "n_ctx": 16},
                        "backbone": {"model": "vlprompt-world-rn", "pretrained": "world"},
                        "data": {"dataset": dataset, "shots": 16, "num_workers": 0, **data},
                        "optim": {"max_epoch": args.epochs, "batch_size": 32},
                        "train": {"seed": seed, "device": args.device, "progress": False, "tensorboard": False,
                                  "output_dir": str(Path(tmp) / f"{dataset}_{name}_{seed}")},
                    })
                    t0 = time.time()
                    accs.append(train(cfg, backbone=backbone).test["accuracy"])  # a RunResult
                    secs.append(time.time() - t0)
                sd = statistics.pstdev(accs) if len(accs) > 1 else 0.0
                mean_acc, mean_s = statistics.fmean(accs), statistics.fmean(secs)
                rows.append([dataset, name, f"{mean_acc:.1f} ± {sd:.1f}", f"{mean_s:.1f}"])
                records.append({"name": f"{dataset}, {name}", "accuracy": mean_acc, "accuracy_std": sd,
                                "run_s": mean_s, "seeds": len(accs), "epochs": args.epochs})
                print(rows[-1], flush=True)
    print(markdown_table(["dataset", "augmentation", "test accuracy", "seconds / run"], rows))
    if args.json is not None:
        append_rows(args.json, records, device=args.device)


if __name__ == "__main__":
    main()
