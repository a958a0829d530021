"""``vlprompt report RUNS_DIR``: tables (Markdown, CSV, JSON) and plots from a folder of runs.

Everything below ``RUNS_DIR`` is found by file name (:mod:`vlprompt.report.collect`), so a sweep's folder,
a few hand-made run folders or a mix of both work alike. A backbone is the
:class:`~vlprompt.core.results.BackboneRecord` every result holds, named by its label (``ViT-B-16``,
``hf:<dir>``), so the runs, protocols and OOD results of one backbone share its rows whichever release wrote them:

* **Few-shot** (every ``metrics.json``): test accuracy mean ± std over seeds, one table per method and
  backbone with datasets as rows, shots as columns and an average row (CoOp's layout); training-free
  runs (zero-shot) appear as their own method and as a dashed line in the plots.
* **Protocols** (``base2new_results.json``, ``dg_results.json``, ``xd_results.json``, each already a
  mean ± std over its seeds): one row per method, backbone and dataset; base-to-new also gets an average
  row per method (H of the average row = harmonic mean of the averaged base and new, as CoCoOp's Table 1).
* **OOD detection** (``ood_results.json`` of ``vlprompt ood``, one per seed): FPR95↓ / AUROC↑ / AUPR↑ per
  OOD set and their average, mean ± std over seeds, one table per method, backbone, ID dataset, shots
  (the run's ``shots``, else a ``<k>shots`` folder of a sweep's layout; unknown: runs of all shot counts
  together) and score (MCM, GL-MCM, ...).
* **Test-time adaptation** (``tta_results.json`` of ``vlprompt protocol tta`` or a ``tta`` sweep, one per
  seed): per backbone, one row per method (``tpt``, ``tpt+coop`` for a method started from another's prompt)
  and target with accuracy and ECE (mean ± std over runs) and the cost (seconds per image, views seconds
  per image, peak memory, image / text / backward passes per image), an average row per method; with several
  methods a targets x methods table of accuracy / ECE.
* **Comparison** (when the folder holds several methods of one backbone): rows dataset, columns method,
  for few-shot at each shot count, for base-to-new H and for the OOD averages.
* **Published numbers** (``--paper cocoop|locoop|upl|all`` or ``--paper-file``): a ``paper`` value next to
  ours for every (method, dataset, setting) listed in :mod:`vlprompt.report.papers` (same backbone
  preferred; the paper's backbone is shown): protocol columns (``base2new`` / ``dg``), FPR95 / AUROC in
  the OOD tables (``ood``: same method, score, ID dataset, OOD set and shots) and accuracy in the
  few-shot table of unsupervised runs (UPL; ``unsupervised``), accuracy / ECE in the test-time table (``tta``).

Every table is one :class:`~vlprompt.core.tables.Table` (built in :mod:`vlprompt.report.tables`), written
to the output folder (default ``RUNS_DIR``) as:

* ``report.md``: all tables and links to the plots; ``report.json``: the same numbers (``fewshot``,
  ``protocols``, ``ood``, ``comparison``, ``paper``, ``plots``, ``ignored``; ``tta`` when there are test-time
  results) and every table under ``tables``.
* ``report.csv`` (few-shot: method, backbone, dataset, shots, mean, std, seeds),
  ``report_protocols.csv`` (one row per protocol, method, backbone, dataset and column, with the paper
  value), ``report_ood.csv`` (one row per method, backbone, ID dataset, shots, score, OOD set and metric,
  with the paper value), ``report_tta.csv`` (one row per test-time method, backbone and target).
* Plots (:mod:`vlprompt.report.plots`), PNG + SVG: ``report_fewshot`` (accuracy vs shots),
  ``report_base2new`` (base / new / H bars per method, per dataset and averaged; paper values as markers),
  ``report_ood_hist_<method>_<backbone>_<id>`` (ID vs each OOD set score histograms of the lowest seed,
  from its ``ood_scores.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.core.errors import VlpromptError
from vlprompt.core.io import atomic_write_json, atomic_write_text
from vlprompt.core.tables import Table
from vlprompt.report.collect import collect_fewshot, collect_ood, collect_protocols, collect_tta, ood_order
from vlprompt.report.papers import PaperEntry, load_paper_results, select_papers
from vlprompt.report.plots import plot_base2new, plot_fewshot, plot_ood_histograms
from vlprompt.report.tables import (
    base2new_comparison,
    fewshot_comparison,
    fewshot_tables,
    ood_comparison,
    ood_published,
    ood_section,
    protocol_section,
    published_averages,
    tta_comparison,
    tta_published_averages,
    tta_section,
)


def _paper_entries(papers: Sequence[str], paper_file: str | Path | None) -> list[PaperEntry] | None:
    """Published entries to show (None: no paper columns)."""
    if not papers and not paper_file:
        return None
    entries = load_paper_results(paper_file)
    return select_papers(entries, papers) if papers else entries


def _section(title: str, *tables: Sequence[Table]) -> str:
    body = "\n".join(t.to_markdown() for group in tables for t in group)
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

    Returns:
        ``markdown`` (the text of report.md), ``files`` (the report files written), ``warnings`` (one line for
        each file left out: unreadable or malformed) and everything report.json holds.
    """
    root = Path(root)
    if not root.is_dir():
        raise VlpromptError(f"runs folder '{root}' does not exist")
    out = Path(output) if output else root
    paper = _paper_entries(papers, paper_file)
    skipped: list[str] = []
    reasons: dict[str, str] = {}
    groups = collect_fewshot(root, skipped, reasons)
    protocols = collect_protocols(root, skipped, reasons)
    ood = collect_ood(root, skipped, reasons)
    tta = collect_tta(root, skipped, reasons)
    warnings = [f"warning: skipped {reasons.get(p, repr(p))}; the other results are reported" for p in skipped]
    if not groups and not protocols and not ood and not tta:
        raise VlpromptError(f"no finished runs (metrics.json), protocol results (*_results.json) or OOD results "
                            f"(ood_results.json) found under '{root}'")
    out.mkdir(parents=True, exist_ok=True)
    few, few_csv, few_js = fewshot_tables(groups, paper)
    proto, proto_csv, proto_js = protocol_section(protocols, paper)
    ood_tables, ood_csv, ood_js = ood_section(ood, paper)
    cmp_few, cmp_few_js = fewshot_comparison(groups)
    cmp_b2n, cmp_b2n_js = base2new_comparison(protocols, paper)
    pub, pub_js = published_averages(protocols, paper)
    cmp_ood = ood_comparison(ood)
    ood_pub = ood_published(ood, paper)
    tta_tables, tta_csv, tta_js = tta_section(tta, paper)
    cmp_tta = [*tta_comparison(tta), *tta_published_averages(tta_js, paper)]
    plots: list[Path] = []
    if groups:
        plots += plot_fewshot(groups, out / "report_fewshot")
    if any(r.kind == "base2new" for r in protocols):
        plots += plot_base2new(protocols, paper, out / "report_base2new")
    for key, runs in sorted(ood.items(), key=ood_order):
        plots += plot_ood_histograms(key, runs, out)
    matched = (sum(1 for records in proto_js.values() for rec in records if rec.get("paper"))
               + sum(len(per) for e in ood_js.values() for per in e.get("paper", {}).values())
               + sum(1 for per in few_js.values() for cell in per.values() if "paper" in cell)
               + sum(1 for per in tta_js.values() for cell in per.values() if "paper" in cell))
    paper_note = ""
    if paper is not None:
        refs = sorted({f"{e.label} ({e.setting})" for e in paper})
        paper_note = (f"Published numbers from: {'; '.join(refs)}. {matched} of our rows have a published "
                      "counterpart (same method, dataset and setting; for OOD also score, ID dataset and "
                      "shots).\n" if matched else
                      f"No published numbers match these runs (paper data covers: {'; '.join(refs)}).\n")
    plot_links = _plots_markdown(plots, out)
    ignored = "\n".join(f"- {s}" for s in skipped)
    text = "\n".join(p for p in (
        f"# Results in {root}\n",
        paper_note,
        _section("Few-shot", few),
        _section("Comparison of methods", cmp_few, cmp_b2n, pub, cmp_ood),
        _section("Protocols", proto),
        _section("OOD detection", ood_tables, ood_pub),
        _section("Test-time adaptation", tta_tables, cmp_tta),
        f"## Plots\n\n{plot_links}" if plot_links else "",
        f"## Ignored files (unreadable or not in the expected format)\n\n{ignored}" if ignored else "",
    ) if p)
    csv_files = {"report.csv": few_csv}
    if protocols:
        csv_files["report_protocols.csv"] = proto_csv
    if ood:
        csv_files["report_ood.csv"] = ood_csv
    if tta:
        csv_files["report_tta.csv"] = tta_csv
    files = [out / n for n in ("report.md", "report.json", "report.csv")]
    atomic_write_text(out / "report.md", text)
    for name, table in csv_files.items():
        atomic_write_text(out / name, table.to_csv())
        if out / name not in files:
            files.append(out / name)
    shown = [*few, *cmp_few, *cmp_b2n, *pub, *cmp_ood, *proto, *ood_tables, *ood_pub, *tta_tables, *cmp_tta]
    summary = {"fewshot": few_js, "protocols": proto_js, "ood": ood_js,
               "comparison": {"fewshot": cmp_few_js, "base2new_H": cmp_b2n_js, "base2new_published_averages": pub_js},
               "paper": {"papers": sorted({e.paper for e in paper}), "matched_rows": matched} if paper is not None
               else None,
               "plots": [str(p) for p in plots], "ignored": skipped,
               "tables": [t.to_json() for t in shown] + [{**t.to_json(), "csv": name} for name, t in csv_files.items()]}
    if tta:  # only then: report.json of folders without test-time results is as earlier releases wrote it
        summary["tta"] = tta_js
    atomic_write_json(out / "report.json", summary)
    return {"markdown": text, "files": [str(f) for f in files], "warnings": warnings, **summary}
