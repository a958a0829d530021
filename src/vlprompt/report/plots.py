"""The report's plots (PNG + SVG): accuracy vs shots (mean ± std bands over seeds), base / new / H bars, OOD
score histograms; one y scale per figure.

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


def _grid(n: int, width: float, height: float, *, sharey: bool = False) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=sharey)
    flat = [ax for line in axes for ax in line]
    for ax in flat[n:]:
        ax.set_visible(False)
    if sharey:  # the y tick labels of every visible panel: hidden ones would otherwise leave a row unlabelled
        for ax in flat[:n]:
            ax.yaxis.set_tick_params(labelleft=True)
    return fig, flat[:n]


def fewshot_series(groups: dict[FewKey, list[float]], method: str, bb: str,
                   names: Sequence[str]) -> list[tuple[int, float, float | None, int]]:
    """``(shots, mean, std, seeds)`` of one method over ``names`` (one dataset, or all for the average).

    One dataset: mean and sample std over its seeds (std None with one seed). Several: the mean of the
    datasets' means and the mean of their stds (None when any has one seed); a shot count missing for one
    of the datasets is left out. ``seeds`` is the smallest seed count of the datasets.
    """
    out = []
    for k in sorted({k for m, b, d, k in groups if (m, b) == (method, bb) and d in names}):
        cells = [groups[(method, bb, d, k)] for d in names if (method, bb, d, k) in groups]
        if len(cells) != len(names):
            continue
        seeds = min(len(c) for c in cells)
        std = None if seeds < 2 else statistics.fmean(statistics.stdev(c) for c in cells)
        out.append((k, statistics.fmean(statistics.fmean(c) for c in cells), std, seeds))
    return out


def plot_fewshot(groups: dict[FewKey, list[float]], path_stem: Path) -> list[Path]:
    """Accuracy vs shots, one panel per dataset plus the average, one y scale for the whole figure.

    A method with several seeds at every shot count is its mean over seeds (line and markers) with a shaded
    mean ± std band; a method with a single seed at some shot count is drawn as points only, without a line
    (one seed is no trend), and says so in the legend. Training-free methods (zero-shot) are a dashed line.
    """
    datasets = sorted({d for _, _, d, _ in groups})
    methods = sorted({(m, b) for m, b, _, _ in groups})
    panels = datasets + (["average"] if len(datasets) > 1 else [])
    all_shots = sorted({k for *_, k in groups})
    fig, axes = _grid(len(panels), 3.8, 3.3, sharey=True)
    single_seed = False
    for ax, ds in zip(axes, panels):
        names = datasets if ds == "average" else [ds]
        for i, (method, bb) in enumerate(methods):
            series = fewshot_series(groups, method, bb, names)
            if not series:
                continue
            shots, means, stds, seeds = zip(*series)
            label = method if len({b for _, b in methods}) == 1 else f"{method} ({bb})"
            if is_training_free(method):
                ax.axhline(statistics.fmean(means), ls="--", color="gray", label=label)
                continue
            color = f"C{i % 10}"
            if min(seeds) < 2:
                single_seed = True
                ax.plot(shots, means, "o", ls="none", color=color, label=f"{label} (1 seed: points)")
                continue
            ax.plot(shots, means, "o-", color=color, label=f"{label} (mean ± std over seeds)")
            ax.fill_between(shots, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=color, alpha=0.2, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_shots, [str(k) for k in all_shots])
        ax.set_title(ds)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if single_seed:
        fig.text(0.5, 0.005, "points without a line: one seed per shot count (no mean ± std, no trend)",
                 ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03 if single_seed else 0, 1, 1))
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
