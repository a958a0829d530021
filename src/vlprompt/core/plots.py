"""Plot helpers shared by ``vlprompt ood`` and ``vlprompt report`` (matplotlib is imported lazily, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlprompt.core.tables import SCORE_LABELS


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, paths: Sequence[Path], *, dpi: int = 110) -> list[Path]:
    """Save ``fig`` to every path (format from the suffix: ``.png``, ``.svg``), close it, return the paths."""
    out = [Path(p) for p in paths]
    for p in out:
        fig.savefig(p, dpi=dpi)
    pyplot().close(fig)
    return out


def plot_score_histograms(id_scores: Mapping[str, Any], ood_scores: Mapping[str, Mapping[str, Any]],
                          paths: Sequence[Path], *, id_label: str = "ID", title: str | None = None,
                          bins: int = 40) -> list[Path]:
    """ID vs OOD score histograms: one row per score, one column per OOD set (density, shared bins).

    Args:
        id_scores: score name (``mcm``, ``glmcm``, ...) -> the ID images' scores, shape ``[N_id]``.
        ood_scores: OOD set name -> score name -> that set's scores, shape ``[N_ood]``.
        paths: files to write (``.png`` / ``.svg``).
        id_label: legend entry of the ID histogram (e.g. ``ID (imagenet)``).
        title: figure title (e.g. method, backbone and seed).

    Only scores present for ID and every OOD set are drawn; nothing is written (``[]``) when none is.
    """
    names = list(ood_scores)
    kinds = [k for k in id_scores if all(k in per for per in ood_scores.values())]
    if not kinds or not names:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(len(kinds), len(names), figsize=(3.6 * len(names), 2.8 * len(kinds)), squeeze=False)
    for i, kind in enumerate(kinds):
        for j, name in enumerate(names):
            ax = axes[i][j]
            ids = np.asarray(id_scores[kind], dtype=float).ravel()
            oods = np.asarray(ood_scores[name][kind], dtype=float).ravel()
            edges = np.histogram_bin_edges(np.r_[ids, oods], bins=bins)  # the same bins for both
            ax.hist(ids, bins=edges, alpha=0.6, density=True, label=id_label)
            ax.hist(oods, bins=edges, alpha=0.6, density=True, label=name)
            ax.set_title(f"{SCORE_LABELS.get(kind, kind)}: ID vs {name}", fontsize=9)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, paths)
