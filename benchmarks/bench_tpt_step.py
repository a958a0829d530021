"""Time per test image of TPT: the authors' per-image step vs vlprompt's, side by side in one process.

    python benchmarks/bench_tpt_step.py [--model ViT-B-16-quickgelu] [--classes 200 1000] [--views 64]
        [--rounds 5] [--device cuda] [--json out.json]

One TPT step per test image (azshue/TPT ``tpt_classification.py`` l.237-294 with ``test_time_tuning`` l.54-84,
``tta_steps`` 1): V views (64: the original + 63) through the image tower, one forward + backward of the text
tower over all class prompts, an AdamW step on the context, then the prediction on the original image.

* **authors** (:class:`AuthorsTPTStep`, written here from their code): the published CLIP code
  (``benchmarks/published_step.py``: OpenAI's ``clip/model.py``, which azshue/TPT vendors too, sequence-first
  ``nn.MultiheadAttention``, every prompt at the full 77 tokens) on the *same* random open_clip weights (the
  tensors are shared). Prompt reset + ``optimizer.load_state_dict`` (l.270-275); per step ``model(inputs)``:
  the image tower on the V views under no_grad and the text tower on the n_cls full prompts
  (``clip/custom_clip.py`` ``inference`` l.310-320); confidence selection (l.41-44), ``avg_entropy``
  (l.46-51), backward, AdamW; then ``model(image)``: the original view through both towers again (l.294).
* **vlprompt**: ``reset_adaptation()`` + ``adapt_and_predict(views)`` of method ``tpt``: the V views encoded
  once, the exact shared-prefix text pass forward + backward, the prediction reusing the original's feature.

Both run fp32 (the authors use fp16 autocast + GradScaler on GPU; fp32 makes the comparison exact). First, one
step of each from the same context on the same views: the tuned contexts and the logits are compared (printed;
``--check`` fails the run unless they agree). The gradients agree to float rounding (relative ~1e-5), but
AdamW's first step is about ``lr * sign(g)``: with random weights a few context coordinates have gradients at the
rounding level and may move differently, so the check counts the coordinates off beyond ``--atol`` of the move
(at most ``--max-off`` of them) besides the top-1 prediction. Then the steps alternate: each round times one
authors' step and ``--ours-per-round`` vlprompt steps (their median); the ratio is the median over rounds.

Next to the ratio: its **multiply-add bound**, the ratio of the multiply-adds the two steps execute (counted
with ``torch.utils.flop_counter`` over one step each, backward included; the CPU attention kernels are
registered with torch's own SDPA formulas). The V image views are a floor both pay (vlprompt once, the authors
once per step + 1 for the prediction), so the bound is far below the text-only ratio; the image share of each
step is printed. On CUDA the peak memory of each step is printed too.

Class names: ImageNet's (``benchmarks/data/imagenet_classes.json``, from azshue/TPT ``data/imagnet_prompts.py``):
1000 classes (ImageNet, -V2, -Sketch), 200 = ImageNet-A's (``data/imagenet_variants.py`` ``imagenet_a_mask``);
other counts take the first n names. Weights are random (open_clip config, no download).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.flop_counter as flop_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_step as published  # noqa: E402
from timing import append_rows, load, machine_line, peak_gib, timed  # noqa: E402

from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402

CLASSES_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.json"


def class_names(n: int) -> list[str]:
    """ImageNet-A's 200 names for 200, else the first n of ImageNet's 1000 (real names of varying lengths)."""
    data = json.loads(CLASSES_FILE.read_text())
    names = data["imagenet_classes"]
    if n == len(data["imagenet_a_indices"]):
        return [names[i] for i in data["imagenet_a_indices"]]
    if n > len(names):
        raise SystemExit(f"--classes: at most {len(names)}")
    return names[:n]


class AuthorsTPTStep:
    """azshue/TPT's per-image step, fp32, on the published CLIP code (see the module docstring)."""

    def __init__(self, backbone: Any, clip: published.CLIP, classnames: list[str], *, ctx_init: str = "a photo of a",
                 lr: float = 5e-3, tta_steps: int = 1, selection_p: float = 0.1) -> None:
        device = backbone.device
        # clip/custom_clip.py PromptLearner l.62-145 = CoOp's (word-count n_ctx, SOS kept, ctx after it)
        self.prompts = published._Prompts(backbone, clip, classnames, 4, ctx_init).to(device)
        self.tokens = self.prompts.tokenized_prompts.to(device)
        self.ctx = self.prompts.ctx
        self.ctx_init_state = self.ctx.detach().clone()  # l.108
        self.text_encoder = published.TextEncoder(clip)  # custom_clip.py l.39-59
        self.image_encoder = clip.visual
        self.logit_scale = clip.logit_scale
        self.steps, self.p = tta_steps, selection_p
        self.optimizer = torch.optim.AdamW([self.ctx], lr)  # tpt_classification.py l.144-146
        self.optim_state = copy.deepcopy(self.optimizer.state_dict())

    def inference(self, image: torch.Tensor) -> torch.Tensor:
        """custom_clip.py ``inference`` l.310-320: logits ``[B, n_cls]``."""
        with torch.no_grad():
            image_features = self.image_encoder(image)
        n_cls = self.tokens.shape[0]
        prompts = torch.cat([self.prompts.token_prefix, self.ctx.unsqueeze(0).expand(n_cls, -1, -1),
                             self.prompts.token_suffix], dim=1)  # l.183-223, [n_cls, 77, D]
        text = self.text_encoder(prompts, self.tokens)
        text = text / text.norm(dim=-1, keepdim=True)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text.t()

    def __call__(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tpt_classification.py l.270-294: reset, tune, predict ``views[0]``; (tuned ctx, logits ``[n_cls]``)."""
        with torch.no_grad():
            self.ctx.copy_(self.ctx_init_state)  # model.reset(), l.274
        self.optimizer.load_state_dict(self.optim_state)  # l.275
        selected = None
        for _ in range(self.steps):  # test_time_tuning l.61-80
            output = self.inference(views)
            if selected is None:
                entropy = -(output.softmax(1) * output.log_softmax(1)).sum(1)  # l.41-44
                selected = torch.argsort(entropy, descending=False)[: int(entropy.shape[0] * self.p)]
            output = output[selected]
            logp = output - output.logsumexp(dim=-1, keepdim=True)  # avg_entropy, l.46-51
            avg = logp.logsumexp(dim=0) - np.log(logp.shape[0])
            avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
            loss = -(avg * torch.exp(avg)).sum(dim=-1)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            logits = self.inference(views[:1])[0]  # model(image), l.294
        return self.ctx.detach().clone(), logits


def _register_cpu_attention_flops() -> None:
    """Count the CPU SDPA kernels with torch's SDPA formulas (torch registers only the CUDA ones)."""
    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(fwd, get_raw=True)(flop_counter.sdpa_flop)
    if bwd is not None and bwd not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(bwd, get_raw=True)(flop_counter.sdpa_backward_flop)


def multiply_adds(fn: Callable[[], Any]) -> float:
    """Multiply-adds (FLOPs / 2) that one call of ``fn`` executes, backward included."""
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 2


def saved_for_backward_mib(fn: Callable[[], Any]) -> float:
    """MiB of the tensors autograd saves for the backward passes of one call of ``fn`` (each storage once): the
    activations a step holds, on any device (the text pass over all classes dominates it)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


AUTHORS_KEYS = ("authors_s", "authors_gmacs", "authors_saved_mib")


def extrapolate_authors(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    """Fill the authors' side of ``row`` (a class count where only vlprompt's step ran): each quantity a straight
    line in the number of classes through the two largest counts where the authors' step was measured. Exact in
    form for the authors' step, whose every class prompt is 77 tokens whatever the names (its cost is a constant,
    the views, plus the same cost per class); vlprompt's cost depends on the names' lengths, so it is measured."""
    (a, b) = sorted((r for r in rows if not r.get("authors_extrapolated")), key=lambda r: r["classes"])[-2:]
    n_cls = row["classes"]
    for key in AUTHORS_KEYS:
        slope = (b[key] - a[key]) / (b["classes"] - a["classes"])
        row[key] = b[key] + slope * (n_cls - b["classes"])
    row.update({"authors_extrapolated": [a["classes"], b["classes"]], "ratio": row["authors_s"] / row["vlprompt_s"],
                "macs_bound": row["authors_gmacs"] / row["vlprompt_gmacs"]})
    print(f"{row['step']}: authors {row['authors_s']:8.3f} s/image (extrapolated from {a['classes']} and "
          f"{b['classes']} classes), vlprompt {row['vlprompt_s']:7.3f} s/image (measured), ratio {row['ratio']:5.1f}x; "
          f"multiply-add bound {row['macs_bound']:.1f}x ({row['authors_gmacs']:.4g} vs {row['vlprompt_gmacs']:.4g} "
          f"GMAC); saved for backward {row['authors_saved_mib']:.0f} (extrapolated) vs {row['vlprompt_saved_mib']:.0f} "
          "MiB", flush=True)
    return row


def setup(backbone: Any, n_cls: int, args: argparse.Namespace, device: torch.device
          ) -> tuple[list[str], torch.Tensor, Any, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """The class names, the V random views (seed 0), vlprompt's ``tpt`` and its step (reset, adapt and predict;
    returns the tuned context and the logits)."""
    names = class_names(n_cls)
    gen = torch.Generator().manual_seed(0)
    size = backbone.image_size
    views = torch.randn(args.views, 3, size, size, generator=gen).to(device)
    ours = build_method("tpt", backbone, names, tta_steps=args.tta_steps).to(device).eval()

    def ours_step() -> tuple[torch.Tensor, torch.Tensor]:
        ours.reset_adaptation()
        logits = ours.adapt_and_predict(views).logits
        return ours.ctx.detach().clone(), logits

    return names, views, ours, ours_step


def bench_ours_only(backbone: Any, n_cls: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """vlprompt's step alone at ``n_cls`` classes (the authors' would not fit the machine): time, multiply-adds,
    memory saved for backward; the authors' side is extrapolated by :func:`extrapolate_authors`."""
    _, views, _, ours_step = setup(backbone, n_cls, args, device)

    load_before = load()
    timed(ours_step, device)  # warm-up
    t_ours = [timed(ours_step, device) for _ in range(max(1, args.rounds * args.ours_per_round))]
    _register_cpu_attention_flops()
    with torch.no_grad():
        image_ma = multiply_adds(lambda: backbone.encode_image(views))
    ours_ma = multiply_adds(ours_step)
    row: dict[str, Any] = {
        "step": f"TPT {args.model}, {n_cls} classes, {args.views} views", "classes": n_cls, "views": args.views,
        "tta_steps": args.tta_steps, "vlprompt_s": statistics.median(t_ours), "vlprompt_gmacs": ours_ma / 1e9,
        "image_share_vlprompt": image_ma / ours_ma, "vlprompt_saved_mib": saved_for_backward_mib(ours_step),
        "rounds": len(t_ours), "load_before": load_before, "load_after": load()}
    if device.type == "cuda":
        row["vlprompt_peak_gib"] = peak_gib(ours_step, device)
    return row


