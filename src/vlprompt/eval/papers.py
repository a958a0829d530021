"""Published results as data (``paper_results.json``, shipped with the package) for ``vlprompt report --paper``.

Each entry holds the paper, table, backbone, method (vlprompt's name; CLIP -> ``zeroshot``), dataset
(vlprompt's registry name, or ``average``), setting (``base2new`` / ``dg``) and the published values
keyed by the columns of vlprompt's protocol results. The file's ``about`` field says which tables are
covered. A file of one's own numbers in the same format can be given with ``--paper-file``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.errors import DataError

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")
_REQUIRED = {"paper": str, "table": str, "backbone": str, "setting": str, "method": str, "dataset": str}


@dataclass(frozen=True)
class PaperEntry:
    """One published row: ``values`` maps a result column (``base``, ``new``, ``H``, a dataset) to percent."""

    paper: str
    table: str
    backbone: str
    setting: str
    method: str
    dataset: str
    values: dict[str, float] = field(hash=False)
    shots: int | None = None
    paper_method: str = ""

    @property
    def label(self) -> str:
        """``"cocoop Table 1, ViT-B/16"``: where the numbers come from."""
        return f"{self.paper} {self.table}, {self.backbone}"


def normalize_backbone(name: str) -> str:
    """``ViT-B/16``, ``ViT-B-16`` and ``ViT-B-16-quickgelu`` -> ``vit-b-16`` (how papers and open_clip differ)."""
    key = name.strip().lower().replace("/", "-").replace("_", "-")
    return re.sub(r"-quickgelu$", "", key)


def _entry(raw: Any, where: str) -> PaperEntry:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object with {', '.join(_REQUIRED)} and values")
    for key, typ in _REQUIRED.items():
        if not isinstance(raw.get(key), typ) or not raw[key]:
            raise DataError(f"{where}: '{key}' must be a non-empty string")
    values = raw.get("values")
    if not isinstance(values, dict) or not values:
        raise DataError(f"{where}: 'values' must map result columns to numbers")
    for col, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            raise DataError(f"{where}: value of '{col}' must be a number in 0..100 (percent), got {v!r}")
    shots = raw.get("shots")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int)):
        raise DataError(f"{where}: 'shots' must be an integer")
    return PaperEntry(paper=raw["paper"], table=raw["table"], backbone=raw["backbone"], setting=raw["setting"],
                      method=raw["method"], dataset=raw["dataset"],
                      values={str(k): float(v) for k, v in values.items()}, shots=shots,
                      paper_method=str(raw.get("paper_method", "")))


def load_paper_results(path: str | Path | None = None) -> list[PaperEntry]:
    """Entries of ``path`` (default: the shipped ``paper_results.json``), checked; DataError on a bad file."""
    path = Path(path) if path else PAPER_RESULTS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"paper results file '{path}' cannot be read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"paper results file '{path}' is not valid JSON: {exc}") from exc
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise DataError(f"paper results file '{path}' must be an object with a 'results' list")
    entries = [_entry(r, f"paper results file '{path}', entry {i}") for i, r in enumerate(results)]
    seen: set[tuple[str, ...]] = set()
    for e in entries:
        key = (e.paper, e.table, normalize_backbone(e.backbone), e.setting, e.method, e.dataset)
        if key in seen:
            raise DataError(f"paper results file '{path}': {key} is listed twice")
        seen.add(key)
    return entries


def select_papers(entries: Sequence[PaperEntry], papers: Iterable[str]) -> list[PaperEntry]:
    """Entries of the named papers (``all``: every paper); DataError naming the choices for an unknown one."""
    wanted = [p.strip().lower() for p in papers if p.strip()]
    known = sorted({e.paper for e in entries})
    if "all" in wanted:
        return list(entries)
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise DataError(f"no published results for paper(s) {', '.join(unknown)} (option --paper); "
                        f"choose from {', '.join(known + ['all'])}")
    return [e for e in entries if e.paper in wanted]


def find_entry(entries: Sequence[PaperEntry], setting: str, method: str, dataset: str,
               backbone: str) -> PaperEntry | None:
    """The entry for (setting, method, dataset), preferring the same backbone; None when there is none."""
    matches = [e for e in entries if (e.setting, e.method, e.dataset) == (setting, method, dataset)]
    same = [e for e in matches if normalize_backbone(e.backbone) == normalize_backbone(backbone)]
    return (same or matches or [None])[0]


def averaged_datasets(entries: Sequence[PaperEntry], ref: PaperEntry) -> set[str]:
    """The datasets a paper's ``average`` row ``ref`` averages over (its per-dataset rows in the same table)."""
    return {e.dataset for e in entries if (e.paper, e.table, e.backbone, e.setting, e.method)
            == (ref.paper, ref.table, ref.backbone, ref.setting, ref.method) and e.dataset != "average"}
