"""Per-image cost of TDA's and BoostAdapter's caches over plain zero-shot logits, against the image tower's time.

    python benchmarks/bench_tda_overhead.py [--model ViT-B-16] [--classes 1000] [--images 3000] [--views 64]
        [--batch 8] [--device cpu] [--threads 1] [--json out.json]

Issue 28 §3: an online cache must cost next to nothing over zero-shot evaluation: TDA's overhead over plain
zero-shot logits, on features, at most 10% of the image tower's time per image (ViT-B/16, random weights, 1000
classes, a stream of a few thousand images).

* **image tower**: ``encode_image`` of the model (random open_clip weights, no download) on a batch of ``--batch``
  random images at its input size, fp32; the median over ``--rounds`` timed batches (one warm-up), per image.
* **the cache part**, on features: the methods ``tda`` and ``boostadapter`` with their default options (kdiAAA/TDA
  configs/imagenet.yaml; taolinzhang/BoostAdapter configs/imagenet_a.yaml) run a stream of ``--images`` test images
  given as L2-normalised features of the model's width ``E``, against ``--classes`` random unit class features
  (:meth:`~vlprompt.methods.tda.model.TDA.adapt_features`: the whole per-image step of the method once the views
  are encoded: zero-shot logits, confident-view summary, cache updates, cache logits). Each image is a random class
  ``c`` with a random strength ``s``: ``normalise(s t_c + n / sqrt(E))`` (views: that + a little noise each), so the
  predictions spread over the classes, the caches fill and replace and the negative cache's entropy gate opens for
  part of the stream (printed). The methods are built on the tiny test tower (its text tower encodes the class
  names in a second) with CLIP's logit scale 100 and then given the random class features: no text tower runs per
  image, and the cache tensors have the ViT's width. **Zero-shot logits** on the same features
  (``logit_scale * f t^T`` of the original view) are the baseline.
* rows: TDA with 1 view (TDA's setting on ImageNet and the 10 cross-dataset targets) and with ``--views`` views
  (its ImageNet-variant setting, AugMix views), BoostAdapter with ``--views`` views; each with its overhead over
  zero-shot logits of the same views (``1`` view: the original's; ``V`` views: the logits of all V views, which any
  method over V views computes) as a fraction of the image tower's time per image, the cache size at the end, and
  the view cost of the ``V - 1`` augmented views (``(V - 1)`` x the tower's time per image), reported apart.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import append_rows, imagenet_class_names, machine_line, timed  # noqa: E402

from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.methods.base import MethodContext  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402


def tower_seconds_per_image(model: str, batch: int, rounds: int, device: torch.device) -> tuple[float, int]:
    """Median seconds per image of the image tower on a random batch, and the feature width E."""
    backbone = load_backbone(model, None, device=device)
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)
    with torch.no_grad():
        width = int(backbone.encode_image(images[:1]).shape[-1])  # warm-up
        times = [timed(lambda: backbone.encode_image(images), device) for _ in range(rounds)]
    return statistics.median(times) / batch, width


def feature_stream(text: torch.Tensor, n_images: int, n_views: int, seed: int, chunk: int):
    """Chunks of test images as normalised features ``[chunk, V, E]`` (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    n_cls, width = text.shape
    for start in range(0, n_images, chunk):
        k = min(chunk, n_images - start)
        cls = torch.randint(0, n_cls, (k,), generator=g)
        strength = torch.rand(k, 1, generator=g) * 0.3
        base = strength * text[cls].cpu() + torch.randn(k, width, generator=g) / math.sqrt(width)
        views = base.unsqueeze(1) + 0.5 * torch.randn(k, n_views, width, generator=g) / math.sqrt(width)
        views[:, 0] = base
        yield F.normalize(views, dim=-1).to(text.device)


def run_stream(step, text: torch.Tensor, args: argparse.Namespace, n_views: int, device: torch.device) -> float:
    """Seconds per image of ``step(features [V, E])`` over the stream (feature generation not timed)."""
    total = 0.0
    for feats in feature_stream(text, args.images, n_views, args.seed, args.chunk):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for f in feats:
            step(f)
        if device.type == "cuda":
            torch.cuda.synchronize()
        total += time.perf_counter() - t0
    return total / args.images


def build(name: str, names: list[str], text: torch.Tensor, device: torch.device) -> Any:
    tiny = load_backbone("vlprompt-test-vit", None, device=device)
    with torch.no_grad():
        tiny.model.logit_scale.fill_(math.log(100.0))  # CLIP's (the authors' constant 100.)
    method = build_method(name, tiny, names, context=MethodContext(dataset="imagenet_a")).eval()
    method.classifier = text
    return method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16", help="open_clip model of the image tower (random weights)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--images", type=int, default=3000, help="test images in the stream")
    ap.add_argument("--views", type=int, default=64, help="views of the multi-view rows (the original included)")
    ap.add_argument("--batch", type=int, default=8, help="images per timed image-tower batch")
    ap.add_argument("--rounds", type=int, default=3, help="timed image-tower batches (median)")
    ap.add_argument("--chunk", type=int, default=250, help="images generated at a time (not timed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="append the result rows to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    print(f"model {args.model} (random weights), {args.classes} classes, {args.images} images, device {device}, fp32, "
          f"{machine_line()}", flush=True)
    tower_s, width = tower_seconds_per_image(args.model, args.batch, args.rounds, device)
    print(f"image tower: {tower_s * 1e3:.2f} ms / image (batch {args.batch}, E = {width})", flush=True)
    names = imagenet_class_names(args.classes)
    g = torch.Generator().manual_seed(args.seed + 1)
    text = F.normalize(torch.randn(args.classes, width, generator=g), dim=-1).to(device)
    tda = build("tda", names, text, device)
    boost = build("boostadapter", names, text, device)
    scale = tda.backbone.logit_scale.to(device)

    def zero_shot(f: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return scale * (f @ text.t())

    rows: list[dict[str, Any]] = [{"name": "image tower", "seconds_per_image": tower_s}]
    zs = {1: run_stream(lambda f: zero_shot(f[:1]), text, args, 1, device)}
    zs[args.views] = run_stream(zero_shot, text, args, args.views, device)
    rows.append({"name": "zero-shot logits, 1 view", "seconds_per_image": zs[1]})
    rows.append({"name": f"zero-shot logits, {args.views} views", "seconds_per_image": zs[args.views]})
    for label, method, views in (("tda", tda, 1), ("tda", tda, args.views), ("boostadapter", boost, args.views)):
        method.reset_adaptation()
        seconds = run_stream(method.adapt_features, text, args, views, device)
        state = method.adaptation_state()
        pos_n, neg_n = int(state["positive.classes"].numel()), int(state["negative.classes"].numel())
        overhead = seconds - zs[views]
        rows.append({"name": f"{label}, {views} view{'s' if views > 1 else ''}", "seconds_per_image": seconds,
                     "overhead_seconds_per_image": overhead, "overhead_fraction_of_tower": overhead / tower_s,
                     "cache_positive": pos_n, "cache_negative": neg_n,
                     "classes_in_positive_cache": int(state["positive.classes"].unique().numel()),
                     "views_cost_seconds_per_image": (views - 1) * tower_s})
    for r in rows:
        extra = ""
        if "overhead_seconds_per_image" in r:
            extra = (f"  overhead {r['overhead_seconds_per_image'] * 1e3:7.3f} ms = "
                     f"{100 * r['overhead_fraction_of_tower']:.3f}% of the tower; cache {r['cache_positive']} + "
                     f"{r['cache_negative']} ({r['classes_in_positive_cache']} classes); views cost "
                     f"{r['views_cost_seconds_per_image'] * 1e3:.1f} ms")
        print(f"{r['name']:<28} {r['seconds_per_image'] * 1e3:9.3f} ms / image{extra}")
    if args.json:
        append_rows(args.json, rows, model=args.model, device=str(device), classes=args.classes, images=args.images)


if __name__ == "__main__":
    main()
