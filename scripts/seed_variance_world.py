"""How much does the seed move few-shot accuracy? CoOp on the embedded world, 1 / 2 / 4 shots, 10 seeds.

    python scripts/seed_variance_world.py [--seeds 1-10] [--shots 1,2,4] [--epochs 25]
                                          [--datasets world_positions,world_textures] [--out runs/seed_variance]

The seed picks the K training images per class (and the prompt initialisation and batch order).
Settings: shipped world CLIP (``vlprompt-world-rn``, tag ``world``), CoOp with 16 context tokens,
``--epochs`` epochs at batch 32, no augmentation (features cached, exact), the datasets' default
few-shot sampler. Prints a Markdown table (mean, standard deviation, min and max of the test
accuracy over the seeds, and zero-shot CLIP for scale) and writes it with every run's accuracy to
``<out>/seed_variance.json``. Finished runs are reused when the script runs again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from vlprompt.core.tables import markdown_table

MODEL, PRETRAINED = "vlprompt-world-rn", "world"


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1-10")
    ap.add_argument("--shots", default="1,2,4")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--datasets", default="world_positions,world_textures")
    ap.add_argument("--out", default="runs/seed_variance")
    args = ap.parse_args()

    from vlprompt.backbones.openclip import load_backbone
    from vlprompt.cli.demo_methods import world_config
    from vlprompt.engine.trainer import train
    from vlprompt.tasks.api import zeroshot

    seeds, shots = parse_seeds(args.seeds), [int(s) for s in args.shots.split(",")]
    out = Path(args.out)
    cache = out / "feature_cache"
    backbone = load_backbone(MODEL, PRETRAINED)
    t0 = time.time()
    rows, record = [], {"seeds": seeds, "epochs": args.epochs, "runs": {}}
    for dataset in args.datasets.split(","):
        zs_cfg = world_config({"name": "zeroshot"}, {}, dataset, model=MODEL, pretrained=PRETRAINED)
        zs = zeroshot(zs_cfg, progress=False, backbone=backbone)["accuracy"]
        for k in shots:
            accs = []
            for seed in seeds:
                cfg = world_config({"name": "coop", "n_ctx": 16}, {"max_epoch": args.epochs, "batch_size": 32},
                                   dataset, model=MODEL, pretrained=PRETRAINED, seed=seed, shots=k,
                                   out=out / dataset / f"{k}shot" / f"seed{seed}",
                                   feature_cache_dir=str(cache))
                cfg.train.checkpoint_every = args.epochs  # one checkpoint at the end: nothing to resume mid-run
                accs.append(train(cfg, resume=True, backbone=backbone)["test"]["accuracy"])
            record["runs"][f"{dataset}/{k}"] = accs
            sd = statistics.stdev(accs)
            rows.append([dataset, str(k), f"{statistics.fmean(accs):.1f}", f"{sd:.1f}",
                         f"{min(accs):.1f}", f"{max(accs):.1f}", f"{max(accs) - min(accs):.1f}", f"{zs:.1f}"])
            print(f"{dataset} {k}-shot: {statistics.fmean(accs):.1f} ± {sd:.1f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            out.mkdir(parents=True, exist_ok=True)  # partial results survive an interrupted run
            (out / "seed_variance.json").write_text(json.dumps({**record, "seconds": time.time() - t0}, indent=1))
    table = markdown_table(["dataset", "shots", "mean", "std", "min", "max", "max - min", "zero-shot"], rows)
    record["table"], record["seconds"] = table, time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "seed_variance.json").write_text(json.dumps(record, indent=1))
    print(table)


if __name__ == "__main__":
    main()
