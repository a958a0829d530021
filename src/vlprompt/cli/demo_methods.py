"""The second part of ``vlprompt demo``: CoCoOp, UPL and LoCoOp on the embedded world, one seed each.

* **CoCoOp** (Zhou et al., CVPR 2022), base-to-new on ``world_positions``: zero-shot, CoOp and CoCoOp
  trained on the first ceil(n/2) classes (16 shots), tested on base and new classes; H = harmonic mean.
* **UPL** (Huang et al., 2022), unsupervised on ``world_positions``: zero-shot pseudo-labels of the
  unlabeled train split, top-16 most confident per class, CoOp-style prompts trained on them.
* **LoCoOp** (Miyai et al., NeurIPS 2023), few-shot OOD detection: ID ``world_shapes``, OOD = the
  world's OOD sets; zero-shot, CoOp and LoCoOp (16 shots), MCM and GL-MCM scores.

CoCoOp uses its paper's recipe (10 epochs at batch size 1); CoOp / UPL / LoCoOp run 50 epochs (fewer
than their papers, for a CPU); all train on cached features (no augmentation). Every run is an ordinary run folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vlprompt.config import ExperimentConfig, config_from_dict
from vlprompt.core.tables import markdown_table

B2N_DATASET = "world_positions"
UPL_DATASET = "world_positions"
OOD_ID = "world_shapes"
OOD_SETS = ("world_ood_shapes", "world_ood_novel", "world_ood_textures")
_LONG = {"max_epoch": 50, "batch_size": 32}
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "zeroshot": ({"name": "zeroshot"}, {}),
    "coop": ({"name": "coop", "n_ctx": 16}, _LONG),
    "cocoop": ({"name": "cocoop", "n_ctx": 4, "ctx_init": "a photo of a"}, {"max_epoch": 10, "batch_size": 1}),
    "upl": ({"name": "upl", "n_ctx": 16, "n_prompts": 16}, _LONG),
    "locoop": ({"name": "locoop", "n_ctx": 16, "lambda_value": 0.25}, _LONG),
}


def world_config(method: dict[str, Any], optim: dict[str, Any], dataset: str, *, model: str,
                 pretrained: str | None, seed: int = 1, device: str = "auto", out: Path | None = None,
                 shots: int = 16, **data: Any) -> ExperimentConfig:
    """A CPU-sized experiment on a world dataset: ``shots`` per class, no augmentation (cached features), quiet."""
    return config_from_dict({
        "method": method,
        "backbone": {"model": model, "pretrained": pretrained},
        "data": {"dataset": dataset, "shots": shots, "augment": False, "num_workers": 0, **data},
        "optim": optim,
        "train": {"seed": seed, "device": device, "progress": False, "tensorboard": False,
                  "output_dir": str(out) if out else ""},
    })


def _cfg(method: str, dataset: str, **kw: Any) -> ExperimentConfig:
    m, optim = METHODS[method]
    return world_config(m, optim, dataset, **kw)


SECTIONS = ("base2new", "upl", "ood")


def run_method_demo(out: Path, *, model: str, pretrained: str | None, seed: int, device: str,
                    log: Any = print, t0: float | None = None) -> dict[str, Any]:
    """Run the three sections into ``out`` (run folders below it); returns their rows (see module doc)."""
    t0 = time.time() if t0 is None else t0
    return {name: run_section(name, out, model=model, pretrained=pretrained, seed=seed, device=device, log=log,
                              t0=t0) for name in SECTIONS}


def run_section(name: str, out: Path, *, model: str, pretrained: str | None, seed: int, device: str,
                log: Any = print, t0: float | None = None) -> dict[str, Any]:
    """One section (``"base2new"``, ``"upl"`` or ``"ood"``) into ``out``: its results entry. The sections share
    nothing but the backbone, so ``vlprompt demo`` runs them in parallel worker processes."""
    t0 = time.time() if t0 is None else t0
    kw = {"model": model, "pretrained": pretrained, "seed": seed, "device": device}
    if name == "base2new":
        return _base2new(out, kw, log, t0)
    if name == "upl":
        return _upl(out, kw, log, t0)
    if name == "ood":
        return _ood(out, kw, log, t0)
    raise ValueError(f"unknown demo section {name!r}; one of {SECTIONS}")


def _base2new(out: Path, kw: dict[str, Any], log: Any, t0: float) -> dict[str, Any]:
    from vlprompt.tasks.protocols import base_to_new

    result: dict[str, Any] = {"dataset": B2N_DATASET, "rows": []}
    for method in ("zeroshot", "coop", "cocoop"):
        r = base_to_new(_cfg(method, B2N_DATASET, **kw), [kw["seed"]], out / "base2new" / method)["summary"]
        row = {"method": method, **{k: r[k]["mean"] for k in ("base", "new", "H")}}
        result["rows"].append(row)
        log(f"[{time.time() - t0:5.0f}s] base-to-new {B2N_DATASET} {method}: base {row['base']:.1f} "
            f"new {row['new']:.1f} H {row['H']:.1f}")
    return result


def _upl(out: Path, kw: dict[str, Any], log: Any, t0: float) -> dict[str, Any]:
    from vlprompt.engine.trainer import train
    from vlprompt.tasks.api import zeroshot
    from vlprompt.tasks.pseudo_label import pseudo_label

    pseudo = out / "upl" / "pseudo_labels.json"
    report = pseudo_label(_cfg("upl", UPL_DATASET, **kw), pseudo, top_k=16, progress=False)
    zs = zeroshot(_cfg("zeroshot", UPL_DATASET, **kw), progress=False)["accuracy"]
    upl = train(_cfg("upl", UPL_DATASET, out=out / "upl" / "run", fewshot_file=str(pseudo), **kw)).accuracy
    log(f"[{time.time() - t0:5.0f}s] UPL {UPL_DATASET}: zero-shot {zs:.1f}% -> UPL {upl:.1f}% "
        f"(no labels; pseudo-labels {report['pseudo_label_accuracy']:.1f}% right)")
    return {"dataset": UPL_DATASET, "pseudo_label_accuracy": report["pseudo_label_accuracy"],
            "rows": [{"method": "zeroshot", "labels": "none", "accuracy": zs},
                     {"method": "upl", "labels": "top-16 pseudo", "accuracy": upl}]}


def _ood(out: Path, kw: dict[str, Any], log: Any, t0: float) -> dict[str, Any]:
    from vlprompt.engine.trainer import train
    from vlprompt.tasks.ood import ood_evaluate

    result: dict[str, Any] = {"id": OOD_ID, "ood_sets": list(OOD_SETS), "rows": []}
    for method in ("zeroshot", "coop", "locoop"):
        run = out / "ood" / method
        cfg = _cfg(method, OOD_ID, out=run, **kw)
        prompt = None
        if method != "zeroshot":
            train(cfg)
            prompt = run / "prompt.safetensors"
        r = ood_evaluate(cfg, prompt, OOD_SETS, scores=("mcm", "glmcm"), progress=False, output_dir=run / "ood")
        row = {"method": method, "id_accuracy": r["id_accuracy"],
               **{f"{s}_{m}": r["average"][s][m] for s in ("mcm", "glmcm") for m in ("fpr95", "auroc")}}
        result["rows"].append(row)
        log(f"[{time.time() - t0:5.0f}s] OOD {method}: GL-MCM FPR95 {row['glmcm_fpr95']:.1f} "
            f"AUROC {row['glmcm_auroc']:.1f}")
    return result


def method_tables(results: dict[str, Any]) -> str:
    """Markdown of the three sections."""
    b2n, upl, ood = results["base2new"], results["upl"], results["ood"]
    parts = [
        f"Base-to-new on {b2n['dataset']} (CoCoOp's protocol; test accuracy %)\n\n"
        + markdown_table(["method", "base", "new", "H"], [[r["method"], r["base"], r["new"], r["H"]]
                                                          for r in b2n["rows"]]),
        f"Unsupervised on {upl['dataset']} (UPL; pseudo-labels {upl['pseudo_label_accuracy']:.1f}% right)\n\n"
        + markdown_table(["method", "labels used", "test accuracy"],
                         [[r["method"], r["labels"], r["accuracy"]] for r in upl["rows"]]),
        f"OOD detection (LoCoOp): ID {ood['id']}, OOD = mean over {', '.join(ood['ood_sets'])} (%)\n\n"
        + markdown_table(["method", "ID acc", "MCM FPR95↓", "MCM AUROC↑", "GL-MCM FPR95↓", "GL-MCM AUROC↑"],
                         [[r["method"], r["id_accuracy"], r["mcm_fpr95"], r["mcm_auroc"], r["glmcm_fpr95"],
                           r["glmcm_auroc"]] for r in ood["rows"]]),
    ]
    return "\n".join(parts)
