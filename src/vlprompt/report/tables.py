"""The report's tables, each built once as a :class:`~vlprompt.core.tables.Table` (rendered as Markdown in
``report.md``, as CSV in ``report*.csv`` and as JSON under ``tables`` in ``report.json``).

Every section builder returns its Markdown tables, the long-format CSV table where the section has one,
and the JSON summary ``report.json`` keeps under the section's key:

* :func:`fewshot_tables`: per (method, backbone), datasets x shots (mean ± std over seeds) + average;
* :func:`fewshot_comparison`: per backbone with several methods and per shot count, datasets x methods;
* :func:`protocol_section`: per protocol and column set, one row per method, backbone and dataset;
* :func:`base2new_comparison`: per backbone with several methods, datasets x methods' H;
* :func:`ood_section`: per (method, backbone, ID dataset, shots, score), OOD sets x FPR95 / AUROC / AUPR;
* :func:`ood_comparison`: per (backbone, ID dataset) with several methods or shot counts, the averages;
* :func:`ood_published`: per (backbone, ID dataset) with published OOD numbers for that ID dataset, our rows and
  every published row side by side, per OOD set and average;
* :func:`tta_section`: per backbone, one row per test-time method and target (accuracy, ECE, cost) + averages;
* :func:`tta_comparison`: per backbone with several test-time methods, targets x methods (accuracy / ECE).

With published numbers (``paper``, from :mod:`vlprompt.report.papers`) the tables get ``paper`` columns.
``backbone`` / ``bb`` is always the label of a :class:`~vlprompt.core.results.BackboneRecord` (the keys of
:mod:`vlprompt.report.collect`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from vlprompt.core.metrics import mean_std
from vlprompt.core.results import TRANSFER_PROTOCOLS
from vlprompt.core.tables import SCORE_LABELS, Table
from vlprompt.data.ood_sets import OOD_SETS, canonical_ood_set
from vlprompt.report.collect import (
    FewKey,
    OodKey,
    OodRun,
    ProtocolRow,
    TtaKey,
    TtaRun,
    base2new_averages,
    is_training_free,
    method_capabilities,
    ood_name,
    ood_order,
)
from vlprompt.report.papers import PaperEntry, averaged_datasets, paper_for

OOD_METRICS = (("fpr95", "FPR95↓"), ("auroc", "AUROC↑"), ("aupr", "AUPR↑"))
PAPER_OOD_METRICS = (("fpr95", "FPR95"), ("auroc", "AUROC"))  # what LoCoOp's table reports


# ------------------------------------------------------------------------------------ helpers

def shots_label(k: int) -> str:
    """A column / title label for ``k`` shots: ``1 shot``, ``16 shots``."""
    return f"{k} shot" if k == 1 else f"{k} shots"


def _pm(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _paper(paper: Sequence[PaperEntry], setting: str, method: str, dataset: str, bb: str,
           our_datasets: set[str] | None = None, **match: Any) -> PaperEntry | None:
    """:func:`~vlprompt.report.papers.paper_for`, told whether ``method`` is training-free."""
    return paper_for(paper, setting, method, dataset, bb, our_datasets, training_free=is_training_free(method),
                     **match)


# ------------------------------------------------------------------------------------ few-shot
def fewshot_tables(groups: dict[FewKey, list[float]], paper: Sequence[PaperEntry] | None = None
                   ) -> tuple[list[Table], Table, dict]:
    """Tables per (method, backbone), the ``report.csv`` table and a JSON summary.

    With ``paper``, the tables of unsupervised methods (UPL: registered with ``supervision="none"``) get
    ``paper`` and ``paper source`` columns: the published ``unsupervised`` accuracy of the same method and
    dataset (the paper's average only next to our average over the same datasets).
    """
    by_method: dict[tuple[str, str], dict[tuple[str, int], list[float]]] = defaultdict(dict)
    for (method, bb, ds, k), accs in groups.items():
        by_method[(method, bb)][(ds, k)] = accs
    tables: list[Table] = []
    long = Table("few-shot test accuracy %: one row per method, backbone, dataset and shots",
                 ["method", "backbone", "dataset", "shots", "mean", "std", "seeds"])
    js: dict = {}
    for (method, bb), cells in sorted(by_method.items()):
        datasets = sorted({d for d, _ in cells})
        shots = sorted({k for _, k in cells})
        with_paper = paper is not None and method_capabilities(method).unsupervised
        rows = []
        for ds in datasets:
            row: list[Any] = [ds]
            for k in shots:
                if (ds, k) in cells:
                    mean, std = mean_std(cells[(ds, k)])
                    row.append(f"{mean:.2f} ± {std:.2f}")
                    long.rows.append([method, bb, ds, k, round(mean, 4), round(std, 4), len(cells[(ds, k)])])
                    js.setdefault(f"{method}|{bb}", {}).setdefault(ds, {})[str(k)] = {
                        "mean": mean, "std": std, "seeds": len(cells[(ds, k)])}
                else:
                    row.append("-")
            if with_paper:
                row += _unsupervised_paper(paper, method, bb, ds, set(datasets), js)
            rows.append(row)
        if len(datasets) > 1:
            avg: list[Any] = ["average"]
            for k in shots:
                per = [statistics.fmean(cells[(d, k)]) for d in datasets if (d, k) in cells]
                avg.append(f"{statistics.fmean(per):.2f}" if len(per) == len(datasets) else "-")
            if with_paper:
                avg += _unsupervised_paper(paper, method, bb, "average", set(datasets), js)
            rows.append(avg)
        head = ["dataset", *[shots_label(k) for k in shots]] + (["paper", "paper source"] if with_paper else [])
        tables.append(Table(f"{method} ({bb}): test accuracy %, mean ± std over seeds", head, rows))
    return tables, long, js


def _unsupervised_paper(paper: Sequence[PaperEntry] | None, method: str, bb: str, ds: str, our_datasets: set[str],
                        js: dict) -> list[str]:
    """The ``paper`` and ``paper source`` cells of one few-shot table row (recorded in ``js`` when found)."""
    entry = _paper(paper or [], "unsupervised", method, ds, bb, our_datasets)
    if entry is None or "accuracy" not in entry.values:
        return ["-", "-"]
    js.setdefault(f"{method}|{bb}", {}).setdefault(ds, {})["paper"] = {
        "ref": entry.label, "paper_method": entry.paper_method, "accuracy": entry.values["accuracy"]}
    return [_fmt(entry.values["accuracy"]), f"{entry.label} ({entry.paper_method or entry.method})"]


def fewshot_cell(groups: dict[FewKey, list[float]], method: str, bb: str, ds: str, k: int) -> list[float] | None:
    """Accuracies of one cell; a training-free method (which has no shots) falls back to its smallest shot count."""
    if (method, bb, ds, k) in groups:
        return groups[(method, bb, ds, k)]
    if is_training_free(method):
        own = sorted(s for m, b, d, s in groups if (m, b, d) == (method, bb, ds))
        return groups[(method, bb, ds, own[0])] if own else None
    return None


def fewshot_comparison(groups: dict[FewKey, list[float]]) -> tuple[list[Table], dict]:
    """Per backbone with several methods and per shot count: rows dataset, columns method (mean ± std)."""
    tables: list[Table] = []
    js: dict[str, Any] = {}
    for bb in sorted({b for _, b, _, _ in groups}):
        methods = sorted({m for m, b, _, _ in groups if b == bb})
        if len(methods) < 2:
            continue
        datasets = sorted({d for _, b, d, _ in groups if b == bb})
        for k in sorted({s for m, b, _, s in groups if b == bb and not is_training_free(m)} or {0}):
            rows, per_method = [], defaultdict(list)
            for ds in datasets:
                row: list[Any] = [ds]
                for m in methods:
                    cell = fewshot_cell(groups, m, bb, ds, k)
                    row.append(_pm(cell) if cell else "-")
                    if cell:
                        per_method[m].append(statistics.fmean(cell))
                        js.setdefault(bb, {}).setdefault(str(k), {}).setdefault(ds, {})[m] = mean_std(cell)[0]
                rows.append(row)
            if len(datasets) > 1:
                rows.append(["average", *[f"{statistics.fmean(per_method[m]):.2f}"
                                          if len(per_method[m]) == len(datasets) else "-" for m in methods]])
            tables.append(Table(f"few-shot, {shots_label(k)} ({bb}): test accuracy %, mean ± std over seeds",
                                ["dataset", *methods], rows))
    return tables, js


# ------------------------------------------------------------------------------------ protocols
def _protocol_row(r: ProtocolRow, cols: list[str], paper: Sequence[PaperEntry] | None) -> tuple[list[Any], dict]:
    """One table row (ours, then the paper's values and reference) and its JSON record."""
    cells = [f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f}" for m, s in (r.summary[c] for c in cols)]
    row: list[Any] = [r.method, r.backbone, r.dataset, len(r.seeds or []) or "-", *cells]
    record: dict[str, Any] = {"method": r.method, "backbone": r.backbone, "dataset": r.dataset}
    record.update(seeds=r.seeds, datasets=r.datasets, path=r.path,
                  summary={c: {"mean": r.summary[c][0], "std": r.summary[c][1]} for c in cols})
    if paper is not None:
        entry = _paper(paper, r.kind, r.method, r.dataset, r.backbone, set(r.datasets or []))
        values = entry.values if entry else {}
        row += [_fmt(values.get(c)) for c in cols] + [entry.label if entry else "-"]
        record["paper"] = {"ref": entry.label, "values": values} if entry else None
    return row, record


def protocol_section(results: list[ProtocolRow], paper: Sequence[PaperEntry] | None
                     ) -> tuple[list[Table], Table, dict]:
    """Tables (one per protocol and column set), the long-format ``report_protocols.csv`` table, JSON records."""
    tables: list[Table] = []
    js: dict[str, list[dict]] = defaultdict(list)
    long = Table("protocols: one row per protocol, method, backbone, dataset and column",
                 ["protocol", "method", "backbone", "dataset", "column", "mean", "std", "seeds", "paper",
                  "paper_ref"])
    everything = results + base2new_averages(results)
    for kind in TRANSFER_PROTOCOLS:
        by_cols: dict[tuple[str, ...], list[ProtocolRow]] = defaultdict(list)
        for r in everything:
            if r.kind == kind:
                by_cols[tuple(r.columns)].append(r)
        for cols, group in by_cols.items():
            group.sort(key=lambda r: (r.method, r.backbone, r.dataset == "average", r.dataset))
            rows = []
            for r in group:
                row, record = _protocol_row(r, list(cols), paper)
                rows.append(row)
                js[kind].append(record)
                ref = record.get("paper") or {}
                for c in cols:
                    mean, std = r.summary[c]
                    long.rows.append([kind, r.method, r.backbone, r.dataset, c, round(mean, 4),
                                      "" if std is None else round(std, 4), len(r.seeds or []) or "",
                                      (ref.get("values") or {}).get(c, ""), ref.get("ref", "")])
            head = ["method", "backbone", "dataset", "seeds", *cols]
            if paper is not None:
                head += [f"paper {c}" for c in cols] + ["paper source"]
            note = " (average row: H of the averaged base and new)" if kind == "base2new" else ""
            tables.append(Table(f"{kind}: test accuracy %, mean ± std over seeds{note}", head, rows))
    return tables, long, dict(js)


def base2new_comparison(results: list[ProtocolRow], paper: Sequence[PaperEntry] | None) -> tuple[list[Table], dict]:
    """Per backbone with several methods: rows dataset (+ average), columns method's H (+ the paper's H)."""
    everything = [r for r in results + base2new_averages(results) if r.kind == "base2new"]
    tables: list[Table] = []
    js: dict[str, Any] = {}
    for bb in sorted({r.backbone for r in everything}):
        cells = {(r.method, r.dataset): r for r in reversed(everything) if r.backbone == bb}
        methods = sorted({m for m, _ in cells})
        if len(methods) < 2:
            continue
        datasets = sorted({d for _, d in cells if d != "average"}) + (["average"] if any(
            d == "average" for _, d in cells) else [])
        head, rows = ["dataset", *methods], []
        if paper is not None:
            head += [f"{m} (paper)" for m in methods]
        for ds in datasets:
            row: list[Any] = [ds]
            for m in methods:
                r = cells.get((m, ds))
                mean, std = r.summary["H"] if r else (None, None)
                row.append("-" if mean is None else (f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"))
                if mean is not None:
                    js.setdefault(bb, {}).setdefault(ds, {})[m] = mean
            if paper is not None:
                for m in methods:
                    r = cells.get((m, ds))
                    entry = _paper(paper, "base2new", m, ds, bb, set(r.datasets or []) if r else None)
                    row.append(_fmt(entry.values.get("H")) if entry else "-")
            rows.append(row)
        tables.append(Table(f"base2new H ({bb}): harmonic mean of base and new accuracy %", head, rows))
    return tables, js


def published_averages(results: list[ProtocolRow], paper: Sequence[PaperEntry] | None) -> tuple[list[Table], dict]:
    """Our base-to-new averages next to each paper's published average for the same method, when the two
    average *different* datasets (e.g. the world's vs the papers' 11): the papers' tables side by side
    with ours, as a reference point, not a like-for-like comparison (that one is in the protocol table).

    One table per backbone: rows = methods, columns = our base / new / H, then ``<paper> base / new / H``
    for every selected paper that publishes an average for that method.
    """
    if paper is None:
        return [], {}
    ours = [r for r in base2new_averages(results) if r.kind == "base2new" and r.dataset == "average"]
    published = [e for e in paper if e.setting == "base2new" and e.dataset == "average"]
    tables, js = [], {}
    for bb in sorted({r.backbone for r in ours}):
        rows_by_method = {r.method: r for r in ours if r.backbone == bb}
        refs: dict[str, dict[str, PaperEntry]] = defaultdict(dict)  # paper -> method -> entry
        for e in published:
            if e.method in rows_by_method and set(e.datasets or ()) != set(rows_by_method[e.method].datasets or ()):
                refs[e.paper].setdefault(e.method, e)
        if not refs:
            continue
        papers = sorted(refs)
        head = ["method", "base", "new", "H", *[f"{p} {c}" for p in papers for c in ("base", "new", "H")]]
        rows: list[list[Any]] = []
        record: dict[str, dict[str, Any]] = {}
        for m in sorted(rows_by_method, key=lambda m: (m != "zeroshot", m)):
            r = rows_by_method[m]
            row: list[Any] = [m, *[f"{r.summary[c][0]:.2f}" for c in ("base", "new", "H")]]
            record[m] = {"ours": {c: r.summary[c][0] for c in ("base", "new", "H")}, "datasets": r.datasets}
            for p in papers:
                ref = refs[p].get(m)
                row += [_fmt(ref.values.get(c)) if ref else "-" for c in ("base", "new", "H")]
                if ref:
                    record[m][p] = {"values": ref.values, "ref": ref.label, "source": ref.source,
                                    "datasets": list(ref.datasets)}
            rows.append(row)
        ds = ", ".join(rows_by_method[next(iter(rows_by_method))].datasets or [])
        tables.append(Table(f"base2new averages ({bb}) next to the papers' published averages (ours over {ds}; "
                            "the papers' over their own datasets, e.g. the 11 of CoOp: a reference, not a "
                            "like-for-like comparison)", head, rows))
        js[bb] = record
    return tables, js


# ------------------------------------------------------------------------------------ OOD
#: The row of a near / far group's average in the OOD tables (``ood_set`` argument of :func:`_ood_values`).
GROUP_ROW = "{}-OOD average"


def _ood_groups(runs: list[OodRun]) -> list[str]:
    """The OOD groups (near, far) any run averaged, in that order."""
    return [g for g in ("near", "far") if any(g in (run.result.group_average or {}) for run in runs)]


def _ood_values(runs: list[OodRun], score: str, ood_set: str | None, metric: str) -> list[float]:
    """One metric of every run (``ood_set`` None: the run's average over its OOD sets; ``GROUP_ROW`` of a group:
    the run's average over that group's sets)."""
    out = []
    groups = {GROUP_ROW.format(g): g for g in ("near", "far")}
    for run in runs:
        r = run.result
        if ood_set in groups:
            per = (r.group_average or {}).get(groups[ood_set], {})
        else:
            per = r.average if ood_set is None else r.per_set.get(ood_set, {})
        value = per.get(score, {}).get(metric) if isinstance(per, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(float(value))
    return out


def _ood_sets(runs: list[OodRun]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [n for n in run.result.per_set if n not in names]
    return names


def _ood_scores(runs: list[OodRun]) -> list[str]:
    return [s for s in runs[0].result.scores if all(s in run.result.scores for run in runs)]


def _ood_paper(paper: Sequence[PaperEntry], key: OodKey, score: str, ood_set: str | None,
               our_sets: list[str]) -> PaperEntry | None:
    """The published OOD row for one of our rows (same method, score, ID dataset, OOD set and shots)."""
    method, bb, id_ds, shots = key
    return _paper(paper, "ood", method, ood_set or "average", bb, set(our_sets), shots=shots, score=score,
                  id_dataset=id_ds)


def _ood_ref(entry: PaperEntry) -> str:
    """``locoop Table 1, ViT-B/16 (LoCoOp_GL, 16-shot)``."""
    detail = ", ".join(x for x in (entry.paper_method, None if entry.shots is None else f"{entry.shots}-shot") if x)
    return f"{entry.label} ({detail})" if detail else entry.label


def ood_section(groups: dict[OodKey, list[OodRun]], paper: Sequence[PaperEntry] | None = None
                ) -> tuple[list[Table], Table, dict]:
    """One table per (method, backbone, ID dataset, shots, score): rows OOD sets + average, mean ± std over seeds;
    the long-format ``report_ood.csv`` table; the JSON summary.

    With ``paper``: ``paper FPR95`` / ``paper AUROC`` / ``paper source`` columns from the ``ood`` entries.
    """
    tables: list[Table] = []
    js: dict[str, Any] = {}
    long = Table("OOD detection: one row per method, backbone, ID dataset, shots, score, OOD set and metric",
                 ["method", "backbone", "id_dataset", "shots", "score", "ood_set", "metric", "mean", "std", "seeds",
                  "paper", "paper_ref"])
    for key, runs in sorted(groups.items(), key=ood_order):
        method, bb, id_ds, shots = key
        seeds = [run.seed for run in runs]
        entry: dict[str, Any] = {"seeds": seeds, "folders": [run.folder for run in runs], "shots": shots,
                                 "scores": {}}
        sets = _ood_sets(runs)
        group_rows = [GROUP_ROW.format(g) for g in _ood_groups(runs)]
        for score in _ood_scores(runs):
            rows = []
            for ood_set in [*sets, *group_rows, None]:
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
                        mean, std = mean_std(values)
                        long.rows.append([method, bb, id_ds, "" if shots is None else shots, score, name, metric,
                                          round(mean, 4), round(std, 4), len(values),
                                          ref.values.get(metric, "") if ref else "", _ood_ref(ref) if ref else ""])
                        entry["scores"].setdefault(score, {}).setdefault(name, {})[metric] = {
                            "mean": mean, "std": std, "n": len(values)}
                if paper is not None:
                    row += [_fmt(ref.values.get(m) if ref else None) for m, _ in PAPER_OOD_METRICS]
                    row.append(_ood_ref(ref) if ref else "-")
                rows.append(row)
            seed_text = ", ".join("?" if s is None else str(s) for s in seeds)
            head = ["OOD set", *[label for _, label in OOD_METRICS]]
            if paper is not None:
                head += [f"paper {label}" for _, label in PAPER_OOD_METRICS] + ["paper source"]
            shot_text = "" if shots is None else f", {shots}-shot"
            tables.append(Table(f"OOD: {method} ({bb}{shot_text}), ID {id_ds}, score {SCORE_LABELS.get(score, score)}: "
                                f"%, mean ± std over {len(runs)} run(s) (seeds {seed_text})", head, rows))
        js[ood_name(key)] = entry
    return tables, long, js


def ood_comparison(groups: dict[OodKey, list[OodRun]]) -> list[Table]:
    """Per (backbone, ID dataset) with several methods or shot counts: average FPR95 / AUROC over OOD sets."""
    tables = []
    for bb, id_ds in sorted({(k[1], k[2]) for k in groups}):
        keys = [k for k, _ in sorted(groups.items(), key=ood_order) if (k[1], k[2]) == (bb, id_ds)]
        if len(keys) < 2:
            continue
        rows = []
        present = _ood_groups([run for key in keys for run in groups[key]])
        cols: list[tuple[str | None, str, str]] = [(None, metric, label) for metric, label in OOD_METRICS]
        cols += [(GROUP_ROW.format(g), metric, f"{g} {label}") for g in present for metric, label in OOD_METRICS[:2]]
        for key in keys:
            runs = groups[key]
            label = key[0] if key[3] is None else f"{key[0]} ({key[3]}-shot)"
            acc = [float(r.result.id_accuracy) for r in runs if isinstance(r.result.id_accuracy, (int, float))]
            for score in _ood_scores(runs):
                rows.append([label, SCORE_LABELS.get(score, score), *[
                    _pm(v) if (v := _ood_values(runs, score, where, metric)) else "-" for where, metric, _ in cols],
                    _pm(acc) if acc else "-"])
        what = "OOD sets" + (" and per group (near / far)" if present else "")
        tables.append(Table(f"OOD average over {what} ({bb}, ID {id_ds}): %, mean ± std over seeds",
                            ["method", "score", *[c[2] for c in cols], "ID acc"], rows))
    return tables


def _set_label(name: str) -> str:
    """An OOD set's column: the paper name of an ImageNet benchmark set (``iNaturalist``), else the name."""
    key = canonical_ood_set(name)
    return OOD_SETS[key].display if key in OOD_SETS else name


def _pair(fpr: float | None, auroc: float | None) -> str:
    return "-" if fpr is None and auroc is None else f"{_fmt(fpr)} / {_fmt(auroc)}"


def ood_published(groups: dict[OodKey, list[OodRun]], paper: Sequence[PaperEntry] | None) -> list[Table]:
    """Our OOD rows and every published ``ood`` row of the same ID dataset side by side: one table per (backbone,
    ID dataset) of our runs that has published rows, cells ``FPR95 / AUROC`` (%) per OOD set (sets matched by
    their canonical names, :func:`vlprompt.data.ood_sets.canonical_ood_set`) and ``average``, each row's
    average over its own sets (which the set columns show). Ours: mean over seeds, one row per method, shots
    and score. Published: one row per paper row (any backbone, named in ``source``), including methods vlprompt
    does not implement (``papers.REFERENCE_ONLY_METHODS``) and rows whose score the source does not name."""
    if not paper:
        return []
    tables = []
    for bb, id_ds in sorted({(k[1], k[2]) for k in groups}):
        published = [e for e in paper if e.setting == "ood" and e.id_dataset == id_ds]
        if not published:
            continue
        rows_in: list[tuple[list[Any], dict[str, str], str]] = []
        for key, runs in sorted(groups.items(), key=ood_order):
            if (key[1], key[2]) != (bb, id_ds):
                continue
            label = key[0] if key[3] is None else f"{key[0]} ({key[3]}-shot)"
            for score in _ood_scores(runs):
                cells = {}
                for ood_set in _ood_sets(runs):
                    fpr, auroc = (_ood_values(runs, score, ood_set, m) for m in ("fpr95", "auroc"))
                    cells[_set_label(ood_set)] = _pair(statistics.fmean(fpr) if fpr else None,
                                                       statistics.fmean(auroc) if auroc else None)
                fpr, auroc = (_ood_values(runs, score, None, m) for m in ("fpr95", "auroc"))
                average = _pair(statistics.fmean(fpr) if fpr else None, statistics.fmean(auroc) if auroc else None)
                rows_in.append(([label, SCORE_LABELS.get(score, score), f"ours ({len(runs)} run(s))"], cells,
                                average))
        by_row: dict[tuple[Any, ...], list[PaperEntry]] = defaultdict(list)
        for e in published:
            by_row[(e.paper, e.table, e.backbone, e.method, e.paper_method, e.shots, e.score)].append(e)
        for (_, _, _, method, paper_method, shots, score), entries in by_row.items():
            cells = {_set_label(e.dataset): _pair(e.values.get("fpr95"), e.values.get("auroc"))
                     for e in entries if e.dataset != "average"}
            avg = next((e for e in entries if e.dataset == "average"), None)
            shot_text = "" if shots is None else f", {shots}-shot"
            rows_in.append(([paper_method or method, SCORE_LABELS.get(score, score), f"{entries[0].label}{shot_text}"],
                            cells, _pair(avg.values.get("fpr95"), avg.values.get("auroc")) if avg else "-"))
        sets = list(dict.fromkeys(s for _, cells, _ in rows_in for s in cells))
        rows = [[*head, *[cells.get(s, "-") for s in sets], average] for head, cells, average in rows_in]
        tables.append(Table(f"OOD ({bb}, ID {id_ds}) next to the published numbers: FPR95↓ / AUROC↑ %, ours the mean "
                            "over seeds; each row's average is over its own sets (the columns it fills), so rows "
                            "with other sets are a reference, not a like-for-like comparison",
                            ["method", "score", "source", *sets, "average"], rows))
    return tables


# ------------------------------------------------------------------------------------ test-time adaptation
#: The cost columns of the test-time tables: (header, key of a target's row or of its ``passes``).
TTA_COST = (("s / image", "seconds_per_image"), ("views s / image", "views_seconds_per_image"),
            ("peak MB", "peak_memory_mb"), ("image fwd", "image_forward"), ("text fwd", "text_forward"),
            ("backward", "backward"), ("cache", "cache_size"))
_PASSES = ("image_forward", "text_forward", "backward")


def _tta_values(runs: Sequence[TtaRun], key: str) -> list[float]:
    """The values of ``key`` (a row field or a pass count) over the runs that have it; accuracy and ECE of a run
    of several stream orders (an online method's ``--orders N``) count once per order (``*_by_order``)."""
    values: list[Any] = []
    for run in runs:
        by_order = run.row.get(f"{key}_by_order") if key in ("accuracy", "ece") else None
        if isinstance(by_order, list) and len(by_order) > 1:
            values.extend(by_order)
        else:
            values.append((run.row.get("passes") or {}).get(key) if key in _PASSES else run.row.get(key))
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _runs_cell(runs: Sequence[TtaRun]) -> Any:
    """Runs (seeds), times stream orders when an online method ran several."""
    orders = {int(r.row.get("orders_run") or 1) for r in runs}
    return len(runs) if orders == {1} else f"{len(runs)} x {'/'.join(map(str, sorted(orders)))} orders"


def _tta_stat(runs: Sequence[TtaRun], key: str) -> float | None:
    """Mean over the runs (peak memory: the largest), None when no run has it (peak memory on CPU)."""
    values = _tta_values(runs, key)
    if not values:
        return None
    return max(values) if key == "peak_memory_mb" else statistics.fmean(values)


def _tta_cost_cell(key: str, value: float | None) -> Any:
    if value is None:
        return "-"
    return f"{value:.4f}" if key.endswith("seconds_per_image") else round(value, 2)


def tta_section(groups: dict[TtaKey, list[TtaRun]], paper: Sequence[PaperEntry] | None
                ) -> tuple[list[Table], Table, dict]:
    """One table per backbone: a row per (method, target), mean ± std over the runs (seeds) of accuracy and ECE,
    and the cost (mean seconds per image of adapting + predicting and of making the views, the largest peak
    memory, mean passes per image), then an ``average`` row per method over its targets; the long-format
    ``report_tta.csv`` table; the JSON summary (``report.json`` ``tta``).

    With ``paper``: ``paper accuracy`` / ``paper ECE`` / ``paper source`` columns from the entries of setting
    ``tta`` (same method label, e.g. ``tpt+coop``, and target; an ``average`` entry only next to our average
    over the same targets). Shipped: TPT's README table (RN50, ImageNet and its shifts); ``--paper-file``
    takes one's own.
    """
    tables: list[Table] = []
    js: dict[str, Any] = {}
    long = Table("test-time adaptation: one row per method, backbone and target",
                 ["method", "backbone", "target", "runs", "accuracy", "accuracy_std", "ece", "ece_std",
                  *[key for _, key in TTA_COST], "n_views", "views", "paper_accuracy", "paper_ece", "paper_ref"])
    for bb in sorted({k[1] for k in groups}):
        rows: list[list[Any]] = []
        for method in sorted({k[0] for k in groups if k[1] == bb}):
            targets = [t for m, b, t in groups if (m, b) == (method, bb)]
            per_target: dict[str, dict[str, float]] = {}
            for target in targets:
                runs = groups[(method, bb, target)]
                acc, ece = mean_std(_tta_values(runs, "accuracy")), mean_std(_tta_values(runs, "ece"))
                cost = {key: _tta_stat(runs, key) for _, key in TTA_COST}
                views = sorted({str(r.row.get("views")) for r in runs})
                n_views = sorted({int(r.row["n_views"]) for r in runs if isinstance(r.row.get("n_views"), int)})
                ref = _paper(paper, "tta", method, target, bb) if paper is not None else None
                row: list[Any] = [method, target, _runs_cell(runs), f"{acc[0]:.2f} ± {acc[1]:.2f}",
                                  f"{ece[0]:.2f} ± {ece[1]:.2f}",
                                  *[_tta_cost_cell(key, cost[key]) for _, key in TTA_COST],
                                  ",".join(map(str, n_views)) or "-", ",".join(views)]
                if paper is not None:
                    row += _tta_paper_cells(ref)
                rows.append(row)
                per_target[target] = {"accuracy": acc[0], "ece": ece[0],
                                      "seconds_per_image": cost["seconds_per_image"] or 0.0}
                record: dict[str, Any] = {"runs": len(runs), "paths": [r.path for r in runs],
                                          "accuracy": {"mean": acc[0], "std": acc[1]},
                                          "ece": {"mean": ece[0], "std": ece[1]}, "cost": cost,
                                          "n_views": n_views, "views": views}
                if ref is not None:
                    record["paper"] = {"ref": ref.label, "values": ref.values}
                js.setdefault(f"{method}|{bb}", {})[target] = record
                long.rows.append([method, bb, target, len(runs), round(acc[0], 4), round(acc[1], 4), round(ece[0], 4),
                                  round(ece[1], 4), *[cost[key] for _, key in TTA_COST],
                                  ",".join(map(str, n_views)), ",".join(views),
                                  *(_tta_paper_values(ref))])
            if len(per_target) > 1:
                avg = {k: statistics.fmean(v[k] for v in per_target.values())
                       for k in ("accuracy", "ece", "seconds_per_image")}
                ref = _paper(paper, "tta", method, "average", bb, set(per_target)) if paper is not None else None
                row = [method, "average", "-", f"{avg['accuracy']:.2f}", f"{avg['ece']:.2f}",
                       f"{avg['seconds_per_image']:.4f}", *["-"] * (len(TTA_COST) + 1)]
                if paper is not None:
                    row += _tta_paper_cells(ref)
                rows.append(row)
                js[f"{method}|{bb}"]["average"] = {**avg, "targets": sorted(per_target)}
        head = ["method", "target", "runs", "accuracy %", "ECE %", *[h for h, _ in TTA_COST], "views", "augment"]
        if paper is not None:
            head += ["paper accuracy", "paper ECE", "paper source"]
        tables.append(Table(f"test-time adaptation ({bb}): top-1 accuracy % and ECE % (mean ± std over runs and, for "
                            "online methods, stream orders), cost per image (mean; peak memory: the largest), cache "
                            "size at the end of the stream", head, rows))
    return tables, long, js


def tta_published_averages(tta_js: dict[str, Any], paper: Sequence[PaperEntry] | None) -> list[Table]:
    """Our test-time averages (over our targets) next to each paper's published average for the same method
    label (``tpt``, ``tpt+coop``, ...) when the two average *different* targets (the world's vs ImageNet and its
    shifts): a reference point beside ours, not a like-for-like comparison (that one is the per-target column).

    ``tta_js``: the ``report.json`` ``tta`` summary of :func:`tta_section` (``"method|backbone" -> target ->``
    values, with an ``average``). One table per backbone: rows = methods, columns = our accuracy / ECE, then
    ``<paper> accuracy`` for every selected paper publishing an average for that method.
    """
    if paper is None:
        return []
    published = [e for e in paper if e.setting == "tta" and e.dataset == "average"]
    ours: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # backbone -> method -> average
    for key, per in tta_js.items():
        method, _, bb = key.partition("|")
        if "average" in per:
            ours[bb][method] = per["average"]
    tables = []
    for bb in sorted(ours):
        refs: dict[str, dict[str, PaperEntry]] = defaultdict(dict)
        for e in published:
            avg = ours[bb].get(e.method)
            if avg is not None and averaged_datasets(paper, e) != set(avg["targets"]):
                refs[e.paper].setdefault(e.method, e)
        if not refs:
            continue
        papers = sorted(refs)
        head = ["method", "accuracy %", "ECE %", *[f"{p} accuracy %" for p in papers]]
        rows = []
        for m in sorted(ours[bb], key=lambda m: (m != "zeroshot", m)):
            avg = ours[bb][m]
            row: list[Any] = [m, f"{avg['accuracy']:.2f}", f"{avg['ece']:.2f}"]
            row += [_fmt(refs[p][m].values.get("accuracy")) if m in refs[p] else "-" for p in papers]
            rows.append(row)
        targets = ", ".join(ours[bb][next(iter(ours[bb]))]["targets"])
        firsts = {p: next(iter(refs[p].values())) for p in papers}
        srcs = "; ".join(f"{p}: {e.label} over {', '.join(sorted(averaged_datasets(paper, e)))}"
                         for p, e in firsts.items())
        tables.append(Table(f"test-time averages ({bb}) next to the papers' published averages (ours over {targets}; "
                            f"{srcs}: a reference, not a like-for-like comparison)", head, rows))
    return tables


def _tta_paper_cells(ref: PaperEntry | None) -> list[str]:
    return [_fmt(ref.values.get("accuracy") if ref else None), _fmt(ref.values.get("ece") if ref else None),
            ref.label if ref else "-"]


def _tta_paper_values(ref: PaperEntry | None) -> list[Any]:
    return [ref.values.get("accuracy", "") if ref else "", ref.values.get("ece", "") if ref else "",
            ref.label if ref else ""]


def _tta_pair(runs: Sequence[TtaRun]) -> str:
    acc = _tta_values(runs, "accuracy")
    mean, std = mean_std(acc)
    return f"{mean:.2f}{f' ± {std:.2f}' if len(acc) > 1 else ''} / {_tta_stat(runs, 'ece'):.2f}"


def _order_spread(per_target: Sequence[Sequence[TtaRun]]) -> str:
    """`` ± std`` over the stream orders of the average over targets, when each target has one run of the same
    orders (an online method's ``--orders N``): the k-th order's accuracies averaged over the targets, then the
    spread over k; else ``""``."""
    lists = []
    for runs in per_target:
        if len(runs) != 1 or not isinstance(runs[0].row.get("accuracy_by_order"), list):
            return ""
        lists.append(runs[0].row["accuracy_by_order"])
    if len({len(v) for v in lists}) != 1 or len(lists[0]) < 2:
        return ""
    return f" ± {statistics.pstdev(statistics.fmean(col) for col in zip(*lists)):.2f}"


def tta_comparison(groups: dict[TtaKey, list[TtaRun]]) -> list[Table]:
    """Per backbone with several test-time methods: rows target (+ the average over the targets every method
    ran), columns method, cells ``accuracy / ECE`` (means over runs, %; ``accuracy ± std / ECE`` where there are
    several values: seeds, or an online method's stream orders)."""
    tables = []
    for bb in sorted({k[1] for k in groups}):
        methods = sorted({m for m, b, _ in groups if b == bb})
        if len(methods) < 2:
            continue
        targets = list(dict.fromkeys(t for _, b, t in groups if b == bb))
        rows: list[list[Any]] = []
        for target in targets:
            row: list[Any] = [target]
            for m in methods:
                runs = groups.get((m, bb, target))
                row.append(_tta_pair(runs) if runs else "-")
            rows.append(row)
        shared = [t for t in targets if all((m, bb, t) in groups for m in methods)]
        if len(shared) > 1:
            row = [f"average ({len(shared)} targets)"]
            for m in methods:
                acc = statistics.fmean(_tta_stat(groups[(m, bb, t)], "accuracy") or 0.0 for t in shared)
                ece = statistics.fmean(_tta_stat(groups[(m, bb, t)], "ece") or 0.0 for t in shared)
                row.append(f"{acc:.2f}{_order_spread([groups[(m, bb, t)] for t in shared])} / {ece:.2f}")
            rows.append(row)
        tables.append(Table(f"test-time adaptation ({bb}): accuracy % / ECE % per target and method",
                            ["target", *methods], rows))
    return tables
