"""``vlprompt report RUNS_DIR``: tables (Markdown, CSV, JSON) and plots from a folder of runs.

Everything below ``RUNS_DIR`` is found by file name, so a sweep's folder, a few hand-made run folders
or a mix of both work alike:

* **Few-shot** (every ``metrics.json``): test accuracy mean ± std over seeds, one table per method and
  backbone with datasets as rows, shots as columns and an average row (CoOp's layout); zero-shot runs
  appear as their own method and as a dashed line in the plots.
* **Protocols** (``base2new_results.json``, ``dg_results.json``, ``xd_results.json``, each already a
  mean ± std over its seeds): one row per method, backbone and dataset; base-to-new also gets an average
  row per method (H of the average row = harmonic mean of the averaged base and new, as CoCoOp's Table 1).
* **OOD detection** (``ood_results.json`` of ``vlprompt ood``, one per seed): FPR95↓ / AUROC↑ / AUPR↑ per
  OOD set and their average, mean ± std over seeds, one table per method, backbone, ID dataset, shots
  (the run's ``shots``, else a ``<k>shots`` folder of a sweep's layout; unknown: runs of all shot counts
  together) and score (MCM, GL-MCM, ...).
* **Comparison** (when the folder holds several methods of one backbone): rows dataset, columns method,
  for few-shot at each shot count, for base-to-new H and for the OOD averages.
* **Published numbers** (``--paper cocoop|locoop|upl|all`` or ``--paper-file``): a ``paper`` value next to
  ours for every (method, dataset, setting) listed in :mod:`vlprompt.report.papers` (same backbone
  preferred; the paper's backbone is shown): protocol columns (``base2new`` / ``dg``), FPR95 / AUROC in
  the OOD tables (``ood``: same method, score, ID dataset, OOD set and shots) and accuracy in the
  few-shot table of UPL runs (``unsupervised``).

Written to the output folder (default ``RUNS_DIR``):

* ``report.md``: all tables and links to the plots; ``report.json``: the same numbers.
* ``report.csv`` (few-shot: method, backbone, dataset, shots, mean, std, seeds),
  ``report_protocols.csv`` (one row per protocol, method, backbone, dataset and column, with the paper
  value), ``report_ood.csv`` (one row per method, backbone, ID dataset, shots, score, OOD set and metric,
  with the paper value).
* Plots, PNG + SVG: ``report_fewshot`` (accuracy vs shots), ``report_base2new`` (base / new / H bars per
  method, per dataset and averaged; paper values as markers), ``report_ood_hist_<method>_<backbone>_<id>``
  (ID vs each OOD set score histograms of the lowest seed, from its ``ood_scores.json``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.core.errors import VlpromptError
from vlprompt.core.io import atomic_write_json, atomic_write_text
from vlprompt.core.tables import markdown_table
from vlprompt.report.papers import PaperEntry, averaged_datasets, find_entry, load_paper_results, select_papers

FewKey = tuple[str, str, str, int]  # (method, backbone, dataset, shots)
OodKey = tuple[str, str, str, int | None]  # (method, backbone, ID dataset, shots or None when unknown)
PROTOCOL_KINDS = ("base2new", "dg", "xd")
OOD_METRICS = (("fpr95", "FPR95↓"), ("auroc", "AUROC↑"), ("aupr", "AUPR↑"))
SCORE_NAMES = {"mcm": "MCM", "glmcm": "GL-MCM", "maxlogit": "max-logit", "energy": "energy"}
PAPER_OOD_METRICS = (("fpr95", "FPR95"), ("auroc", "AUROC"))  # what LoCoOp's table reports
UNSUPERVISED_METHODS = ("upl",)  # few-shot table runs compared with a paper's ``unsupervised`` setting


# ------------------------------------------------------------------------------------ helpers
def _ms(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _pm(values: Sequence[float]) -> str:
    mean, std = _ms(values)
    return f"{mean:.2f} ± {std:.2f}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _hm(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _read_json(path: Path, skipped: list[str]) -> Any:
    """The file's JSON, or None (and the path noted in ``skipped``) when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        skipped.append(str(path))
        return None


