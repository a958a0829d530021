"""Seconds to fit the training-free few-shot methods on cached features: GDA, APE, APE-T's fit and search, and
Tip-Adapter for reference.

    OMP_NUM_THREADS=1 python benchmarks/bench_fit_training_free.py [--classes 1000] [--shots 16] [--dim 512]
        [--views 10] [--val-per-class 4] [--tip-betas 10] [--device cpu] [--json out.json]

Random cached features (no image tower): ``views`` augmented views of ``classes x shots`` few-shot images
``[views, C K, E]`` around random class centres, and ``val-per-class`` validation features per class
(vlprompt's few-shot val split keeps min(K, 4) per class: 4000 on ImageNet-1k), and random unit class text
features (a stub backbone, so no text tower runs). Each method has its authors' ImageNet options
(docs/methods.md): GDA's 7 alphas; APE's grid 200 x 20 x 5 (beta, alpha, gamma) and 500 channels; APE-T's
200 x 20 after training (its SGD epochs are not timed); Tip-Adapter's 200 x 20, whose dense search is timed
on its first ``tip-betas`` betas and extrapolated linearly to 200 (marked ``~``). Rows per method: ``fit without
search`` (the cache, channels / estimator: ``fit`` with the search turned off), ``val search`` (the authors' search
on the validation features alone) and ``total``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import append_rows, machine_line  # noqa: E402

from vlprompt.methods.base import MethodContext  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402


class StubBackbone(nn.Module):
    """Just what the fitted methods read of a backbone: width, device, logit scale, random class text features."""

    name, pretrained, logit_bias = "stub", None, None

    def __init__(self, dim: int, device: torch.device) -> None:
        super().__init__()
        self.embed_dim, self._device = dim, device
        self.logit_scale = torch.tensor(100.0, device=device)
        self._g = torch.Generator().manual_seed(0)

    @property
    def device(self) -> torch.device:
        return self._device

    def tokenize(self, texts: list[str], what: str = "") -> list[str]:
        return texts

    def encode_text(self, texts: list[str]) -> Tensor:
        return torch.randn(len(texts), self.embed_dim, generator=self._g).to(self._device)


class CachedFitData:
    """``FitData`` over ready-made features (what the engine's feature cache hands to ``fit``)."""

    def __init__(self, views: Tensor, labels: Tensor, val: Tensor, val_labels: Tensor) -> None:
        self.views, self.labels, self.val, self.val_labels = views, labels, val, val_labels

    def augmented_features(self, views: int, crop_scale: Any = None) -> tuple[Tensor, Tensor]:
        return self.views[:views], self.labels

    def features(self, split: str) -> tuple[Tensor, Tensor]:
        return self.val, self.val_labels

    def log(self, message: str) -> None:
        print(message)


def make_data(classes: int, shots: int, dim: int, views: int, val_per_class: int, device: torch.device,
              text: Tensor) -> CachedFitData:
    g = torch.Generator().manual_seed(0)
    s = dim**-0.5  # per-channel scale of a unit vector
    centres = F.normalize(text.cpu() + 4.0 * s * torch.randn(classes, dim, generator=g), dim=-1)
    labels = torch.arange(classes).repeat_interleave(shots)
    shot = centres[labels] + 1.2 * s * torch.randn(len(labels), dim, generator=g)
    aug = shot.unsqueeze(0) + 0.3 * s * torch.randn(views, len(labels), dim, generator=g)
    val_labels = torch.arange(classes).repeat_interleave(val_per_class)
    val = centres[val_labels] + 1.2 * s * torch.randn(len(val_labels), dim, generator=g)
    return CachedFitData(aug.to(device), labels.to(device), val.to(device), val_labels.to(device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--views", type=int, default=10, help="augmented views (augment_epoch)")
    ap.add_argument("--val-per-class", type=int, default=4)
    ap.add_argument("--tip-betas", type=int, default=10, help="betas of Tip-Adapter's search actually timed")
    ap.add_argument("--methods", default="gda,ape,ape_t,tip_adapter")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="append the rows to this JSON list")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(machine_line())
    names = [f"class {i}" for i in range(args.classes)]
    backbone = StubBackbone(args.dim, device)
    context = MethodContext(templates=("a photo of a {}.",))
    rows: list[dict[str, Any]] = []
    data = None
    no_search = {"gda": {"alpha_list": []}, "ape": {"search_hp": False}, "ape_t": {},
                 "tip_adapter": {"search_hp": False}}
    for name in args.methods.split(","):
        options: dict[str, Any] = {"augment_epoch": args.views, **no_search[name]}
        extrapolate = 1.0
        if name == "tip_adapter":
            options["search_step"] = [args.tip_betas, 20]
            extrapolate = 200 / args.tip_betas
        method = build_method(name, backbone, names, context=context, **options)
        if data is None:
            data = make_data(args.classes, args.shots, args.dim, args.views, args.val_per_class, device,
                             method.classifier)
        t0 = time.perf_counter()
        info = method.fit(data)  # the cache / estimator / channels, without the search
        fit_s = time.perf_counter() - t0
        if name == "tip_adapter":
            method.config.search_hp = True
            t0 = time.perf_counter()
            info.update(method.search(data))
        else:
            if name == "gda":
                method.config.alpha_list = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
            elif name == "ape":
                method.config.search_hp = True
            val = (F.normalize(data.val.float(), dim=-1), data.val_labels)
            t0 = time.perf_counter()
            info.update(method.search(val))
        search_s = (time.perf_counter() - t0) * extrapolate
        mark = "~" if extrapolate != 1.0 else ""
        for stage, seconds in (("fit without search", fit_s), ("val search", search_s), ("total", fit_s + search_s)):
            rows.append({"method": name, "stage": stage, "seconds": round(seconds, 2),
                         "extrapolated": bool(mark) and stage != "fit without search", "classes": args.classes,
                         "shots": args.shots, "dim": args.dim, "views": args.views, "val": int(data.val.shape[0]),
                         "device": str(device)})
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()}
        print(f"{name:12s} fit without search {fit_s:7.2f} s   val search {mark}{search_s:8.2f} s   total "
              f"{mark}{fit_s + search_s:8.2f} s   {shown}", flush=True)
    if args.json:
        append_rows(args.json, rows, bench="fit_training_free")


if __name__ == "__main__":
    main()
