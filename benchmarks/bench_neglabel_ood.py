"""NegLabel's OOD evaluation against zero-shot evaluation of the same images, and the cost of mining its negatives.

    python benchmarks/bench_neglabel_ood.py [--model ViT-B-16] [--classes 1000] [--negatives 10000] [--images 64]
        [--batch 32] [--words 2000] [--device cpu] [--threads 2] [--json out.json]

Issue 29 §3: NegLabel scores 10,000+ negative labels per image; with the text features computed once, its OOD
evaluation must cost at most 1.2x the zero-shot evaluation of the same images (ViT-B/16, random weights, 1000 ID
classes + 10,000 negatives), and mining the negatives from the ~70,000 words of WordNet must take seconds of
text-tower time with the batched text pass.

* **evaluation, per batch of ``--batch`` random images** (median of ``--rounds`` interleaved rounds, one warm-up):
  *zero-shot*: the image tower, then ``100 * cos`` against the ``--classes`` ID text features and the MCM score;
  *NegLabel*: the image tower, then the method's ``ood_score(features, "neglabel")`` (logits against the ID labels
  and the ``--negatives`` negative labels, NegLabel's grouped score with the authors' 100 groups). Both classifiers
  are built once, outside the timing: the ID classes are the first ``--classes`` ImageNet class names encoded by the
  model's text tower with NegLabel's template; the negatives are random unit features of the model's width (their
  values do not change the cost of a matrix product), injected in place of the mined ones.
  The ratio NegLabel / zero-shot; its multiply-add bound is ``(T + E (C + M)) / (T + E C)`` per image with ``T``
  the tower's multiply-adds (counted by ``torch.utils.flop_counter``), ``E`` the width, ``C`` classes, ``M``
  negatives.
* **mining**: :func:`vlprompt.methods.neglabel.mining.encode_words` on ``--words`` words drawn evenly from the
  word corpus (WordNet 3.0 nouns + adjectives when the ``ood`` extra is installed, else the world's corpus) with
  the authors' template, in the authors' passes of 1000 prompts; timed in the corpus order and sorted by token
  length (what :func:`encode_words` does by default: exact, each pass runs only up to its own longest prompt),
  tokenizing included, then extrapolated linearly to the whole corpus (labelled), plus the percentile similarity
  over all the corpus' words (random features).
"""

from __future__ import annotations

import argparse
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
from vlprompt.core.ood import ood_scores  # noqa: E402
from vlprompt.methods.neglabel.corpus import load_corpus, split_words  # noqa: E402
from vlprompt.methods.neglabel.mining import encode_words, percentile_similarity  # noqa: E402
from vlprompt.methods.neglabel.model import NegativeLabels  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402


