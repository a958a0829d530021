"""``vlprompt demo``: zero-shot CLIP vs CoOp on the embedded synthetic world, no downloads.

For each world dataset the demo evaluates zero-shot CLIP ("a photo of a {}.") with the shipped
world CLIP, then trains CoOp (M = 16 unified context, random init, CoOp's SGD schedule) at several
shot counts through exactly the same ``train()`` the CLI uses, and writes

    OUT/demo_results.json   every number (and the run folders' paths)
    OUT/demo_results.md     the table printed at the end
    OUT/demo_plot.png       CoOp's gain over zero-shot vs shots per dataset (one y scale)

and then (unless ``methods=False``, CLI ``--coop-only``) runs CoCoOp base-to-new, UPL and LoCoOp OOD
detection on the world, one seed each (:mod:`vlprompt.cli.demo_methods`); their tables join the
Markdown file and the JSON under ``"methods"``.

To fit in a few CPU minutes the demo trains without augmentation (features cached, exact), with at
most ``epochs`` (default 50) epochs and at most ``max_steps`` (default 600) optimisation steps per run
(fewer epochs for the 120-class dataset, as CoOp itself uses 50 epochs for ImageNet); everything else
is CoOp's recipe.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.cli.demo_methods import SECTIONS, world_config
from vlprompt.core.errors import VlpromptError
from vlprompt.core.io import atomic_write_json, atomic_write_text
from vlprompt.core.tables import markdown_table

DEFAULT_MODEL = "vlprompt-world-rn"
DEFAULT_PRETRAINED = "world"
DEFAULT_DATASETS = (
    "world_shapes", "world_objects", "world_scenes", "world_positions", "world_textures", "world_patterns",
)  # fmt: skip
DEFAULT_SHOTS = (1, 4, 16)


def epochs_for(n_classes: int, shots: int, epochs: int, max_steps: int, batch_size: int = 32) -> int:
    """``epochs``, reduced so that a run takes at most ``max_steps`` steps (at least 5 epochs)."""
    steps_per_epoch = max(1, (n_classes * shots) // batch_size)
    return max(5, min(epochs, max_steps // steps_per_epoch))


#: ``vlprompt demo --quick``: two small datasets, two shot counts, no methods section (about 10 s on 2 cores)
QUICK = {"datasets": ("world_shapes", "world_scenes"), "shots": (1, 4), "methods": False}


def dataset_row(dataset: str, out: Path, *, shots: Sequence[int], seed: int, epochs: int, max_steps: int,
                model: str, pretrained: str | None, device: str, log: Any = print, t0: float | None = None,
                backbone: Any = None) -> dict[str, Any]:
    """One row of the CoOp table: zero-shot CLIP, then CoOp at each shot count, on ``dataset``."""
    from vlprompt.backbones.openclip import load_backbone
    from vlprompt.engine.run import resolve_device
    from vlprompt.engine.trainer import train
    from vlprompt.tasks.api import zeroshot

    t0 = time.time() if t0 is None else t0
    if backbone is None:
        backbone = load_backbone(model, pretrained, device=resolve_device(device))
    common: dict[str, Any] = {"model": model, "pretrained": pretrained, "seed": seed, "device": device}
    zs = zeroshot(world_config({"name": "zeroshot"}, {}, dataset, **common), progress=False, backbone=backbone)
    row: dict[str, Any] = {"dataset": dataset, "classes": len(zs["per_class"]), "zeroshot": zs["accuracy"],
                           "coop": {}}
    log(f"[{time.time() - t0:5.0f}s] {dataset}: zero-shot {zs['accuracy']:.1f}%")
    for k in shots:
        n_ep = epochs_for(row["classes"], k, epochs, max_steps)
        cfg = world_config({"name": "coop", "n_ctx": 16}, {"max_epoch": n_ep, "batch_size": 32}, dataset,
                           shots=k, out=out / f"coop_{dataset}_{k}shots_seed{seed}", **common)
        row["coop"][k] = train(cfg, backbone=backbone).accuracy
        log(f"[{time.time() - t0:5.0f}s] {dataset}: CoOp {k:2d} shot{'' if k == 1 else 's'} {row['coop'][k]:.1f}%")
    return row


def _piece(kind: str, name: str, out: Path, settings: dict[str, Any], t0: float, log: Any = print,
           backbone: Any = None) -> dict[str, Any]:
    """One independent piece of the demo: a dataset row (``kind`` ``"row"``) or a methods section."""
    if kind == "row":
        return dataset_row(name, out, t0=t0, log=log, backbone=backbone, **settings)
    from vlprompt.cli.demo_methods import run_section

    keep = ("seed", "model", "pretrained", "device")
    return run_section(name, out / "methods", t0=t0, log=log, **{k: settings[k] for k in keep})


def _task(kind: str, name: str, out: Path, settings: dict[str, Any], t0: float) -> tuple[str, str, dict[str, Any]]:
    """:func:`_piece` in a worker process (one torch thread: the workers share the cores)."""
    import torch

    torch.set_num_threads(1)
    return kind, name, _piece(kind, name, out, settings, t0)


def run_demo(
    out_dir: str | Path,
    *,
    datasets: Sequence[str] = DEFAULT_DATASETS,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seed: int = 1,
    epochs: int = 50,
    max_steps: int = 600,
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str = "auto",
    methods: bool = True,
    jobs: int = 1,
    log: Any = print,
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` and return the results dict (see module doc).

    ``jobs`` > 1 runs the independent pieces (one dataset row, one methods section) in that many worker processes
    of one torch thread each: the same runs with the same seeds, so the same numbers, in about 1 / jobs of the
    time on as many cores (the world's small matrices gain little from a second thread inside one process)."""
    out = Path(out_dir)
    if (out / "demo_results.json").exists():
        raise VlpromptError(f"'{out}' already holds demo results; pass another --output-dir or delete it")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    settings: dict[str, Any] = {"shots": list(shots), "seed": seed, "epochs": epochs, "max_steps": max_steps,
                                "model": model, "pretrained": pretrained, "device": device}
    # longest first, so that the last piece to start is a short one
    tasks = [("row", d) for d in datasets if d == "world_objects"]
    tasks += [("section", s) for s in (SECTIONS if methods else ())]
    tasks += [("row", d) for d in datasets if d != "world_objects"]
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if jobs > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
            futures = [pool.submit(_task, kind, name, out, settings, t0) for kind, name in tasks]
            for fut in futures:
                kind, name, result = fut.result()
                done[(kind, name)] = result
    else:
        from vlprompt.backbones.openclip import load_backbone
        from vlprompt.engine.run import resolve_device

        backbone = load_backbone(model, pretrained, device=resolve_device(device))
        for kind, name in tasks:
            done[(kind, name)] = _piece(kind, name, out, settings, t0, log, backbone)
    rows = [done[("row", d)] for d in datasets]
    others = {s: done[("section", s)] for s in SECTIONS} if methods else None
    results = {"model": model, "pretrained": pretrained, "seed": seed, "epochs": epochs, "max_steps": max_steps,
               "shots": list(shots),
               "rows": rows, "methods": others, "seconds": round(time.time() - t0, 1)}
    table = results_table(results)
    atomic_write_json(out / "demo_results.json", results)
    atomic_write_text(out / "demo_results.md", table)
    plot_results(results, out / "demo_plot.png")
    return results


