"""``vlprompt report RUNS_DIR``: tables (Markdown, CSV, JSON) and plots from a folder of runs.

* Few-shot runs (every ``metrics.json`` below the folder): test accuracy mean ± std over seeds, one
  table per method with datasets as rows, shots as columns and an average row (CoOp's Table / Fig. 3
  layout); zero-shot runs appear as their own method and as a dashed line in the plots.
* Protocol results (``base2new_results.json``, ``dg_results.json``, ``xd_results.json``): one row
  per method and dataset with the mean ± std of every column.
* Plots (PNG + SVG): accuracy vs shots per dataset and averaged, one line per method.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from vlprompt.errors import VlpromptError
from vlprompt.eval.report import markdown_table
from vlprompt.io import atomic_write_json, atomic_write_text


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def collect_fewshot(root: Path) -> dict[tuple[str, str, str, int], list[float]]:
    """(method, backbone, dataset, shots) -> test accuracies of every seed found."""
    groups: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    for path in sorted(root.rglob("metrics.json")):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            key = (m["method"], str(m.get("backbone", {}).get("model", "?")), m["dataset"], int(m["shots"]))
            groups[key].append(float(m["test"]["accuracy"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # not a finished run's metrics
    return dict(groups)


def fewshot_tables(groups: dict[tuple[str, str, str, int], list[float]]) -> tuple[str, list[list[Any]], dict]:
    """Markdown per (method, backbone), CSV rows and a JSON summary."""
    by_method: dict[tuple[str, str], dict[tuple[str, int], list[float]]] = defaultdict(dict)
    for (method, bb, ds, k), accs in groups.items():
        by_method[(method, bb)][(ds, k)] = accs
    md, rows, js = [], [["method", "backbone", "dataset", "shots", "mean", "std", "seeds"]], {}
    for (method, bb), cells in sorted(by_method.items()):
        datasets = sorted({d for d, _ in cells})
        shots = sorted({k for _, k in cells})
        table = []
        for ds in datasets:
            row: list[Any] = [ds]
            for k in shots:
                if (ds, k) in cells:
                    mean, std = _ms(cells[(ds, k)])
                    row.append(f"{mean:.2f} ± {std:.2f}")
                    rows.append([method, bb, ds, k, round(mean, 4), round(std, 4), len(cells[(ds, k)])])
                    js.setdefault(f"{method}|{bb}", {}).setdefault(ds, {})[str(k)] = {
                        "mean": mean, "std": std, "seeds": len(cells[(ds, k)])}
                else:
                    row.append("-")
            table.append(row)
        if len(datasets) > 1:
            avg: list[Any] = ["average"]
            for k in shots:
                per = [statistics.fmean(cells[(d, k)]) for d in datasets if (d, k) in cells]
                avg.append(f"{statistics.fmean(per):.2f}" if len(per) == len(datasets) else "-")
            table.append(avg)
        md.append(f"### {method} ({bb}): test accuracy %, mean ± std over seeds\n\n"
                  + markdown_table(["dataset", *[f"{k} shots" for k in shots]], table))
    return "\n".join(md), rows, js


def protocol_tables(root: Path) -> str:
    parts = []
    for kind in ("base2new", "dg", "xd"):
        rows, cols = [], None
        for path in sorted(root.rglob(f"{kind}_results.json")):
            r = json.loads(path.read_text(encoding="utf-8"))
            cols = cols or r["columns"]
            if r["columns"] != cols:
                continue
            rows.append([r["method"], r["dataset"],
                         *[f"{r['summary'][c]['mean']:.2f} ± {r['summary'][c]['std']:.2f}" for c in cols]])
        if rows and cols:
            parts.append(f"### {kind}\n\n" + markdown_table(["method", "dataset", *cols], rows))
    return "\n".join(parts)


def plot_fewshot(groups: dict[tuple[str, str, str, int], list[float]], path_stem: Path) -> list[Path]:
    """Accuracy vs shots, one panel per dataset plus the average; zero-shot as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d for _, _, d, _ in groups})
    methods = sorted({(m, b) for m, b, _, _ in groups})
    panels = datasets + (["average"] if len(datasets) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.3), squeeze=False)
    for ax, ds in zip(axes[0], panels):
        for method, bb in methods:
            names = datasets if ds == "average" else [ds]
            shots = sorted({k for m, b, d, k in groups if (m, b) == (method, bb) and d in names})
            ys = []
            for k in shots:
                per = [statistics.fmean(groups[(method, bb, d, k)]) for d in names if (method, bb, d, k) in groups]
                ys.append(statistics.fmean(per) if len(per) == len(names) else float("nan"))
            if method == "zeroshot":
                ax.axhline(statistics.fmean(y for y in ys if y == y), ls="--", color="gray", label="zero-shot")
            else:
                ax.plot(shots, ys, "o-", label=method)
        ax.set_xscale("log", base=2)
        ax.set_title(ds)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]
    for p in out:
        fig.savefig(p, dpi=110)
    plt.close(fig)
    return out


def make_report(root: str | Path, output: str | Path | None = None) -> dict[str, Any]:
    """Write report.md / report.csv / report.json (+ fewshot plot) for the runs under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise VlpromptError(f"runs folder '{root}' does not exist")
    out = Path(output) if output else root
    groups = collect_fewshot(root)
    md_few, rows, js = fewshot_tables(groups)
    md_proto = protocol_tables(root)
    if not groups and not md_proto:
        raise VlpromptError(f"no finished runs (metrics.json) or protocol results found under '{root}'")
    text = f"# Results in {root}\n\n" + "\n".join(p for p in (md_few, md_proto) if p)
    plots = []
    if groups:
        plots = [str(p) for p in plot_fewshot(groups, out / "report_fewshot")]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.csv", buf.getvalue())
    atomic_write_json(out / "report.json", {"fewshot": js, "plots": plots})
    return {"markdown": text, "plots": plots, "fewshot": js}