def evaluation_rows(args: argparse.Namespace, backbone: Any, device: torch.device) -> list[dict[str, Any]]:
    names = imagenet_class_names(args.classes)
    t0 = time.perf_counter()
    method = build_method("neglabel", backbone, names).eval()  # encodes the ID labels (not timed per image)
    text_s = time.perf_counter() - t0
    width = method.classifier.shape[1]
    g = torch.Generator().manual_seed(args.seed)
    negatives = F.normalize(torch.randn(args.negatives, width, generator=g), dim=-1).to(device)
    method._negatives = NegativeLabels(negatives, tuple(f"w{i}" for i in range(args.negatives)), args.negatives,
                                       (args.negatives, 0), 0.0, False)
    method._grouped = None
    text = method.classifier
    scale = float(backbone.logit_scale)
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, device=device)

    def zero_shot() -> torch.Tensor:
        f = backbone.encode_image(images)
        logits = scale * F.normalize(f.float(), dim=-1) @ text.t()
        return logits, ood_scores(f, text, kind="mcm")

    def neglabel() -> torch.Tensor:
        f = backbone.encode_image(images)
        return method.ood_score(f, "neglabel")

    def tower() -> torch.Tensor:
        return backbone.encode_image(images)

    steps = {"image tower": tower, "zero-shot (tower + logits + MCM)": zero_shot,
             "NegLabel (tower + grouped score)": neglabel}
    with torch.no_grad():
        method.ood_score(backbone.encode_image(images[:2]), "neglabel")  # builds the grouped matrix once
        feats = backbone.encode_image(images)
        for step in steps.values():
            step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):  # interleaved, so that a change of machine load hits every row alike
            for name, step in steps.items():
                times[name].append(timed(step, device))
        small = {"NegLabel score alone (on features)": lambda: method.ood_score(feats, "neglabel"),
                 "zero-shot logits + MCM alone (on features)": lambda: (
                     scale * F.normalize(feats.float(), dim=-1) @ text.t(), ood_scores(feats, text, kind="mcm"))}
        for name, step in small.items():
            step()
            times[name] = [timed(step, device) for _ in range(max(5, args.rounds))]
    rows = [{"name": name, "seconds_per_image": statistics.median(t) / args.batch} for name, t in times.items()]
    tower_s, zs, nl = (rows[i]["seconds_per_image"] for i in range(3))
    nl_part, zs_part = rows[3]["seconds_per_image"], rows[4]["seconds_per_image"]
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone.encode_image(images[:1])
    tower_macs = counter.get_total_flops() / 2  # multiply-adds of one image through the tower
    c, m = args.classes, (args.negatives // method.config.ngroup) * method.config.ngroup
    bound = (tower_macs + width * (c + m)) / (tower_macs + width * c)
    rows.append({"name": "ratio NegLabel / zero-shot", "ratio": nl / zs, "bound": bound, "id_text_seconds": text_s,
                 "tower_gmacs_per_image": tower_macs / 1e9,
                 "ratio_from_parts": (tower_s + nl_part) / (tower_s + zs_part)})
    return rows


def mining_rows(args: argparse.Namespace, backbone: Any) -> list[dict[str, Any]]:
    try:
        corpus = load_corpus("wordnet")
    except Exception as exc:  # the ood extra is not installed: the world's corpus
        print(f"(wordnet corpus unavailable: {exc}; using the world corpus)")
        corpus = load_corpus("world")
    nouns, adjs = split_words(corpus)
    words = nouns + adjs
    step = max(1, len(words) // args.words)
    sample = words[::step][: args.words]
    template = ["the nice {}"]
    lengths = [int(x) for x in (backbone.tokenize([template[0].format(w) for w in sample], what="w") != 0).sum(1)]
    rows = []
    for label, by_length in (("corpus order", False), ("sorted by token length", True)):
        t0 = time.perf_counter()
        feats = encode_words(backbone, sample, template, chunk=1000, sort_by_length=by_length)
        seconds = time.perf_counter() - t0
        rows.append({"name": f"encode {len(sample)} words ({label})", "seconds": seconds,
                     "extrapolated_seconds_for_corpus": seconds * len(words) / len(sample),
                     "corpus_words": len(words), "mean_tokens": statistics.fmean(lengths), "max_tokens": max(lengths)})
    all_feats = F.normalize(torch.randn(len(words), feats.shape[1]), dim=-1)
    pos = F.normalize(torch.randn(args.classes, feats.shape[1]), dim=-1)
    t0 = time.perf_counter()
    percentile_similarity(all_feats, pos, 0.95, chunk=1000)
    rows.append({"name": f"percentile similarity, {len(words)} words x {args.classes} classes",
                 "seconds": time.perf_counter() - t0})
    rows[0]["corpus"] = corpus.record()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16", help="open_clip model (random weights)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--negatives", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=32, help="images per timed batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--words", type=int, default=4000, help="words of the corpus encoded for the mining row")
    ap.add_argument("--skip-mining", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    print(f"model {args.model} (random weights), {args.classes} ID classes + {args.negatives} negatives, batch "
          f"{args.batch}, device {device}, fp32, {machine_line()}", flush=True)
    backbone = load_backbone(args.model, None, device=device)
    rows = evaluation_rows(args, backbone, device)
    for r in rows:
        if "ratio" in r:
            print(f"{r['name']:<44} {r['ratio']:.3f}x end to end; {r['ratio_from_parts']:.4f}x from the parts "
                  f"(tower + score on features) (multiply-add bound {r['bound']:.4f}x; ID text features "
                  f"{r['id_text_seconds']:.1f} s, once)")
        else:
            print(f"{r['name']:<44} {r['seconds_per_image'] * 1e3:9.3f} ms / image")
    if not args.skip_mining:
        mine = mining_rows(args, backbone)
        for r in mine:
            extra = (f"; x {r['corpus_words']} / {args.words} words -> {r['extrapolated_seconds_for_corpus']:.0f} s "
                     f"for the corpus (extrapolated); tokens mean {r['mean_tokens']:.1f}, max {r['max_tokens']}"
                     if "extrapolated_seconds_for_corpus" in r else "")
            print(f"{r['name']:<44} {r['seconds']:8.2f} s{extra}")
        rows += mine
    if args.json:
        append_rows(args.json, rows, model=args.model, device=str(device), classes=args.classes,
                    negatives=args.negatives, batch=args.batch)


if __name__ == "__main__":
    main()