def results_table(results: dict[str, Any]) -> str:
    """Markdown: one row per dataset, zero-shot then CoOp at each shot count (test accuracy, %), then
    the CoCoOp / UPL / LoCoOp tables when they ran."""
    shots = results["shots"]
    headers = ["dataset", "classes", "zero-shot", *[f"CoOp {k}-shot" for k in shots]]
    rows = [[r["dataset"], r["classes"], r["zeroshot"], *[r["coop"][k] for k in shots]] for r in results["rows"]]
    if len(rows) > 1:
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(2, len(headers))]
        rows.append(["average", "", *mean])
    table = markdown_table(headers, rows)
    if results.get("methods"):
        from vlprompt.cli.demo_methods import method_tables

        table += "\n" + method_tables(results["methods"])
    return table


def plot_results(results: dict[str, Any], path: Path) -> None:
    """CoOp's gain over zero-shot CLIP vs shots per dataset (CoOp's main figure as deltas), one y scale.

    The demo runs one seed: each shot count is a point, not joined into a trend line (seed-to-seed spread at
    1-4 shots is several points; ``vlprompt sweep`` + ``vlprompt report`` draw mean ± std over seeds).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    ncols = min(3, len(rows))
    nrows = -(-len(rows) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows + 0.6), squeeze=False, sharey=True)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    shots = results["shots"]
    for ax, row in zip(axes.flat, rows):
        ax.axhline(0.0, ls="--", color="gray", label="zero-shot CLIP")
        ax.plot(shots, [row["coop"][k] - row["zeroshot"] for k in shots], "o", ls="none", label="CoOp (one seed)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_title(f"{row['dataset']} ({row['classes']} classes; zero-shot {row['zeroshot']:.1f}%)", fontsize=9)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("CoOp - zero-shot (points)")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"vlprompt demo: {results['model']} ({results['pretrained']}), seed {results['seed']}: test "
                 "accuracy gain over zero-shot CLIP\n(one seed: points, not a trend)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