def bench(backbone: Any, clip: published.CLIP, n_cls: int, args: argparse.Namespace,
          device: torch.device) -> dict[str, Any]:
    names, views, ours, ours_step = setup(backbone, n_cls, args, device)
    ref = AuthorsTPTStep(backbone, clip, names, tta_steps=args.tta_steps)
    init_diff = float((ref.ctx_init_state - ours.initial_ctx).abs().max())

    load_before = load()
    first: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    t_first_ref = timed(lambda: first.__setitem__("ref", ref(views)), device)
    timed(lambda: first.__setitem__("ours", ours_step()), device)
    diff = (first["ref"][0] - first["ours"][0]).abs()
    ctx_diff = float(diff.max())
    logit_diff = float((first["ref"][1] - first["ours"][1]).abs().max())
    moved = float((first["ref"][0] - ref.ctx_init_state).abs().max())
    off = int((diff > args.atol * moved).sum())  # coordinates whose tuned value differs beyond rounding
    same_top1 = int(first["ref"][1].argmax()) == int(first["ours"][1].argmax())
    t_ref: list[float] = [] if args.rounds else [t_first_ref]
    t_ours: list[float] = [] if args.rounds else [timed(ours_step, device)]
    for _ in range(args.rounds):
        t_ref.append(timed(lambda: ref(views), device))
        t_ours.append(statistics.median(timed(ours_step, device) for _ in range(args.ours_per_round)))
    ratios = [r / o for r, o in zip(t_ref, t_ours)]
    _register_cpu_attention_flops()
    with torch.no_grad():
        image_ma = multiply_adds(lambda: backbone.encode_image(views))  # the V views once
    ref_ma, ours_ma = multiply_adds(lambda: ref(views)), multiply_adds(ours_step)
    ref_image_ma = image_ma * (args.tta_steps + 1 / args.views)  # V per step + the original again
    ref_saved, ours_saved = saved_for_backward_mib(lambda: ref(views)), saved_for_backward_mib(ours_step)
    row: dict[str, Any] = {
        "step": f"TPT {args.model}, {n_cls} classes, {args.views} views", "classes": n_cls, "views": args.views,
        "tta_steps": args.tta_steps, "authors_s": statistics.median(t_ref), "vlprompt_s": statistics.median(t_ours),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "rounds": args.rounds, "first_step_only": not args.rounds,
        "authors_gmacs": ref_ma / 1e9, "vlprompt_gmacs": ours_ma / 1e9, "macs_bound": ref_ma / ours_ma,
        "image_share_authors": ref_image_ma / ref_ma, "image_share_vlprompt": image_ma / ours_ma,
        "authors_saved_mib": ref_saved, "vlprompt_saved_mib": ours_saved,
        "init_ctx_diff": init_diff, "ctx_moved": moved, "ctx_diff": ctx_diff, "ctx_coordinates_off": off,
        "ctx_coordinates": diff.numel(), "logit_diff": logit_diff,
        "same_top1": same_top1, "load_before": load_before, "load_after": load(),
    }
    if device.type == "cuda":
        row["authors_peak_gib"] = peak_gib(lambda: ref(views), device)
        row["vlprompt_peak_gib"] = peak_gib(ours_step, device)
    mem = (f"; peak {row['authors_peak_gib']:.2f} vs {row['vlprompt_peak_gib']:.2f} GiB"
           if device.type == "cuda" else "")
    print(f"{row['step']}: authors {row['authors_s']:8.3f} s/image, vlprompt {row['vlprompt_s']:7.3f} s/image, "
          f"ratio {row['ratio']:5.1f}x (rounds {min(ratios):.1f}-{max(ratios):.1f}); multiply-add bound "
          f"{row['macs_bound']:.1f}x ({row['authors_gmacs']:.3g} vs {row['vlprompt_gmacs']:.3g} GMAC; image views "
          f"{100 * row['image_share_authors']:.0f}% / {100 * row['image_share_vlprompt']:.0f}%){mem}; saved for "
          f"backward {ref_saved:.0f} vs {ours_saved:.0f} MiB; "
          f"|ctx diff| {ctx_diff:.1e} (moved {moved:.1e}; {off}/{diff.numel()} coordinates off by > {args.atol:g} of "
          f"the move), |logit diff| {logit_diff:.1e}; load {load_before} -> "
          f"{row['load_after']}", flush=True)
    if args.check and (init_diff > 0 or off > args.max_off * diff.numel() or not same_top1):
        raise SystemExit(f"not the same step: initial ctx diff {init_diff:.1e}, {off} tuned ctx coordinates off "
                         f"(max diff {ctx_diff:.1e}, moved {moved:.1e}), logits diff {logit_diff:.1e}, "
                         f"same top-1 {same_top1}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-quickgelu",
                    help="an open_clip OpenAI-format model (random init): ViT-B-16-quickgelu (TPT's ViT-B/16), "
                         "RN50-quickgelu, or vlprompt-test-vit for a quick check")
    ap.add_argument("--classes", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--views", type=int, default=64, help="views per image, the original included (TPT: 64)")
    ap.add_argument("--tta-steps", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds (median over them); 0: time only the first (checked) step of each")
    ap.add_argument("--ours-per-round", type=int, default=3, help="vlprompt steps per round (their median)")
    ap.add_argument("--check", action="store_true",
                    help="fail unless the initial contexts are equal, the tuned ones agree (at most --max-off of the "
                         "coordinates beyond --atol of the move) and the top-1 agrees")
    ap.add_argument("--atol", type=float, default=1e-3, help="a coordinate is off beyond this fraction of the move")
    ap.add_argument("--max-off", type=float, default=1e-3,
                    help="fraction of context coordinates allowed off: AdamW's first step is about lr * sign(g), so "
                         "a coordinate whose gradient is at float-rounding level (random weights) may move otherwise")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="append the result rows to this JSON file")
    ap.add_argument("--authors-max", type=int, default=None,
                    help="largest class count at which the authors' step runs (at 1000 classes it holds ~25 GiB of "
                         "activations for backward): above it vlprompt's step is measured and the authors' "
                         "extrapolated linearly from the two largest measured counts (labelled)")
    args = ap.parse_args()
    if int(args.views * 0.1) < 1:
        raise SystemExit("--views: at least 10 (the authors keep int(views * 0.1) views)")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model, None, device=device)
    clip = published.from_backbone(backbone)
    print(f"model {args.model} (random weights, shared by both paths), device {device}, fp32, {machine_line()}",
          flush=True)
    big = [n for n in args.classes if args.authors_max is not None and n > args.authors_max]
    if big and len(args.classes) - len(big) < 2:
        raise SystemExit("--authors-max: the authors' step must be measured at two class counts at least")
    rows = [bench(backbone, clip, n, args, device) for n in args.classes if n not in big]
    rows += [extrapolate_authors(rows, bench_ours_only(backbone, n, args, device)) for n in big]
    if args.json is not None:
        append_rows(args.json, rows, model=args.model, device=str(device))


if __name__ == "__main__":
    main()
