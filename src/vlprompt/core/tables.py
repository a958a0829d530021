"""Result tables: one table model (:class:`Table`) rendered as Markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: How OOD scores (:data:`vlprompt.core.ood.SCORES`) are named in tables and plots.
SCORE_LABELS = {"mcm": "MCM", "glmcm": "GL-MCM", "maxlogit": "max-logit", "energy": "energy"}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats shown with 2 decimals."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, sep, *body]) + "\n"


def accuracy_table(report: dict[str, Any], *, title: str = "", max_classes: int = 50) -> str:
    """Overall / mean per-class accuracy, then per-class accuracy (first ``max_classes`` classes)."""
    out = [f"## {title}\n"] if title else []
    out.append(markdown_table(["metric", "value"], [
        ["accuracy (%)", report["accuracy"]],
        ["mean per-class accuracy (%)", report["macro_accuracy"]],
        ["images", report["n"]],
    ]))
    per_class = list(report.get("per_class", {}).items())
    if per_class:
        shown = per_class[:max_classes]
        out.append("\n" + markdown_table(["class", "accuracy (%)"], [[k, v] for k, v in shown]))
        if len(per_class) > max_classes:
            out.append(f"\n({len(per_class) - max_classes} more classes in metrics.json)\n")
    return "".join(out)


@dataclass
class Table:
    """One table: a title, column names and rows of cells (text, numbers or None).

    The same object is rendered for every output: :meth:`to_markdown` (a ``###`` heading and a
    GitHub-flavoured table, floats with 2 decimals), :meth:`to_csv` (header + rows, values as stored)
    and :meth:`to_json` (a plain mapping for ``report.json``).
    """

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def to_markdown(self) -> str:
        table = markdown_table(self.columns, self.rows)
        return f"### {self.title}\n\n{table}" if self.title else table

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": [list(r) for r in self.rows]}
