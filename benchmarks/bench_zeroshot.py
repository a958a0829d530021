"""Zero-shot evaluation throughput vs raw ``encode_image`` throughput of the same model.

    python benchmarks/bench_zeroshot.py [--model ViT-B-16] [--images 96] [--batch 32] [--device cpu] [--json out.json]

Random weights, real architecture. "raw" = ``encode_image`` on ready-made tensors in batches (the upper
bound: no data loading, no text, no logits). "ours" = the whole ``vlprompt zeroshot`` path
(:func:`vlprompt.tasks.api.zeroshot`): load + transform every image of a world dataset's test split, encode
it, build the class text features once (chunked), compute logits, accuracy and the report. Prints images
per second of both and their ratio (target: ours >= 80% of raw).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import append_rows  # noqa: E402

from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.config import config_from_dict  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--images", type=int, default=96, help="test images (a multiple of 12 classes)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the vlprompt path")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None, help="append the result rows to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    backbone = load_backbone(args.model, None, device=device)
    size = backbone.image_size
    print(f"model {args.model} (random weights), device {device}, torch threads {torch.get_num_threads()}, "
          f"{args.images} images of {size} px, batch {args.batch}")

    x = torch.randn(args.batch, 3, size, size, device=device)
    backbone.encode_image(x)  # warm-up
    n_batches = -(-args.images // args.batch)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        backbone.encode_image(x)
    _sync(device)
    raw = n_batches * args.batch / (time.perf_counter() - t0)

    from vlprompt.tasks.api import zeroshot

    cfg = config_from_dict({
        "method": {"name": "zeroshot"},
        "backbone": {"model": args.model, "pretrained": None},
        "data": {"dataset": "world_shapes", "num_workers": args.workers, "options": {"n_test": args.images // 12}},
        "optim": {"test_batch_size": args.batch},
        "train": {"device": str(device), "progress": False, "tensorboard": False},
    })
    _sync(device)
    t0 = time.perf_counter()
    report = zeroshot(cfg, progress=False, backbone=backbone)
    _sync(device)
    ours = len(report["per_class"]) * (args.images // 12) / (time.perf_counter() - t0)
    print(f"raw encode_image   {raw:8.2f} images/s")
    print(f"vlprompt zeroshot  {ours:8.2f} images/s  ({100 * ours / raw:.0f}% of raw)")
    if args.json is not None:
        rows = [{"name": "raw encode_image", "images_per_s": raw, "seconds_per_image": 1 / raw},
                {"name": "vlprompt zeroshot", "images_per_s": ours, "seconds_per_image": 1 / ours,
                 "fraction_of_raw": ours / raw}]
        append_rows(args.json, rows, model=args.model, device=str(device), images=args.images, batch=args.batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
