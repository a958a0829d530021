"""One line per text-tower kind: a CoOp / CoCoOp training step, plain path vs vlprompt's (ratios).

    python benchmarks/bench_tower_kinds.py [--classes 50] [--cocoop-classes 20] [--device cpu] [--json out.json]

Random weights, real architecture shapes: ViT-B-16 (causal, EOT pooling), a SigLIP ViT-B-16 text tower
(bidirectional, ``last`` pooling; its sentencepiece tokenizer cannot be fetched offline, so the shape
is registered with CLIP's tokenizer and SigLIP's context length 64), MobileCLIP-S1 (bidirectional, EOT
pooling) and coca_ViT-B-32 (appended class token). Image features are cached in both paths, so the
ratio isolates the text pass:

* plain = every prompt at the full context length through the tower;
* ours = what the adapter picks: cut after EOT + shared prefix on causal EOT towers (exact), the full
  padded sequence elsewhere (the only exact choice there: expect about 1x).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import NAME_SETS, append_rows, class_names, timed  # noqa: E402

from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402

MODELS = ["ViT-B-16", "bench-lastpool-b16-text", "MobileCLIP-S1", "coca_ViT-B-32"]


def _register_siglip_shape() -> None:
    """ViT-B-16-SigLIP's text tower with CLIP's BPE tokenizer (vocab 49408) and a plain ViT-B-16 image tower."""
    import open_clip

    cfg = copy.deepcopy(open_clip.get_model_config("ViT-B-16-SigLIP"))
    text = cfg["text_cfg"]
    for key in ("hf_tokenizer_name", "tokenizer_kwargs"):
        text.pop(key, None)
    text["vocab_size"] = 49408
    cfg["vision_cfg"] = open_clip.get_model_config("ViT-B-16")["vision_cfg"]
    folder = Path(tempfile.mkdtemp())
    (folder / "bench-lastpool-b16-text.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def _time(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    step()
    return timed(lambda: [step() for _ in range(repeats)], device) / repeats  # synchronised on CUDA


def _plain_text(backbone, pl, ctx=None):
    """Every prompt at the full context length (the published code's text pass)."""
    prompts = pl(ctx)
    pad = backbone.context_length - prompts.shape[1]
    ids = F.pad(pl.token_ids, (0, pad), value=int(backbone.text_facts.pad_id or 0))
    prompts = F.pad(prompts, (0, 0, 0, pad))
    feats = backbone.encode_text_embeddings(prompts, pl.eot_index, ids=ids, truncate=False)
    return F.normalize(feats.float(), dim=-1)


def bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    backbone = load_backbone(name, None, device=args.device)
    device = torch.device(args.device)
    kind = backbone.text_facts.kind
    names = class_names(args.names, args.classes)
    coop = build_method("coop", backbone, names, n_ctx=16)
    opt = torch.optim.SGD([coop.ctx], lr=0.002)
    feats = torch.randn(32, backbone.embed_dim, device=device)
    labels = torch.randint(0, len(names), (32,), device=device)

    def plain() -> None:
        loss = F.cross_entropy(coop.logits(feats, _plain_text(backbone, coop.prompt_learner)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def ours() -> None:
        loss = coop.training_loss(feats, labels).total()
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_plain, t_ours = _time(plain, args.repeats, device), _time(ours, args.repeats, device)
    line = (f"{name:24s} {kind:12s} CoOp {len(names)} {args.names} cls: plain {t_plain:7.3f} s, ours {t_ours:7.3f} s, "
            f"{t_plain / t_ours:5.1f}x")
    n = args.cocoop_classes
    cocoop = build_method("cocoop", backbone, names[:n], n_ctx=4)
    opt2 = torch.optim.SGD([p for _, p in cocoop.learned_parameters()], lr=0.002)
    f4, l4 = feats[:4], labels[:4] % n

    def plain_cocoop() -> None:
        f = F.normalize(f4, dim=-1)
        ctx = cocoop.conditional_ctx(f4)
        pl = cocoop.prompt_learner
        rows = [backbone.logit_scale * f[i] @ _plain_text(backbone, pl, ctx[i]).t() for i in range(4)]
        loss = F.cross_entropy(torch.stack(rows), l4)
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    def ours_cocoop() -> None:
        loss = cocoop.training_loss(f4, l4).total()
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    c_plain, c_ours = _time(plain_cocoop, args.repeats, device), _time(ours_cocoop, args.repeats, device)
    print(f"{line} | CoCoOp {n} cls x 4 img: plain {c_plain:7.3f} s, ours {c_ours:7.3f} s, {c_plain / c_ours:5.1f}x",
          flush=True)
    return {"name": f"{name} ({kind})", "coop_plain_s": t_plain, "coop_vlprompt_s": t_ours,
            "coop_ratio": t_plain / t_ours,
            "cocoop_plain_s": c_plain, "cocoop_vlprompt_s": c_ours, "cocoop_ratio": c_plain / c_ours,
            "classes": len(names), "names": args.names, "cocoop_classes": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--names", default="imagenet", choices=NAME_SETS,
                    help="class names: the first --classes ImageNet names, DTD's 47, or 'class number {i}'")
    ap.add_argument("--cocoop-classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--json", type=Path, default=None, help="append the result rows to this JSON file")
    args = ap.parse_args()
    _register_siglip_shape()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, random weights")
    rows = [bench(name, args) for name in args.models]
    if args.json is not None:
        append_rows(args.json, rows, device=args.device)


if __name__ == "__main__":
    main()