def _model(raw: Any) -> str:
    return str(raw.get("model", "?")) if isinstance(raw, dict) else "?"


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-")


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ collection
def collect_fewshot(root: Path) -> dict[FewKey, list[float]]:
    """(method, backbone, dataset, shots) -> test accuracies of every seed found."""
    groups: dict[FewKey, list[float]] = defaultdict(list)
    for path in sorted(root.rglob("metrics.json")):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            key = (str(m["method"]), _model(m.get("backbone")), str(m["dataset"]), int(m["shots"]))
            groups[key].append(float(m["test"]["accuracy"]))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a finished run's metrics (unreadable, a folder, another layout)
    return dict(groups)


def collect_protocols(root: Path, skipped: list[str]) -> list[dict[str, Any]]:
    """Every ``<kind>_results.json`` below ``root`` (kind, method, backbone, dataset, columns, summary, seeds)."""
    found = []
    for kind in PROTOCOL_KINDS:
        for path in sorted(root.rglob(f"{kind}_results.json")):
            r = _read_json(path, skipped)
            try:
                cols = [str(c) for c in r["columns"]]
                summary = {c: (float(r["summary"][c]["mean"]), float(r["summary"][c]["std"])) for c in cols}
                found.append({"kind": kind, "method": str(r["method"]), "backbone": _model(r.get("backbone")),
                              "dataset": str(r["dataset"]), "columns": cols, "summary": summary,
                              "seeds": list(r.get("seeds", [])), "path": str(path)})
            except (KeyError, TypeError, ValueError, AttributeError):
                if r is not None:
                    skipped.append(str(path))
    return found


def _ood_shots(r: dict[str, Any], path: Path, root: Path) -> int | None:
    """The run's shot count: its ``shots`` field (written by ``vlprompt ood`` for a learned prompt), else a
    ``<k>shots`` folder of a sweep's layout (zero-shot runs, older results), else None."""
    if isinstance(r.get("shots"), int) and not isinstance(r["shots"], bool):
        return int(r["shots"])
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError:
        parts = path.parent.parts
    found = [int(m.group(1)) for part in parts if (m := re.fullmatch(r"(\d+)shots", part))]
    return found[-1] if found else None


def _ood_order(item: tuple[OodKey, Any]) -> tuple[Any, ...]:
    key = item[0]
    return (*key[:3], -1 if key[3] is None else key[3])


def _ood_name(key: OodKey) -> str:
    """``locoop|ViT-B-16|imagenet`` (+ ``|16shots`` when the shots are known): the report.json key."""
    return "|".join(key[:3]) + ("" if key[3] is None else f"|{key[3]}shots")


