"""The report's plots (PNG + SVG): accuracy vs shots, base / new / H bars, OOD score histograms.

matplotlib is imported lazily (Agg backend) through :mod:`vlprompt.core.plots`; the OOD histogram is
:func:`vlprompt.core.plots.plot_score_histograms`, the same figure ``vlprompt ood`` draws.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.core.plots import plot_score_histograms, pyplot, save_figure
from vlprompt.report.collect import (
    FewKey,
    OodKey,
    OodRun,
    ProtocolRow,
    base2new_averages,
    is_training_free,
    load_ood_scores,
)
from vlprompt.report.papers import PaperEntry, paper_for


def _stem_paths(path_stem: Path) -> list[Path]:
    return [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-")


def _grid(n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_fewshot(groups: dict[FewKey, list[float]], path_stem: Path) -> list[Path]:
    """Accuracy vs shots, one panel per dataset plus the average; training-free methods (zero-shot) as a
    dashed line."""
    datasets = sorted({d for _, _, d, _ in groups})
    methods = sorted({(m, b) for m, b, _, _ in groups})
    panels = datasets + (["average"] if len(datasets) > 1 else [])
    all_shots = sorted({k for *_, k in groups})
    fig, axes = _grid(len(panels), 3.8, 3.3)
    for ax, ds in zip(axes, panels):
        for method, bb in methods:
            names = datasets if ds == "average" else [ds]
            shots = sorted({k for m, b, d, k in groups if (m, b) == (method, bb) and d in names})
            ys = []
            for k in shots:
                per = [statistics.fmean(groups[(method, bb, d, k)]) for d in names if (method, bb, d, k) in groups]
                ys.append(statistics.fmean(per) if len(per) == len(names) else float("nan"))
            if is_training_free(method):
                ax.axhline(statistics.fmean(y for y in ys if y == y), ls="--", color="gray", label=method)
            else:
                ax.plot(shots, ys, "o-", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_shots, [str(k) for k in all_shots])
        ax.set_title(ds)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, _stem_paths(path_stem))


def plot_base2new(results: list[ProtocolRow], paper: Sequence[PaperEntry] | None, path_stem: Path) -> list[Path]:
    """Grouped bars (base, new, H; std as error bars) per method, one panel per dataset and the average."""
    rows = [r for r in results + base2new_averages(results) if r.kind == "base2new"]
    backbones = {r.backbone for r in rows}
    datasets = sorted({r.dataset for r in rows if r.dataset != "average"})
    panels = datasets + (["average"] if any(r.dataset == "average" for r in rows) else [])
    fig, axes = _grid(len(panels), 4.2, 3.4)
    colors = {"base": "tab:blue", "new": "tab:orange", "H": "tab:green"}
    for ax, ds in zip(axes, panels):
        here = sorted((r for r in rows if r.dataset == ds), key=lambda r: (r.method, r.backbone))
        for j, col in enumerate(("base", "new", "H")):
            xs = [i + (j - 1) * 0.27 for i in range(len(here))]
            means = [r.summary[col][0] for r in here]
            errs = [r.summary[col][1] or 0.0 for r in here]
            ax.bar(xs, means, width=0.27, yerr=errs, capsize=2, color=colors[col], label=col)
            if paper is not None:
                ref = [paper_for(paper, "base2new", r.method, ds, r.backbone, set(r.datasets or []),
                                 training_free=is_training_free(r.method)) for r in here]
                pts = [(x, e.values[col]) for x, e in zip(xs, ref) if e and col in e.values]
                if pts:
                    ax.plot(*zip(*pts), "kD", ms=4, mfc="white", label="paper" if j == 0 else None)
        ax.set_xticks(range(len(here)))
        ax.set_xticklabels([r.method + (f"\n{r.backbone}" if len(backbones) > 1 else "") for r in here],
                           fontsize=8)
        ax.set_title(ds)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, _stem_paths(path_stem))


def plot_ood_histograms(key: OodKey, runs: list[OodRun], out_dir: Path) -> list[Path]:
    """ID vs each OOD set score histograms (rows: scores, columns: OOD sets) of the lowest seed with saved
    per-image scores (``ood_scores.json``); none when no run has them."""
    found = next(((r, s) for r in runs if (s := load_ood_scores(r)) is not None), None)
    if found is None:
        return []
    run, data = found
    method, bb, id_ds, shots = key
    shot_text = "" if shots is None else f", {shots}-shot"
    seed = "?" if run.seed is None else run.seed
    stem = out_dir / _slug("report_ood_hist", method, bb, id_ds, *([] if shots is None else [f"{shots}shots"]))
    return plot_score_histograms(data["id"], data["ood"], _stem_paths(stem), id_label=f"ID ({id_ds})",
                                 title=f"{method} ({bb}{shot_text}), seed {seed}")
