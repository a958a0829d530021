"""Time per training step: the published code's path vs vlprompt's (ratios; absolute times on a GPU).

    python benchmarks/bench_training_step.py [--model ViT-B-16] [--classes 50 1000] [--device cpu]

Random weights (timing needs no pretrained weights), real architecture shapes. For each class count:

* CoOp, batch 32 — naive: image encoder every step + the full 77-token text pass over every class
  prompt (as the published code); ours: cached image features + exact shared-prefix text pass.
* CoCoOp, batch 4 (``--cocoop-batch``) — naive: image-by-image loop, one full text pass per image
  (the reference); ours: the batched B x n_cls pass with each image's prefix shared by its classes.

Prints seconds per step (forward + backward + SGD step) and the ratio naive / ours; on CUDA also the
peak memory. The two paths compute the same function (see tests/test_shared_prefix.py,
tests/test_cocoop.py), so the ratio is a pure speed-up.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vlprompt.backbones.openclip import load_backbone
from vlprompt.methods.registry import build_method


def _time(step: Callable[[], None], device: torch.device, repeats: int, warmup: bool = True) -> tuple[float, float]:
    if warmup:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - t0) / repeats, peak


def full_text_features(backbone, prompt_learner, ctx=None):
    """The published code's text pass: every prompt at the full context length (77 tokens)."""
    prompts = prompt_learner(ctx)
    pad = backbone.context_length - prompts.shape[1]
    prompts = F.pad(prompts, (0, 0, 0, pad))
    feats = backbone.encode_text_embeddings(prompts, prompt_learner.eot_index, truncate=False)
    return F.normalize(feats.float(), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--classes", type=int, nargs="+", default=[50, 1000])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cocoop-batch", type=int, default=4)
    ap.add_argument("--cocoop-max-classes", type=int, default=None,
                    help="skip CoCoOp above this many classes (default: 100 on CPU, no limit on CUDA)")
    args = ap.parse_args()
    device = torch.device(args.device)
    backbone = load_backbone(args.model, None, device=device)
    print(f"model {args.model} (random weights), device {device}, torch threads {torch.get_num_threads()}")
    for n_cls in args.classes:
        bench(backbone, n_cls, args, device)


def bench(backbone, n_cls: int, args: argparse.Namespace, device: torch.device) -> None:
    """Time both paths for CoOp and CoCoOp at ``n_cls`` classes."""
    size = backbone.image_size
    names = [f"class number {i}" for i in range(n_cls)]
    coop = build_method("coop", backbone, names, n_ctx=16).to(device)
    opt = torch.optim.SGD([coop.ctx], lr=0.002, momentum=0.9)
    images = torch.randn(32, 3, size, size, device=device)
    labels = torch.randint(0, n_cls, (32,), device=device)
    feats = backbone.encode_image(images)

    def naive_coop() -> None:
        f = backbone.encode_image(images)
        text = full_text_features(backbone, coop.prompt_learner)
        loss = F.cross_entropy(coop.logits(f, text), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def ours_coop() -> None:
        loss = coop.training_loss(feats, labels).total()
        opt.zero_grad()
        loss.backward()
        opt.step()

    reps = max(1, args.repeats if n_cls <= 100 else 1)
    # a naive CPU step at 1000 classes takes minutes: no warm-up there (one-off costs are negligible)
    t_naive, m_naive = _time(naive_coop, device, reps, warmup=n_cls <= 100 or device.type == "cuda")
    t_ours, m_ours = _time(ours_coop, device, reps)
    print(f"CoOp   {n_cls:5d} classes, batch 32: naive {t_naive:8.3f} s/step, ours {t_ours:8.3f} s/step, "
          f"speed-up {t_naive / t_ours:6.1f}x" + (f"  (peak {m_naive:.1f} / {m_ours:.1f} GiB)"
                                                if device.type == "cuda" else ""))

    limit = args.cocoop_max_classes or (100 if device.type == "cpu" else None)
    if limit is not None and n_cls > limit:
        print(f"CoCoOp {n_cls:5d} classes: skipped (--cocoop-max-classes {limit})")
        return
    b = args.cocoop_batch
    cocoop = build_method("cocoop", backbone, names).to(device)
    opt2 = torch.optim.SGD([p for _, p in cocoop.learned_parameters()], lr=0.002, momentum=0.9)
    imgs_b, labels_b = images[:b], labels[:b]
    feats_b = backbone.encode_image(imgs_b)

    def naive_cocoop() -> None:  # the reference: one image at a time, full 77-token pass per image
        f = F.normalize(backbone.encode_image(imgs_b).float(), dim=-1)
        ctx = cocoop.conditional_ctx(f)
        rows = [backbone.logit_scale * f[i] @ full_text_features(backbone, cocoop.prompt_learner, ctx[i]).t()
                for i in range(b)]
        loss = F.cross_entropy(torch.stack(rows), labels_b)
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    def ours_cocoop() -> None:
        loss = cocoop.training_loss(feats_b, labels_b).total()
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    t_naive, m_naive = _time(naive_cocoop, device, reps)
    t_ours, m_ours = _time(ours_cocoop, device, reps)
    print(f"CoCoOp {n_cls:5d} classes, {b} images: naive {t_naive:8.3f} s/step, ours {t_ours:8.3f} s/step, "
          f"speed-up {t_naive / t_ours:6.1f}x" + (f"  (peak {m_naive:.1f} / {m_ours:.1f} GiB)"
                                                if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
