"""Time per training step of the deep-prompt methods (MaPLe, PromptSRC, IVLP): vlprompt vs the plain forward.

    python benchmarks/bench_deep_prompts.py [--model ViT-B-16-quickgelu] [--classes 50]
        [--methods maple promptsrc] [--batch 4] [--rounds 5] [--json out.json] [--device cpu] [--check 1e-4]

The plain forward is what the authors' code runs (muzairkhattak/multimodal-prompt-learning
trainers/maple.py and muzairkhattak/PromptSRC trainers/promptsrc.py ``TextEncoder.forward``): every class
prompt padded to the full context (77 tokens on ViT-B/16) goes through the text tower with the deep
prompts replaced at each layer, and the prompted image tower runs on the batch, every step. vlprompt's
step is the method's own ``training_loss``: the same image tower every step (prompted image features
cannot be cached), but the text side through the exact shared-prefix pass (SOS + prompt tokens run once
for all classes at every layer, each class's suffix cut after its EOT).

Both paths are the *same method object* on the same random weights: the plain path swaps the method's
text encoder (``encode_text_deep_shared`` as seen by ``methods/ivlp/prompt.py``) for a full-length call
of :func:`vlprompt.backbones.deep_prompts.encode_text_deep` on prompts padded with the pad token to the
context length. Before timing, one step of each runs from the same parameters on the same batch and the
two losses are printed (they must agree; ``--check TOL`` exits non-zero unless they do within TOL). Steps then
alternate (one plain, ``--ours-per-round`` vlprompt, per round; median of the per-round ratios);
``os.getloadavg()`` is printed with each row.
A step is forward + loss + backward + SGD update (authors' optimiser: SGD); data loading is excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import vlprompt.methods.ivlp.prompt as prompt_module
from vlprompt.backbones.deep_prompts import encode_text_deep
from vlprompt.backbones.openclip import load_backbone
from vlprompt.methods.registry import build_method

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import NAME_SETS, append_rows, class_names, load, machine_line, peak_gib, timed  # noqa: E402


def plain_text_pass(backbone: Any, ctx: Tensor, sos: Tensor, suffix: Tensor, eot_in_suffix: Tensor,
                    deep: list[Tensor]) -> Tensor:
    """The authors' text pass: ``[SOS, ctx, suffix, pad ...]`` at the full context length for every class.

    Same arguments as :func:`vlprompt.backbones.deep_prompts.encode_text_deep_shared`; returns ``[C, E]``.
    """
    n, (c, s, d) = ctx.shape[0], suffix.shape
    length = backbone.context_length
    pad_id = backbone.text_facts.pad_id or 0
    pad = backbone.token_embedding(torch.tensor([pad_id], device=ctx.device)).to(ctx.dtype)
    full = torch.cat([sos.to(ctx.dtype).expand(c, 1, d), ctx.expand(c, n, d), suffix.to(ctx.dtype),
                      pad.expand(c, length - 1 - n - s, d)], dim=1)  # [C, 77, D]
    return encode_text_deep(backbone, full, eot_in_suffix + 1 + n, deep, n_ctx=n, truncate=False)


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Make the deep-prompt methods encode their class prompts the plain way while inside."""
    fast = prompt_module.encode_text_deep_shared
    prompt_module.encode_text_deep_shared = plain_text_pass
    try:
        yield
    finally:
        prompt_module.encode_text_deep_shared = fast


def bench(name: str, backbone: Any, n_cls: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    names = class_names(args.names, n_cls)
    n_cls = len(names)
    gen = torch.Generator().manual_seed(0)
    size = backbone.image_size
    images = torch.randn(args.batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, n_cls, (args.batch,), generator=gen).to(device)
    method = build_method(name, backbone, names).to(device).train()
    params = [p for _, p in method.learned_parameters()]
    start = [p.detach().clone() for p in params]
    optim = torch.optim.SGD(params, lr=args.lr, momentum=0.9)

    def step() -> Tensor:
        loss = method.training_loss(method.encode_images(images), labels).total()
        optim.zero_grad()
        loss.backward()
        optim.step()
        return loss.detach()

    def plain_step() -> Tensor:
        with plain_text():
            return step()

    load_before = load()
    l_plain = plain_step()
    with torch.no_grad():  # back to the same parameters (and a fresh optimiser) for the second path
        for p, p0 in zip(params, start):
            p.copy_(p0)
    optim.state.clear()
    l_ours = step()
    diff = abs(float(l_plain) - float(l_ours))
    t_plain: list[float] = []
    t_ours: list[float] = []
    for _ in range(args.rounds):
        t_plain.append(timed(plain_step, device))
        t_ours.append(statistics.median(timed(step, device) for _ in range(args.ours_per_round)))
    ratios = [p / o for p, o in zip(t_plain, t_ours)]
    row: dict[str, Any] = {
        "step": f"{name} {args.model}, {n_cls} {args.names} classes, batch {args.batch}", "method": name,
        "classes": n_cls, "names": args.names,
        "plain_s": statistics.median(t_plain), "vlprompt_s": statistics.median(t_ours),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "rounds": args.rounds, "loss_plain": float(l_plain), "loss_vlprompt": float(l_ours), "loss_diff": diff,
        "load_before": load_before, "load_after": load(),
    }
    if device.type == "cuda":
        row["plain_peak_gib"] = peak_gib(plain_step, device)
        row["vlprompt_peak_gib"] = peak_gib(step, device)
    print(f"{row['step']}: plain {row['plain_s']:7.3f} s/step, vlprompt {row['vlprompt_s']:7.3f} s/step, "
          f"ratio {row['ratio']:4.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}); |loss diff| {diff:.1e}; "
          f"load {load_before} -> {row['load_after']}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-quickgelu", help="an open_clip ViT model (random init)")
    ap.add_argument("--classes", type=int, nargs="+", default=[50])
    ap.add_argument("--names", default="imagenet", choices=NAME_SETS,
                    help="class names: the first --classes ImageNet names, DTD's 47, or 'class number {i}'")
    ap.add_argument("--methods", nargs="+", default=["maple", "promptsrc"],
                    choices=["maple", "promptsrc", "ivlp", "deep_language"])
    ap.add_argument("--batch", type=int, default=4, help="images per step (the authors' configs: 4)")
    ap.add_argument("--lr", type=float, default=0.0035, help="SGD learning rate (MaPLe's configs: 0.0035)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (median over them)")
    ap.add_argument("--ours-per-round", type=int, default=1, help="vlprompt steps per round (their median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    ap.add_argument("--json", type=Path, default=None, help="append the result rows to this JSON file")
    ap.add_argument("--check", type=float, default=None, metavar="TOL",
                    help="exit non-zero (after writing the rows) if the two paths' first losses differ by more than "
                         "TOL (fp32: 1e-4 is float rounding; measured <= 1e-6)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model, None, device=device)
    print(f"model {args.model} (random weights), device {device}, {machine_line()}", flush=True)
    rows = [bench(name, backbone, n, args, device) for n in args.classes for name in args.methods]
    if args.json is not None:
        append_rows(args.json, rows, model=args.model, device=str(device))
    bad = [r for r in rows if args.check is not None and not r["loss_diff"] <= args.check]
    if bad:
        raise SystemExit("equivalence check failed: " + "; ".join(
            f"{r['step']}: |loss diff| {r['loss_diff']:.1e} > {args.check:g}" for r in bad))


if __name__ == "__main__":
    main()
