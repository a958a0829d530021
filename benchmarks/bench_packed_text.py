"""Packed vs padded shared-prefix text pass on real class names (issue 31 §1): forward + backward, CPU or CUDA.

    python benchmarks/bench_packed_text.py [--cases coop50 coop1000 cocoop4x50] [--rounds 5] [--threads 1]
        [--model ViT-B-16] [--device cpu] [--json out.json]

Prompts are CoOp's ``"X X X X {name}."`` over the first N of open_clip's ImageNet class names
(``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``: name + period + EOT is 1 to 13 suffix tokens, mean
4.4 over the first 50, 4.2 over all 1000). Cases: ``coop<N>`` one group of N classes (CoOp, its derivatives
and the deep-prompt methods); ``cocoop<G>x<N>``: G images, each with its own prefix, times N classes (CoCoOp).
The text tower is open_clip's (``--model``, random init: no weights needed; ViT-B-16: width 512, 12 layers),
frozen; the gradient flows to the prefix (SOS + context) as in training.

Both paths are :func:`vlprompt.backbones.shared_prefix.encode_shared_prefix` on the same inputs: ``packed=False``
is the padded pass of earlier versions (every prompt runs the longest prompt's S suffix rows), ``packed=True``
(the default) runs each prompt's real rows only. One call of each runs first and the largest difference of their
features is printed (float rounding only); then the two alternate, ``--rounds`` times, and the medians and the
median of the per-round ratios are printed with the machine load. ``rows`` is the number of suffix rows per
group each path runs through the blocks (the per-token work scales with it).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlprompt.backbones.shared_prefix import encode_shared_prefix

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import append_rows, load, machine_line, peak_gib, timed  # noqa: E402

CONTEXT = "X X X X"  # CoOp's "X" placeholders for 4 context tokens: P = 5 with SOS


class TextTower:
    """The attributes :func:`encode_shared_prefix` reads, taken from an open_clip CLIP model."""

    def __init__(self, model: Any) -> None:
        self.transformer = model.transformer
        self.positional_embedding = model.positional_embedding
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection


def inputs(model: Any, tokenizer: Any, n_cls: int, groups: int, device: torch.device) -> tuple[Tensor, ...]:
    """``prefix [G, P, W]`` (requires grad; the groups differ as CoCoOp's image-conditioned contexts do),
    ``suffix [n, S, W]`` cut after the longest EOT, ``eot_in_suffix [n]``."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    if not 1 <= n_cls <= len(names):
        raise SystemExit(f"error: classes must be 1 .. {len(names)}, got {n_cls}")
    ids = tokenizer([f"{CONTEXT} {name}." for name in names[:n_cls]]).to(device)
    eot = ids.argmax(-1)  # the EOT token has the largest id
    p = 1 + len(CONTEXT.split())
    with torch.no_grad():
        emb = model.token_embedding(ids[:, : int(eot.max()) + 1])
    gen = torch.Generator().manual_seed(0)
    shift = 0.02 * torch.randn(groups, 1, emb.shape[-1], generator=gen).to(device)
    prefix = (emb[:1, :p] + shift).detach().requires_grad_(True)
    return prefix, emb[:, p:].contiguous(), eot - p


def bench(case: str, model: Any, tokenizer: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    match = re.fullmatch(r"coop(\d+)|cocoop(\d+)x(\d+)", case)
    if match is None:
        raise SystemExit(f"error: unknown case {case!r} (coop<N> or cocoop<G>x<N>)")
    groups, n_cls = (1, int(match[1])) if match[1] else (int(match[2]), int(match[3]))
    tower = TextTower(model)
    prefix, suffix, eot = inputs(model, tokenizer, n_cls, groups, device)
    weight = torch.randn(groups, n_cls, model.text_projection.shape[-1], generator=torch.Generator().manual_seed(1))
    weight = weight.to(device)

    def step(packed: bool) -> Tensor:
        prefix.grad = None
        out = encode_shared_prefix(tower, prefix, suffix, eot, packed=packed)
        (out * weight).sum().backward()
        return out.detach()

    load_before = load()
    diff = float((step(True) - step(False)).abs().max())
    t_pad: list[float] = []
    t_packed: list[float] = []
    for _ in range(args.rounds):
        t_pad.append(timed(lambda: step(False), device))
        t_packed.append(timed(lambda: step(True), device))
    ratios = [a / b for a, b in zip(t_pad, t_packed)]
    rows_packed, rows_padded = int((eot + 1).sum()), n_cls * suffix.shape[1]
    row: dict[str, Any] = {
        "case": f"{'CoOp' if groups == 1 else 'CoCoOp'} {args.model} text, {groups} group(s) x {n_cls} ImageNet names",
        "groups": groups, "classes": n_cls, "rows_padded": rows_padded, "rows_packed": rows_packed,
        "padded_s": statistics.median(t_pad), "packed_s": statistics.median(t_packed),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios), "rounds": args.rounds,
        "max_abs_diff": diff, "load_before": load_before, "load_after": load(),
    }
    if device.type == "cuda":
        row["padded_peak_gib"] = peak_gib(lambda: step(False), device)
        row["packed_peak_gib"] = peak_gib(lambda: step(True), device)
    print(f"{row['case']}: suffix rows {rows_padded} -> {rows_packed}; padded {row['padded_s']:.3f} s, packed "
          f"{row['packed_s']:.3f} s, ratio {row['ratio']:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}); "
          f"|diff| {diff:.1e}; load {load_before} -> {row['load_after']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["coop50", "cocoop4x50", "coop1000"])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import open_clip

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = open_clip.create_model(args.model).to(device).eval()  # random init: the cost does not depend on it
    model.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(args.model)
    print(machine_line(), flush=True)
    rows = [bench(case, model, tokenizer, args, device) for case in args.cases]
    if args.json is not None:
        append_rows(args.json, rows, model=args.model, device=str(device))


if __name__ == "__main__":
    main()
