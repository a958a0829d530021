"""Peak memory and time of one CoCoOp training step at many classes (vlprompt's batched path only).

    python benchmarks/bench_cocoop_memory.py [--model ViT-B-16] [--classes 1000] [--batch 8] [--device cuda]
        [--json out.json]

The reference implementation runs one full 77-token text pass per image (batch size 1 in its configs);
vlprompt runs B x n_cls prompts per step, each image's SOS + context encoded once and shared by its
classes (chunked by ``max_prompts_per_pass``). Random weights, real architecture. On CUDA prints
``torch.cuda.max_memory_allocated`` (target: 1000 classes at batch >= 8 under 40 GB, with
``--precision amp``: bf16 autocast as ``train.compute_precision: amp``); on CPU the process's peak resident
memory (``ru_maxrss``), which bounds the same tensors.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import NAME_SETS, append_rows, class_names  # noqa: E402

from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--names", default="imagenet", choices=NAME_SETS,
                    help="class names: the first --classes ImageNet names, DTD's 47, or 'class number {i}'")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=("fp32", "amp"), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None, help="append the result row to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    backbone = load_backbone(args.model, None, device=device)
    names = class_names(args.names, args.classes)
    method = build_method("cocoop", backbone, names).to(device)
    opt = torch.optim.SGD([p for _, p in method.learned_parameters()], lr=0.002, momentum=0.9)
    feats = backbone.encode_image(torch.randn(args.batch, 3, backbone.image_size, backbone.image_size,
                                              device=device))
    labels = torch.randint(0, len(names), (args.batch,), device=device)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "amp"
           else contextlib.nullcontext())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with amp:
        loss = method.training_loss(feats, labels).total()
    opt.zero_grad()
    loss.backward()
    opt.step()
    row: dict[str, object] = {"step": f"CoCoOp {args.model}, {len(names)} {args.names} classes, batch {args.batch}, "
                                      f"{args.precision}"}
    if device.type == "cuda":
        torch.cuda.synchronize()
        row["step_s"] = time.perf_counter() - t0
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        peak = f"peak CUDA memory {row['peak_gib']:.1f} GiB"
    else:
        row["step_s"] = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        row.update(peak_rss_gib=rss, rss_before_step_gib=rss0)
        peak = f"peak resident memory {rss:.1f} GiB (model and setup before the step: {rss0:.1f} GiB)"
    print(f"{row['step']}, {device}: {row['step_s']:.1f} s/step, {peak}")
    if args.json is not None:
        append_rows(args.json, [row], model=args.model, device=str(device), classes=len(names), names=args.names,
                    batch=args.batch, precision=args.precision)


if __name__ == "__main__":
    main()
