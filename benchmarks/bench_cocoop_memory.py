"""Peak memory and time of one CoCoOp training step at many classes (vlprompt's batched path only).

    python benchmarks/bench_cocoop_memory.py [--model ViT-B-16] [--classes 1000] [--batch 8] [--device cuda]

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
import time

import torch

from vlprompt.backbones.openclip import load_backbone
from vlprompt.methods.registry import build_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=("fp32", "amp"), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    backbone = load_backbone(args.model, None, device=device)
    names = [f"class number {i}" for i in range(args.classes)]
    method = build_method("cocoop", backbone, names).to(device)
    opt = torch.optim.SGD([p for _, p in method.learned_parameters()], lr=0.002, momentum=0.9)
    feats = backbone.encode_image(torch.randn(args.batch, 3, backbone.image_size, backbone.image_size,
                                              device=device))
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
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
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        peak = f"peak resident memory {rss:.1f} GiB (model and setup before the step: {rss0:.1f} GiB)"
    print(f"CoCoOp {args.model}, {args.classes} classes, batch {args.batch}, {args.precision}, {device}: "
          f"{time.perf_counter() - t0:.1f} s/step, {peak}")


if __name__ == "__main__":
    main()