def collect_ood(root: Path, skipped: list[str]) -> dict[OodKey, list[dict[str, Any]]]:
    """(method, backbone, ID dataset, shots) -> the ``ood_results.json`` of each seed (with ``_folder`` added)."""
    groups: dict[OodKey, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(root.rglob("ood_results.json")):
        r = _read_json(path, skipped)
        if not (isinstance(r, dict) and isinstance(r.get("per_set"), dict) and isinstance(r.get("average"), dict)
                and isinstance(r.get("scores"), list) and r.get("method") and r.get("id_dataset")):
            if r is not None:
                skipped.append(str(path))
            continue
        r["_folder"] = str(path.parent)
        groups[(str(r["method"]), _model(r.get("backbone")), str(r["id_dataset"]), _ood_shots(r, path, root))
               ].append(r)
    for runs in groups.values():
        runs.sort(key=lambda r: (r.get("seed") is None, r.get("seed") or 0, r["_folder"]))
    return dict(groups)


# ------------------------------------------------------------------------------------ few-shot
def fewshot_tables(groups: dict[FewKey, list[float]], paper: Sequence[PaperEntry] | None = None
                   ) -> tuple[str, list[list[Any]], dict]:
    """Markdown per (method, backbone), CSV rows and a JSON summary.

    With ``paper``, the tables of UPL runs (:data:`UNSUPERVISED_METHODS`) get ``paper`` and ``paper source``
    columns: the published ``unsupervised`` accuracy of the same method and dataset (the paper's average
    only next to our average over the same datasets).
    """
    by_method: dict[tuple[str, str], dict[tuple[str, int], list[float]]] = defaultdict(dict)
    for (method, bb, ds, k), accs in groups.items():
        by_method[(method, bb)][(ds, k)] = accs
    md, rows, js = [], [["method", "backbone", "dataset", "shots", "mean", "std", "seeds"]], {}
    for (method, bb), cells in sorted(by_method.items()):
        datasets = sorted({d for d, _ in cells})
        shots = sorted({k for _, k in cells})
        with_paper = paper is not None and method in UNSUPERVISED_METHODS
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
            if with_paper:
                row += _unsupervised_paper(paper, method, bb, ds, set(datasets), js)
            table.append(row)
        if len(datasets) > 1:
            avg: list[Any] = ["average"]
            for k in shots:
                per = [statistics.fmean(cells[(d, k)]) for d in datasets if (d, k) in cells]
                avg.append(f"{statistics.fmean(per):.2f}" if len(per) == len(datasets) else "-")
            if with_paper:
                avg += _unsupervised_paper(paper, method, bb, "average", set(datasets), js)
            table.append(avg)
        head = ["dataset", *[f"{k} shots" for k in shots]] + (["paper", "paper source"] if with_paper else [])
        md.append(f"### {method} ({bb}): test accuracy %, mean ± std over seeds\n\n" + markdown_table(head, table))
    return "\n".join(md), rows, js


def _unsupervised_paper(paper: Sequence[PaperEntry] | None, method: str, bb: str, ds: str, our_datasets: set[str],
                        js: dict) -> list[str]:
    """The ``paper`` and ``paper source`` cells of one few-shot table row (recorded in ``js`` when found)."""
    entry = _paper_for(paper or [], "unsupervised", method, ds, bb, our_datasets)
    if entry is None or "accuracy" not in entry.values:
        return ["-", "-"]
    js.setdefault(f"{method}|{bb}", {}).setdefault(ds, {})["paper"] = {
        "ref": entry.label, "paper_method": entry.paper_method, "accuracy": entry.values["accuracy"]}
    return [_fmt(entry.values["accuracy"]), f"{entry.label} ({entry.paper_method or entry.method})"]


def _fewshot_cell(groups: dict[FewKey, list[float]], method: str, bb: str, ds: str, k: int) -> list[float] | None:
    """Accuracies of one cell; zero-shot (which has no shots) falls back to its smallest shot count."""
    if (method, bb, ds, k) in groups:
        return groups[(method, bb, ds, k)]
    if method == "zeroshot":
        own = sorted(s for m, b, d, s in groups if (m, b, d) == (method, bb, ds))
        return groups[(method, bb, ds, own[0])] if own else None
    return None


def fewshot_comparison(groups: dict[FewKey, list[float]]) -> tuple[str, dict]:
    """Per backbone with several methods and per shot count: rows dataset, columns method (mean ± std)."""
    md, js = [], {}
    for bb in sorted({b for _, b, _, _ in groups}):
        methods = sorted({m for m, b, _, _ in groups if b == bb})
        if len(methods) < 2:
            continue
        datasets = sorted({d for _, b, d, _ in groups if b == bb})
        for k in sorted({s for m, b, _, s in groups if b == bb and m != "zeroshot"} or {0}):
            table, per_method = [], defaultdict(list)
            for ds in datasets:
                row: list[Any] = [ds]
                for m in methods:
                    cell = _fewshot_cell(groups, m, bb, ds, k)
                    row.append(_pm(cell) if cell else "-")
                    if cell:
                        per_method[m].append(statistics.fmean(cell))
                        js.setdefault(bb, {}).setdefault(str(k), {}).setdefault(ds, {})[m] = _ms(cell)[0]
                table.append(row)
            if len(datasets) > 1:
                table.append(["average", *[f"{statistics.fmean(per_method[m]):.2f}"
                                           if len(per_method[m]) == len(datasets) else "-" for m in methods]])
            md.append(f"### few-shot, {k} shots ({bb}): test accuracy %, mean ± std over seeds\n\n"
                      + markdown_table(["dataset", *methods], table))
    return "\n".join(md), js


# ------------------------------------------------------------------------------------ protocols
def _paper_for(paper: Sequence[PaperEntry], kind: str, method: str, dataset: str, bb: str,
               our_datasets: set[str] | None = None, **match: Any) -> PaperEntry | None:
    """The published entry for a row; an ``average`` row only matches when it averages the same datasets.

    ``match``: ``shots`` / ``score`` / ``id_dataset`` for :func:`~vlprompt.report.papers.find_entry`.
    """
    entry = find_entry(paper, kind, method, dataset, bb, **match)
    if entry is not None and dataset == "average" and averaged_datasets(paper, entry) != our_datasets:
        return None
    return entry


def base2new_averages(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, backbone) with several datasets: average base and new, H of the averages."""
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        if r["kind"] == "base2new":
            by[(r["method"], r["backbone"])].setdefault(r["dataset"], r)
    out = []
    for (method, bb), per in sorted(by.items()):
        if len(per) < 2:
            continue
        base = statistics.fmean(r["summary"]["base"][0] for r in per.values())
        new = statistics.fmean(r["summary"]["new"][0] for r in per.values())
        out.append({"kind": "base2new", "method": method, "backbone": bb, "dataset": "average",
                    "datasets": sorted(per), "columns": ["base", "new", "H"],
                    "summary": {"base": (base, None), "new": (new, None), "H": (_hm(base, new), None)}})
    return out


def _protocol_row(r: dict[str, Any], cols: list[str], paper: Sequence[PaperEntry] | None) -> tuple[list[Any], dict]:
    """One Markdown row (ours, then the paper's values and reference) and its JSON record."""
    cells = [f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f}" for m, s in (r["summary"][c] for c in cols)]
    row: list[Any] = [r["method"], r["backbone"], r["dataset"], len(r.get("seeds", [])) or "-", *cells]
    record = {k: r[k] for k in ("method", "backbone", "dataset") if k in r}
    record.update(seeds=r.get("seeds"), datasets=r.get("datasets"), path=r.get("path"),
                  summary={c: {"mean": r["summary"][c][0], "std": r["summary"][c][1]} for c in cols})
    if paper is not None:
        entry = _paper_for(paper, r["kind"], r["method"], r["dataset"], r["backbone"], set(r.get("datasets") or []))
        values = entry.values if entry else {}
        row += [_fmt(values.get(c)) for c in cols] + [entry.label if entry else "-"]
        record["paper"] = {"ref": entry.label, "values": values} if entry else None
    return row, record


def protocol_section(results: list[dict[str, Any]], paper: Sequence[PaperEntry] | None
                     ) -> tuple[str, list[list[Any]], dict]:
    """Markdown tables (one per protocol and column set), long-format CSV rows and JSON records."""
    md, js = [], defaultdict(list)
    rows: list[list[Any]] = [["protocol", "method", "backbone", "dataset", "column", "mean", "std", "seeds",
                              "paper", "paper_ref"]]
    everything = results + base2new_averages(results)
    for kind in PROTOCOL_KINDS:
        by_cols: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for r in everything:
            if r["kind"] == kind:
                by_cols[tuple(r["columns"])].append(r)
        for cols, group in by_cols.items():
            group.sort(key=lambda r: (r["method"], r["backbone"], r["dataset"] == "average", r["dataset"]))
            table = []
            for r in group:
                row, record = _protocol_row(r, list(cols), paper)
                table.append(row)
                js[kind].append(record)
                ref = record.get("paper") or {}
                for c in cols:
                    mean, std = r["summary"][c]
                    rows.append([kind, r["method"], r["backbone"], r["dataset"], c, round(mean, 4),
                                 "" if std is None else round(std, 4), len(r.get("seeds") or []) or "",
                                 (ref.get("values") or {}).get(c, ""), ref.get("ref", "")])
            head = ["method", "backbone", "dataset", "seeds", *cols]
            if paper is not None:
                head += [f"paper {c}" for c in cols] + ["paper source"]
            note = " (average row: H of the averaged base and new)" if kind == "base2new" else ""
            md.append(f"### {kind}: test accuracy %, mean ± std over seeds{note}\n\n" + markdown_table(head, table))
    return "\n".join(md), rows, dict(js)


def base2new_comparison(results: list[dict[str, Any]], paper: Sequence[PaperEntry] | None) -> tuple[str, dict]:
    """Per backbone with several methods: rows dataset (+ average), columns method's H (+ the paper's H)."""
    everything = [r for r in results + base2new_averages(results) if r["kind"] == "base2new"]
    md, js = [], {}
    for bb in sorted({r["backbone"] for r in everything}):
        cells = {(r["method"], r["dataset"]): r for r in reversed(everything) if r["backbone"] == bb}
        methods = sorted({m for m, _ in cells})
        if len(methods) < 2:
            continue
        datasets = sorted({d for _, d in cells if d != "average"}) + (["average"] if any(
            d == "average" for _, d in cells) else [])
        head, table = ["dataset", *methods], []
        if paper is not None:
            head += [f"{m} (paper)" for m in methods]
        for ds in datasets:
            row: list[Any] = [ds]
            for m in methods:
                r = cells.get((m, ds))
                mean, std = r["summary"]["H"] if r else (None, None)
                row.append("-" if mean is None else (f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"))
                if mean is not None:
                    js.setdefault(bb, {}).setdefault(ds, {})[m] = mean
            if paper is not None:
                for m in methods:
                    r = cells.get((m, ds))
                    entry = _paper_for(paper, "base2new", m, ds, bb, set(r.get("datasets") or []) if r else None)
                    row.append(_fmt(entry.values.get("H")) if entry else "-")
            table.append(row)
        md.append(f"### base2new H ({bb}): harmonic mean of base and new accuracy %\n\n" + markdown_table(head, table))
    return "\n".join(md), js


# ------------------------------------------------------------------------------------ OOD
def _ood_values(runs: list[dict[str, Any]], score: str, ood_set: str | None, metric: str) -> list[float]:
    """One metric of every run (``ood_set`` None: the run's average over its OOD sets)."""
    out = []
    for r in runs:
        per = r["average"] if ood_set is None else r["per_set"].get(ood_set, {})
        value = per.get(score, {}).get(metric)
        if isinstance(value, (int, float)):
            out.append(float(value))
    return out


def _ood_sets(runs: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in runs:
        names += [n for n in r["per_set"] if n not in names]
    return names


def _ood_scores(runs: list[dict[str, Any]]) -> list[str]:
    return [s for s in runs[0]["scores"] if all(s in r["scores"] for r in runs)]


def _ood_paper(paper: Sequence[PaperEntry], key: OodKey, score: str, ood_set: str | None,
               our_sets: list[str]) -> PaperEntry | None:
    """The published OOD row for one of our rows (same method, score, ID dataset, OOD set and shots)."""
    method, bb, id_ds, shots = key
    return _paper_for(paper, "ood", method, ood_set or "average", bb, set(our_sets), shots=shots, score=score,
                      id_dataset=id_ds)


def _ood_ref(entry: PaperEntry) -> str:
    """``locoop Table 1, ViT-B/16 (LoCoOp_GL, 16-shot)``."""
    detail = ", ".join(x for x in (entry.paper_method, None if entry.shots is None else f"{entry.shots}-shot") if x)
    return f"{entry.label} ({detail})" if detail else entry.label


def ood_section(groups: dict[OodKey, list[dict[str, Any]]], paper: Sequence[PaperEntry] | None = None
                ) -> tuple[str, list[list[Any]], dict]:
    """One table per (method, backbone, ID dataset, shots, score): rows OOD sets + average, mean ± std over seeds.

    With ``paper``: ``paper FPR95`` / ``paper AUROC`` / ``paper source`` columns from the ``ood`` entries.
    """
    md, js = [], {}
    rows: list[list[Any]] = [["method", "backbone", "id_dataset", "shots", "score", "ood_set", "metric", "mean",
                              "std", "seeds", "paper", "paper_ref"]]
    for key, runs in sorted(groups.items(), key=_ood_order):
        method, bb, id_ds, shots = key
        seeds = [r.get("seed") for r in runs]
        entry: dict[str, Any] = {"seeds": seeds, "folders": [r["_folder"] for r in runs], "shots": shots,
                                 "scores": {}}
        sets = _ood_sets(runs)
        for score in _ood_scores(runs):
            table = []
            for ood_set in [*sets, None]:
                name = ood_set or "average"
                ref = _ood_paper(paper, key, score, ood_set, sets) if paper is not None else None
                if ref is not None:
                    entry.setdefault("paper", {}).setdefault(score, {})[name] = {"ref": _ood_ref(ref),
                                                                                "values": ref.values}
                row: list[Any] = [name]
                for metric, _ in OOD_METRICS:
                    values = _ood_values(runs, score, ood_set, metric)
                    row.append(_pm(values) if values else "-")
                    if values:
                        mean, std = _ms(values)
                        rows.append([method, bb, id_ds, "" if shots is None else shots, score, name, metric,
                                     round(mean, 4), round(std, 4), len(values),
                                     ref.values.get(metric, "") if ref else "", _ood_ref(ref) if ref else ""])
                        entry["scores"].setdefault(score, {}).setdefault(name, {})[metric] = {
                            "mean": mean, "std": std, "n": len(values)}
                if paper is not None:
                    row += [_fmt(ref.values.get(m) if ref else None) for m, _ in PAPER_OOD_METRICS]
                    row.append(_ood_ref(ref) if ref else "-")
                table.append(row)
            seed_text = ", ".join("?" if s is None else str(s) for s in seeds)
            head = ["OOD set", *[label for _, label in OOD_METRICS]]
            if paper is not None:
                head += [f"paper {label}" for _, label in PAPER_OOD_METRICS] + ["paper source"]
            shot_text = "" if shots is None else f", {shots}-shot"
            md.append(f"### OOD: {method} ({bb}{shot_text}), ID {id_ds}, score {SCORE_NAMES.get(score, score)}: %, "
                      f"mean ± std over {len(runs)} run(s) (seeds {seed_text})\n\n" + markdown_table(head, table))
        js[_ood_name(key)] = entry
    return "\n".join(md), rows, js


def ood_comparison(groups: dict[OodKey, list[dict[str, Any]]]) -> str:
    """Per (backbone, ID dataset) with several methods or shot counts: average FPR95 / AUROC over OOD sets."""
    md = []
    for bb, id_ds in sorted({(k[1], k[2]) for k in groups}):
        keys = [k for k, _ in sorted(groups.items(), key=_ood_order) if (k[1], k[2]) == (bb, id_ds)]
        if len(keys) < 2:
            continue
        table = []
        for key in keys:
            runs = groups[key]
            label = key[0] if key[3] is None else f"{key[0]} ({key[3]}-shot)"
            for score in _ood_scores(runs):
                table.append([label, SCORE_NAMES.get(score, score), *[
                    _pm(v) if (v := _ood_values(runs, score, None, metric)) else "-" for metric, _ in OOD_METRICS]])
        md.append(f"### OOD average over OOD sets ({bb}, ID {id_ds}): %, mean ± std over seeds\n\n"
                  + markdown_table(["method", "score", *[label for _, label in OOD_METRICS]], table))
    return "\n".join(md)


# ------------------------------------------------------------------------------------ plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path_stem: Path) -> list[Path]:
    out = [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]
    for p in out:
        fig.savefig(p, dpi=110)
    _pyplot().close(fig)
    return out


def _grid(n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_fewshot(groups: dict[FewKey, list[float]], path_stem: Path) -> list[Path]:
    """Accuracy vs shots, one panel per dataset plus the average; zero-shot as a dashed line."""
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
            if method == "zeroshot":
                ax.axhline(statistics.fmean(y for y in ys if y == y), ls="--", color="gray", label="zero-shot")
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
    return _save(fig, path_stem)


def plot_base2new(results: list[dict[str, Any]], paper: Sequence[PaperEntry] | None, path_stem: Path) -> list[Path]:
    """Grouped bars (base, new, H; std as error bars) per method, one panel per dataset and the average."""
    rows = [r for r in results + base2new_averages(results) if r["kind"] == "base2new"]
    backbones = {r["backbone"] for r in rows}
    datasets = sorted({r["dataset"] for r in rows if r["dataset"] != "average"})
    panels = datasets + (["average"] if any(r["dataset"] == "average" for r in rows) else [])
    fig, axes = _grid(len(panels), 4.2, 3.4)
    colors = {"base": "tab:blue", "new": "tab:orange", "H": "tab:green"}
    for ax, ds in zip(axes, panels):
        here = sorted((r for r in rows if r["dataset"] == ds), key=lambda r: (r["method"], r["backbone"]))
        for j, col in enumerate(("base", "new", "H")):
            xs = [i + (j - 1) * 0.27 for i in range(len(here))]
            means = [r["summary"][col][0] for r in here]
            errs = [r["summary"][col][1] or 0.0 for r in here]
            ax.bar(xs, means, width=0.27, yerr=errs, capsize=2, color=colors[col], label=col)
            if paper is not None:
                ref = [_paper_for(paper, "base2new", r["method"], ds, r["backbone"], set(r.get("datasets") or []))
                       for r in here]
                pts = [(x, e.values[col]) for x, e in zip(xs, ref) if e and col in e.values]
                if pts:
                    ax.plot(*zip(*pts), "kD", ms=4, mfc="white", label="paper" if j == 0 else None)
        ax.set_xticks(range(len(here)))
        ax.set_xticklabels([r["method"] + (f"\n{r['backbone']}" if len(backbones) > 1 else "") for r in here],
                           fontsize=8)
        ax.set_title(ds)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path_stem)


def load_ood_scores(run: dict[str, Any]) -> dict[str, Any] | None:
    """The per-image scores saved next to an ``ood_results.json`` (None when that run has none)."""
    path = Path(run["_folder"]) / "ood_scores.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("id"), dict) and isinstance(
        data.get("ood"), dict) else None


def plot_ood_histograms(key: OodKey, runs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """ID vs each OOD set score histograms (rows: scores, columns: OOD sets) of the lowest seed with scores."""
    found = next(((r, s) for r in runs if (s := load_ood_scores(r)) is not None), None)
    if found is None:
        return []
    run, data = found
    kinds = [k for k in data["id"] if all(k in per for per in data["ood"].values())]
    names = list(data["ood"])
    if not kinds or not names:
        return []
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(len(kinds), len(names), figsize=(3.6 * len(names), 2.8 * len(kinds)), squeeze=False)
    for i, kind in enumerate(kinds):
        for j, name in enumerate(names):
            ax = axes[i][j]
            ids, oods = data["id"][kind], data["ood"][name][kind]
            bins = np.histogram_bin_edges(np.r_[ids, oods], bins=40)  # the same bins for both
            ax.hist(ids, bins=bins, alpha=0.6, density=True, label=f"ID ({key[2]})")
            ax.hist(oods, bins=bins, alpha=0.6, density=True, label=name)
            ax.set_title(f"{SCORE_NAMES.get(kind, kind)}: ID vs {name}", fontsize=9)
            ax.legend(fontsize=7)
    shot_text = "" if key[3] is None else f", {key[3]}-shot"
    fig.suptitle(f"{key[0]} ({key[1]}{shot_text}), seed {run.get('seed', '?')}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir / _slug("report_ood_hist", *key[:3], *([] if key[3] is None else [f"{key[3]}shots"])))


# ------------------------------------------------------------------------------------ report
def _paper_entries(papers: Sequence[str], paper_file: str | Path | None) -> list[PaperEntry] | None:
    """Published entries to show (None: no paper columns)."""
    if not papers and not paper_file:
        return None
    entries = load_paper_results(paper_file)
    return select_papers(entries, papers) if papers else entries


def _section(title: str, *parts: str) -> str:
    body = "\n".join(p for p in parts if p)
    return f"## {title}\n\n{body}" if body else ""


def _plots_markdown(plots: list[Path], out: Path) -> str:
    return "\n".join(f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots if p.suffix == ".png")


def make_report(root: str | Path, output: str | Path | None = None, *, papers: Sequence[str] = (),
                paper_file: str | Path | None = None) -> dict[str, Any]:
    """Write report.md / .json / .csv files and plots for the runs under ``root`` (see the module docstring).

    Args:
        root: folder searched recursively for run results.
        output: where the report files go (default ``root``).
        papers: published results to show next to ours (names in the paper data, or ``all``).
        paper_file: a paper-results JSON of one's own (default: the shipped ``paper_results.json``).
    """
    root = Path(root)
    if not root.is_dir():
        raise VlpromptError(f"runs folder '{root}' does not exist")
    out = Path(output) if output else root
    paper = _paper_entries(papers, paper_file)
    skipped: list[str] = []
    groups = collect_fewshot(root)
    protocols = collect_protocols(root, skipped)
    ood = collect_ood(root, skipped)
    if not groups and not protocols and not ood:
        raise VlpromptError(f"no finished runs (metrics.json), protocol results (*_results.json) or OOD results "
                            f"(ood_results.json) found under '{root}'")
    out.mkdir(parents=True, exist_ok=True)
    md_few, few_rows, few_js = fewshot_tables(groups, paper)
    md_proto, proto_rows, proto_js = protocol_section(protocols, paper)
    md_ood, ood_rows, ood_js = ood_section(ood, paper)
    md_cmp_few, cmp_few_js = fewshot_comparison(groups)
    md_cmp_b2n, cmp_b2n_js = base2new_comparison(protocols, paper)
    md_cmp_ood = ood_comparison(ood)
    plots: list[Path] = []
    if groups:
        plots += plot_fewshot(groups, out / "report_fewshot")
    if any(r["kind"] == "base2new" for r in protocols):
        plots += plot_base2new(protocols, paper, out / "report_base2new")
    for key, runs in sorted(ood.items(), key=_ood_order):
        plots += plot_ood_histograms(key, runs, out)
    matched = (sum(1 for records in proto_js.values() for rec in records if rec.get("paper"))
               + sum(len(per) for e in ood_js.values() for per in e.get("paper", {}).values())
               + sum(1 for per in few_js.values() for cell in per.values() if "paper" in cell))
    paper_note = ""
    if paper is not None:
        refs = sorted({f"{e.label} ({e.setting})" for e in paper})
        paper_note = (f"Published numbers from: {'; '.join(refs)}. {matched} of our rows have a published "
                      "counterpart (same method, dataset and setting; for OOD also score, ID dataset and "
                      "shots).\n" if matched else
                      f"No published numbers match these runs (paper data covers: {'; '.join(refs)}).\n")
    text = "\n".join(p for p in (
        f"# Results in {root}\n",
        paper_note,
        _section("Few-shot", md_few),
        _section("Comparison of methods", md_cmp_few, md_cmp_b2n, md_cmp_ood),
        _section("Protocols", md_proto),
        _section("OOD detection", md_ood),
        _section("Plots", _plots_markdown(plots, out)),
        _section("Ignored files (unreadable or not in the expected format)", "\n".join(f"- {s}" for s in skipped)),
    ) if p)
    files = [out / n for n in ("report.md", "report.json", "report.csv")]
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.csv", _csv(few_rows))
    if protocols:
        files.append(out / "report_protocols.csv")
        atomic_write_text(files[-1], _csv(proto_rows))
    if ood:
        files.append(out / "report_ood.csv")
        atomic_write_text(files[-1], _csv(ood_rows))
    summary = {"fewshot": few_js, "protocols": proto_js, "ood": ood_js,
               "comparison": {"fewshot": cmp_few_js, "base2new_H": cmp_b2n_js},
               "paper": {"papers": sorted({e.paper for e in paper}), "matched_rows": matched} if paper is not None
               else None,
               "plots": [str(p) for p in plots], "ignored": skipped}
    atomic_write_json(out / "report.json", summary)
    return {"markdown": text, "files": [str(f) for f in files], **summary}
