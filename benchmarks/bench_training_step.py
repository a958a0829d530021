"""Time per training step: the published CoOp / CoCoOp step vs vlprompt's, side by side in one process.

    python benchmarks/bench_training_step.py [--model ViT-B-16-quickgelu] [--classes 50 1000]
        [--methods coop cocoop] [--names imagenet dtd numbered] [--recipe cached augmented] [--rounds 5]
        [--json out.json] [--device cpu]

The reference is ``benchmarks/published_step.py``: the model code of KaiyangZhou/CoOp re-implemented
(CLIP's ``clip/model.py``, ``CustomCLIP`` / ``PromptLearner`` / ``TextEncoder`` of trainers/coop.py and
trainers/cocoop.py, fp32), running on the *same* random open_clip weights (the tensors are shared).
Per method and class count:

* CoOp, batch 32 (``--batch``): published = image tower on the batch + the 77-token text pass over
  every class prompt, every step; vlprompt = its default training step on cached image features
  (frozen encoder) with the exact shared-prefix text pass.
* CoCoOp, 4 images (``--cocoop-batch``): published = image tower + one 77-token text pass over all
  classes per image, image by image; vlprompt = the batched pass, each image's prefix shared by its
  classes.

A step is forward + loss + backward + SGD update; data loading is excluded from both. Before timing,
one step of each is run on the same batch from the same parameters and the two losses are printed
(they must agree: same function). Then the steps alternate: each round times one published step and
``--ours-per-round`` vlprompt steps (their median), so a change of machine load hits both; the printed
ratio is the median over rounds of (published step / vlprompt step). ``os.getloadavg()`` is printed
before and after each measurement: on a shared machine absolute times drift, the alternating ratio
much less. ``--image-tower`` also times vlprompt with the image tower run every step (what on-the-fly
augmentation costs it). On CUDA the peak memory of each path is printed too.

Class names (``--names``, default ``imagenet dtd``): the first ``--classes`` ImageNet class names (open_clip's
``IMAGENET_CLASSNAMES``), DTD's 47 names (one row, whatever ``--classes``), and ``numbered``: "class number {i}",
the uniform names of the earlier tables (every name 3 word tokens), only as a labelled extra row. Real names differ
in token length; the published step costs the same for any names (77 tokens per prompt), vlprompt's depends on
them. Every row prints its multiply-add bound (``step_macs.py``: published / vlprompt multiply-adds of the step,
from the real token counts), and the bound of the pass that pads each suffix to the longest name.

``--recipe augmented`` (CoOp) measures what users of the papers' recipe run: every step augments the batch on the
fly (Dassl's random resized crop, scale 0.08-1, bicubic, + horizontal flip + normalise, per image with its own
random parameters: ``backbone.train_transform()``, the transform vlprompt's engine uses with ``data.augment``) from
``--raw-size`` RGB images, so the image tower runs every step on both sides. Both steps include the augmentation
(the same transform, same cost; a data loader's workers would overlap it on both sides). vlprompt's step is its
engine's (``engine/loop.py`` ``train_one_epoch`` with ``image_encoding == "every_step"``): the frozen image tower
forward (``method.encode_images``: no parameter requires a gradient, so no autograd graph is recorded, and
``nn.MultiheadAttention`` takes its fused inference kernel), then the text pass, loss, backward and SGD step.
The row reports the image tower's share of each step (timed by hooks inside the steps) and the bound.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_step as published  # noqa: E402
import step_macs  # noqa: E402
from timing import NAME_SETS, append_rows, class_names, load, machine_line, peak_gib, timed  # noqa: E402

from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402


def _ours_step(method: Any, optim: torch.optim.Optimizer, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = method.training_loss(feats, labels).total()
    optim.zero_grad()
    loss.backward()
    optim.step()
    return loss.detach()


def compare(name: str, ref_step: Callable[[], torch.Tensor], ours_step: Callable[[], torch.Tensor],
            args: argparse.Namespace, device: torch.device, extra: dict[str, Callable[[], Any]] | None = None,
            ) -> dict[str, Any]:
    """Check both steps give the same loss, then time them alternately; returns the result row."""
    load_before = load()
    first: dict[str, torch.Tensor] = {}
    # first steps: same parameters, same batch -> same loss; timed too
    # (--rounds 0: the published first step is the measurement)
    t_first = [timed(lambda: first.__setitem__("ref", ref_step()), device),
               timed(lambda: first.__setitem__("ours", ours_step()), device)]
    l_ref, l_ours = first["ref"], first["ours"]
    diff = abs(float(l_ref) - float(l_ours))
    rounds = args.rounds
    t_ref: list[float] = [] if rounds else [t_first[0]]
    t_ours: list[float] = [] if rounds else [timed(ours_step, device)]  # cheap: a second, warm step
    t_extra: dict[str, list[float]] = {k: [] for k in extra or {}}
    for _ in range(rounds):
        t_ref.append(timed(ref_step, device))
        t_ours.append(statistics.median(timed(ours_step, device) for _ in range(args.ours_per_round)))
        for k, fn in (extra or {}).items():
            t_extra[k].append(timed(fn, device))
    ratios = [r / o for r, o in zip(t_ref, t_ours)]
    row: dict[str, Any] = {
        "step": name, "published_s": statistics.median(t_ref), "vlprompt_s": statistics.median(t_ours),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "rounds": rounds, "first_step_only": not rounds,
        "loss_published": float(l_ref), "loss_vlprompt": float(l_ours), "loss_diff": diff,
        "load_before": load_before, "load_after": load(),
    }
    for k, ts in t_extra.items():
        row[f"{k}_s"] = statistics.median(ts)
        row[f"{k}_ratio"] = statistics.median(r / t for r, t in zip(t_ref, ts))
    if device.type == "cuda":
        row["published_peak_gib"] = peak_gib(ref_step, device)
        row["vlprompt_peak_gib"] = peak_gib(ours_step, device)
    extra_txt = "".join(f", {k} {row[f'{k}_s']:.3f} s ({row[f'{k}_ratio']:.1f}x)" for k in t_extra)
    print(f"{name}: published {row['published_s']:8.3f} s/step, vlprompt {row['vlprompt_s']:7.3f} s/step, "
          f"ratio {row['ratio']:5.1f}x (rounds {min(ratios):.1f}-{max(ratios):.1f}){extra_txt}; "
          f"|loss diff| {diff:.1e}; load {load_before} -> {row['load_after']}", flush=True)
    return row


def _with_macs(row: dict[str, Any], macs: step_macs.StepMacs, names_kind: str) -> dict[str, Any]:
    """The result row with its names and multiply-add bound (printed)."""
    print(f"    {macs.text()}; measured / bound {row['ratio'] / macs.bound:.0%}", flush=True)
    return dict(row, names=names_kind, **macs.row())


def _cached_row(title: str, n_cls: int, ref: Any, ref_step: Callable[[], torch.Tensor],
                ours_step: Callable[[], torch.Tensor], args: argparse.Namespace, device: torch.device,
                measured: list[dict[str, Any]] | None,
                extra: dict[str, Callable[[], Any]] | None = None) -> dict[str, Any]:
    """:func:`compare` of a cached-recipe step, with the published image tower's share of its step (timed by hooks);
    past ``--published-max`` classes vlprompt's step alone, the published one extrapolated (:func:`_extrapolated`)."""
    clock = _Clock(ref.image_encoder, device)
    spent: list[tuple[float, float]] = []

    def clocked() -> torch.Tensor:
        t0 = time.perf_counter()
        loss = ref_step()
        spent.append((clock.take(), time.perf_counter() - t0))
        return loss

    if args.published_max is not None and n_cls > args.published_max:
        return _extrapolated(title, ours_step, measured or [], n_cls, args, device)
    row = compare(title, clocked, ours_step, args, device, extra)
    row["tower_share_published_measured"] = statistics.median(t / s for t, s in spent)
    return row


def bench_coop(backbone: Any, clip: published.CLIP, names: list[str], names_kind: str, args: argparse.Namespace,
               device: torch.device, measured: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    n_cls = len(names)
    gen = torch.Generator().manual_seed(0)
    size = backbone.image_size
    images = torch.randn(args.batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, n_cls, (args.batch,), generator=gen).to(device)

    ref = published.CoOpCustomCLIP(backbone, clip, names, n_ctx=16).to(device)
    ours = build_method("coop", backbone, names, n_ctx=16).to(device)
    with torch.no_grad():
        ref.prompt_learner.ctx.copy_(ours.ctx)
    ref.prompt_learner.train()  # Dassl puts only the registered prompt learner in train mode
    ours.train()
    opt_ref = published.sgd(ref.prompt_learner.parameters())
    opt_ours = published.sgd([ours.ctx])
    feats = backbone.encode_image(images)  # vlprompt's default: frozen encoder, features cached once

    def ref_step() -> torch.Tensor:
        return published.coop_step(ref, opt_ref, images, labels)

    def ours_step() -> torch.Tensor:
        return _ours_step(ours, opt_ours, feats, labels)

    extra = None
    if args.image_tower:
        extra = {"vlprompt_with_image_tower": lambda: _ours_step(ours, opt_ours, backbone.encode_image(images),
                                                                 labels)}
    row = _cached_row(f"CoOp   {args.model}, {n_cls} {names_kind} names, batch {args.batch}", n_cls, ref,
                      ref_step, ours_step, args, device, measured, extra)
    row.update(recipe="cached", method="coop", classes=n_cls)
    macs = step_macs.step_macs(backbone, names, prefix_words=" ".join(["X"] * 16), groups=1, images=args.batch,
                               image_every_step=False)
    return _with_macs(row, macs, names_kind)


def bench_cocoop(backbone: Any, clip: published.CLIP, names: list[str], names_kind: str, args: argparse.Namespace,
                 device: torch.device, measured: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    n_cls = len(names)
    gen = torch.Generator().manual_seed(1)
    size = backbone.image_size
    b = args.cocoop_batch
    images = torch.randn(b, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, n_cls, (b,), generator=gen).to(device)

    ref = published.CoCoOpCustomCLIP(backbone, clip, names).to(device)
    ours = build_method("cocoop", backbone, names).to(device)
    with torch.no_grad():
        ref.prompt_learner.ctx.copy_(ours.ctx)
    ref.prompt_learner.meta_net.load_state_dict(ours.meta_net.state_dict())
    ref.prompt_learner.train()
    ours.train()
    opt_ref = published.sgd(ref.prompt_learner.parameters())
    opt_ours = published.sgd([p for _, p in ours.learned_parameters()])
    feats = backbone.encode_image(images)

    def ref_step() -> torch.Tensor:
        return published.cocoop_step(ref, opt_ref, images, labels)

    def ours_step() -> torch.Tensor:
        return _ours_step(ours, opt_ours, feats, labels)

    row = _cached_row(f"CoCoOp {args.model}, {n_cls} {names_kind} names, {b} images", n_cls, ref, ref_step,
                      ours_step, args, device, measured)
    row.update(recipe="cached", method="cocoop", classes=n_cls)
    macs = step_macs.step_macs(backbone, names, prefix_words="a photo of a", groups=b, images=b,
                               image_every_step=False)
    return _with_macs(row, macs, names_kind)


class _Clock:
    """Seconds spent inside ``module``'s forward calls (pre / post hooks), accumulated until :meth:`take`."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.device, self.spent, self._t0 = device, 0.0, 0.0
        module.register_forward_pre_hook(lambda *_: self._start())
        module.register_forward_hook(lambda *_: self._stop())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _start(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _stop(self) -> None:
        self._sync()
        self.spent += time.perf_counter() - self._t0

    def take(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent


def raw_images(n: int, size: tuple[int, int], seed: int = 0) -> list[Any]:
    """``n`` random RGB PIL images of ``size`` (width, height): the decoded inputs of the augmentation."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    w, h = size
    pixels = torch.randint(0, 256, (n, h, w, 3), generator=gen, dtype=torch.uint8).numpy()
    return [Image.fromarray(p) for p in pixels]


def _extrapolated(title: str, ours_step: Callable[[], torch.Tensor], measured: list[dict[str, Any]], n_cls: int,
                  args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """vlprompt's step measured (``max(rounds, 1) * ours-per-round`` steps, median), the published one
    **extrapolated** (more classes than ``--published-max``: its 77-token activations of every class outgrow the
    memory): its image tower (the mean of the measured rows) plus its text part (step - tower), linear in the class
    count through the measured rows (at least two, fitted by least squares; the published text pass costs the same
    for every class, 77 tokens)."""
    t_ours = [timed(ours_step, device) for _ in range(max(args.rounds, 1) * args.ours_per_round)]
    row: dict[str, Any] = {"step": title, "vlprompt_s": statistics.median(t_ours), "rounds": 0,
                           "published_extrapolated": True, "load_after": load()}
    points = [(r["classes"], r["published_s"], r["published_s"] * r["tower_share_published_measured"])
              for r in measured if not r.get("published_extrapolated")]
    if len({n for n, _, _ in points}) < 2:
        print(f"{title}: vlprompt {row['vlprompt_s']:7.3f} s/step; published not measured (over --published-max; "
              "measure two smaller class counts in the same run to extrapolate it)", flush=True)
        row["ratio"] = float("nan")
        return row
    tower = statistics.fmean(t for _, _, t in points)
    xs, ys = [float(n) for n, _, _ in points], [s - t for _, s, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    published_s = tower + my + slope * (n_cls - mx)
    row.update(published_s=published_s, ratio=published_s / row["vlprompt_s"],
               published_tower_share=tower / published_s)
    print(f"{title}: published {published_s:8.3f} s/step (EXTRAPOLATED from {sorted({int(x) for x in xs})} classes: "
          f"tower {tower:.2f} s + text {slope:.3f} s/class), vlprompt {row['vlprompt_s']:7.3f} s/step (measured), "
          f"ratio {row['ratio']:5.1f}x; load -> {row['load_after']}", flush=True)
    return row


def bench_coop_augmented(backbone: Any, clip: published.CLIP, names: list[str], names_kind: str,
                         args: argparse.Namespace, device: torch.device,
                         measured: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """CoOp with on-the-fly augmentation on both sides (module doc, ``--recipe augmented``); past
    ``--published-max`` classes the published step is extrapolated from the ``measured`` rows (:func:`_extrapolated`).
    """
    n_cls = len(names)
    raw = raw_images(args.batch, tuple(args.raw_size))
    augment = backbone.train_transform()  # Dassl's recipe (random resized crop 0.08-1, flip, normalise)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, n_cls, (args.batch,), generator=gen).to(device)

    ref = published.CoOpCustomCLIP(backbone, clip, names, n_ctx=16).to(device)
    ours = build_method("coop", backbone, names, n_ctx=16).to(device)
    with torch.no_grad():
        ref.prompt_learner.ctx.copy_(ours.ctx)
    ref.prompt_learner.train()
    ours.train()
    opt_ref = published.sgd(ref.prompt_learner.parameters())
    opt_ours = published.sgd([ours.ctx])
    ref_tower = _Clock(ref.image_encoder, device)
    ours_tower = _Clock(backbone.model.visual, device)
    parts: dict[str, list[float]] = {"published_step": [], "published_tower": [], "vlprompt_step": [],
                                     "vlprompt_tower": [], "augment": []}
    first = [True, True]  # the loss-check steps draw the same crops on both sides

    def batch(i: int) -> torch.Tensor:
        if first[i]:
            torch.manual_seed(1234)
            first[i] = False
        t0 = time.perf_counter()
        images = torch.stack([augment(im) for im in raw]).to(device)
        parts["augment"].append(time.perf_counter() - t0)
        return images

    def ref_step() -> torch.Tensor:
        t0 = time.perf_counter()
        loss = published.coop_step(ref, opt_ref, batch(0), labels)
        parts["published_step"].append(time.perf_counter() - t0)
        parts["published_tower"].append(ref_tower.take())
        return loss

    def ours_step() -> torch.Tensor:
        t0 = time.perf_counter()
        images = batch(1)
        feats = ours.encode_images(images)  # engine/loop.py train_one_epoch: frozen tower, no graph recorded
        loss = _ours_step(ours, opt_ours, feats, labels)
        parts["vlprompt_step"].append(time.perf_counter() - t0)
        parts["vlprompt_tower"].append(ours_tower.take())
        return loss

    title = f"CoOp   {args.model}, {n_cls} {names_kind} names, batch {args.batch}, augmented every step"
    if args.published_max is not None and n_cls > args.published_max:
        row = _extrapolated(title, ours_step, measured or [], n_cls, args, device)
        parts["published_step"], parts["published_tower"] = [1.0], [row.get("published_tower_share", float("nan"))]
    else:
        row = compare(title, ref_step, ours_step, args, device)
    share = {k: statistics.median(t / s for t, s in zip(parts[f"{k}_tower"], parts[f"{k}_step"]))
             for k in ("published", "vlprompt")}
    aug_share = statistics.median(parts["augment"]) / row["vlprompt_s"]
    print(f"    image tower: {share['published']:.0%} of the published step, {share['vlprompt']:.0%} of vlprompt's; "
          f"augmentation {statistics.median(parts['augment']):.3f} s ({aug_share:.1%} of vlprompt's step)", flush=True)
    row.update(recipe="augmented", classes=n_cls, tower_share_published_measured=share["published"],
               tower_share_vlprompt_measured=share["vlprompt"], augment_s=statistics.median(parts["augment"]),
               raw_size=list(args.raw_size))
    macs = step_macs.step_macs(backbone, names, prefix_words=" ".join(["X"] * 16), groups=1, images=args.batch,
                               image_every_step=True)
    return _with_macs(row, macs, names_kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-quickgelu",
                    help="an open_clip OpenAI-format model (random init): ViT-B-16-quickgelu, RN50-quickgelu, ...")
    ap.add_argument("--classes", type=int, nargs="+", default=[50])
    ap.add_argument("--names", nargs="+", default=["imagenet", "dtd"], choices=NAME_SETS,
                    help="class-name sets: the first --classes ImageNet names, DTD's 47 names (one row), "
                         "'class number {i}' (the uniform names of the earlier tables)")
    ap.add_argument("--recipe", nargs="+", default=["cached"], choices=["cached", "augmented"],
                    help="cached: vlprompt's default step on cached features; augmented: CoOp with on-the-fly "
                         "augmentation every step on both sides (the papers' recipe)")
    ap.add_argument("--published-max", type=int, default=None,
                    help="above this many classes run only vlprompt's step and extrapolate the published one (its "
                         "image tower + a text part linear in the classes) from the smaller counts measured in the "
                         "same run (both recipes; the published 77-token pass of 1000 classes needs ~30 GB)")
    ap.add_argument("--raw-size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"),
                    help="size of the raw images the augmented recipe crops (ImageNet's typical 500 x 375)")
    ap.add_argument("--methods", nargs="+", default=["coop", "cocoop"], choices=["coop", "cocoop"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds (median over them); 0: time only the first (loss-check) step of each "
                         "(for 1000 classes, where one published step takes minutes)")
    ap.add_argument("--ours-per-round", type=int, default=3, help="vlprompt steps per round (their median)")
    ap.add_argument("--batch", type=int, default=32, help="CoOp batch size (CoOp's configs: 32)")
    ap.add_argument("--cocoop-batch", type=int, default=4, help="CoCoOp images per step")
    ap.add_argument("--image-tower", action="store_true", help="also time vlprompt with the image tower every step")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice, one per core); 1 is steadier on a loaded machine")
    ap.add_argument("--json", type=Path, default=None, help="append the result rows to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model, None, device=device)
    clip = published.from_backbone(backbone)
    print(f"model {args.model} (random weights, shared by both paths), device {device}, {machine_line()}", flush=True)
    rows = []
    for kind in args.names:
        for n_cls in ([47] if kind == "dtd" else args.classes):
            names = class_names(kind, n_cls)

            def same(method: str, recipe: str, kind: str = kind) -> list[dict[str, Any]]:
                return [r for r in rows if (r.get("method"), r.get("recipe"), r.get("names")) == (method, recipe, kind)]

            if "coop" in args.methods and "cached" in args.recipe:
                rows.append(bench_coop(backbone, clip, names, kind, args, device, same("coop", "cached")))
            if "coop" in args.methods and "augmented" in args.recipe:
                rows.append(bench_coop_augmented(backbone, clip, names, kind, args, device,
                                                 [r for r in rows if r.get("recipe") == "augmented"
                                                  and r.get("names") == kind]))
            if "cocoop" in args.methods and "cached" in args.recipe:
                rows.append(bench_cocoop(backbone, clip, names, kind, args, device, same("cocoop", "cached")))
    if args.json is not None:
        append_rows(args.json, rows, model=args.model, device=str(device))


if __name__ == "__main__":
    main()
