"""Published results as data (``paper_results.json``, shipped with the package) for ``vlprompt report --paper``.

Each entry holds the paper, table, backbone, method (vlprompt's name; CLIP -> ``zeroshot``), dataset
(vlprompt's registry name, an OOD set's name, or ``average``), setting and the published values keyed by
the columns of vlprompt's results:

* ``base2new`` / ``dg``: the protocol columns (``base`` / ``new`` / ``H``; source and target datasets);
* ``ood``: ``dataset`` is the OOD set (the registry name of an ImageNet OOD benchmark set, ``inaturalist``,
  ``ninco``, ...; a run's ``iNaturalist``, ``iNaturalist/images`` or ``dtd/images`` finds the same entries:
  :func:`vlprompt.data.ood_sets.canonical_ood_set`), ``id_dataset`` the ID dataset and ``score`` the OOD score
  (``mcm``, ``glmcm``, a method's own score such as ``gallop``; :data:`UNSTATED_SCORE` where the source names
  none: such a row is never matched to a run, only listed in the report's table of published OOD numbers);
  values ``fpr95`` / ``auroc`` (/ ``aupr``). Shipped: GalLoP's README OOD table (ViT-B/16, ImageNet ID, the 4
  MOS sets and their average) and NegRefine's README table (its ImageNet seed-0 run, per set);
* ``unsupervised``: ``accuracy`` of a run without labels (UPL);
* ``tta``: test-time adaptation (``vlprompt protocol tta``): ``method`` is the result's label (``tpt``,
  ``tpt+coop``, ...), ``dataset`` the target; values ``accuracy`` / ``ece``. Shipped: TPT's README table
  (RN50; ImageNet and its shifts); ``--paper-file`` takes one's own.

The file's ``about`` field says which tables are covered. A file of one's own numbers in the same format
can be given with ``--paper-file``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.data.ood_sets import canonical_ood_set

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")
_REQUIRED = {"paper": str, "table": str, "backbone": str, "setting": str, "method": str, "dataset": str}
_OPTIONAL_TEXT = ("paper_method", "score", "id_dataset", "source")
#: the value keys a setting allows (settings not listed here take any column name)
SETTING_VALUES = {"ood": {"fpr95", "auroc", "aupr"}, "unsupervised": {"accuracy"}, "fewshot": {"accuracy"},
                  "tta": {"accuracy", "ece"}}
#: The ``score`` of an ``ood`` row whose source names no OOD score (GalLoP's README rows of PLOT, PromptSRC, LSN).
UNSTATED_SCORE = "unstated"
#: Methods the published tables compare with that vlprompt does not implement: their rows name them as
#: ``method`` and are shown in the report's table of published OOD numbers, never next to a run.
REFERENCE_ONLY_METHODS: dict[str, str] = {
    "plot": "PLOT: a row of GalLoP's README OOD table",
    "lsn": "LSN (+ CoOp / + CoCoOp): rows of GalLoP's README OOD table; no public code was found",
    "negrefine": "NegRefine (ICCV 2025): its README's example run (ImageNet ID, seed 0)",
}


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
    score: str = ""
    id_dataset: str = ""
    source: str = ""
    #: for an ``average`` row published without its per-dataset rows: the datasets it averages
    datasets: tuple[str, ...] = ()

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
    allowed = SETTING_VALUES.get(raw["setting"])
    if allowed is not None and not set(values) <= allowed:
        raise DataError(f"{where}: values of setting '{raw['setting']}' must be among {', '.join(sorted(allowed))}")
    shots = raw.get("shots")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int)):
        raise DataError(f"{where}: 'shots' must be an integer")
    for key in _OPTIONAL_TEXT:
        if not isinstance(raw.get(key, ""), str):
            raise DataError(f"{where}: '{key}' must be a string")
    datasets = raw.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) and d for d in datasets):
        raise DataError(f"{where}: 'datasets' must be a list of dataset names")
    if raw["setting"] == "ood" and not (raw.get("score") and raw.get("id_dataset")):
        raise DataError(f"{where}: an 'ood' entry needs 'score' (mcm, glmcm, ...) and 'id_dataset'")
    return PaperEntry(paper=raw["paper"], table=raw["table"], backbone=raw["backbone"], setting=raw["setting"],
                      method=raw["method"], dataset=raw["dataset"],
                      values={str(k): float(v) for k, v in values.items()}, shots=shots,
                      datasets=tuple(datasets), **{key: raw.get(key, "") for key in _OPTIONAL_TEXT})


def _group(e: PaperEntry) -> tuple[Any, ...]:
    """What makes one published row apart from its dataset: (paper, table, backbone, setting, method, ...)."""
    return (e.paper, e.table, normalize_backbone(e.backbone), e.setting, e.method, e.paper_method, e.shots,
            e.score, e.id_dataset)


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
    seen: set[tuple[Any, ...]] = set()
    for e in entries:
        key = (*_group(e), e.dataset)
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


def find_entry(entries: Sequence[PaperEntry], setting: str, method: str, dataset: str, backbone: str, *,
               shots: int | None = None, score: str | None = None, id_dataset: str | None = None,
               training_free: bool = False) -> PaperEntry | None:
    """The entry for (setting, method, dataset), preferring the same backbone; None when there is none.

    ``score`` / ``id_dataset`` (OOD) must be equal when given. ``shots`` must be equal when both sides
    know it (``training_free``: the method learns nothing, e.g. zero-shot CLIP, so its rows match any
    shot count); when the run's shots are unknown and the paper lists several shot counts, there is no
    single counterpart and the answer is None. Among entries of one paper row and its variants (UPL and
    UPL*), the one named like the method is preferred.
    """
    key = _dataset_key(setting, dataset)
    matches = [e for e in entries if (e.setting, e.method) == (setting, method)
               and _dataset_key(setting, e.dataset) == key
               and (score is None or e.score == score) and (id_dataset is None or e.id_dataset == id_dataset)
               and (shots is None or e.shots is None or e.shots == shots or training_free)]
    same = [e for e in matches if normalize_backbone(e.backbone) == normalize_backbone(backbone)]
    pool = same or matches
    if shots is None and not training_free and len({e.shots for e in pool}) > 1:
        return None
    named = [e for e in pool if e.paper_method.lower() == method.lower()]
    return (named or pool)[0] if named or pool else None


def _dataset_key(setting: str, dataset: str) -> str:
    """What a dataset is compared by: an OOD set by its canonical name (``iNaturalist`` = ``inaturalist``)."""
    return canonical_ood_set(dataset) if setting == "ood" else dataset


def averaged_datasets(entries: Sequence[PaperEntry], ref: PaperEntry) -> set[str]:
    """The datasets (OOD sets) a paper's ``average`` row ``ref`` averages over: its ``datasets`` field, else its
    other rows in the same table."""
    if ref.datasets:
        return set(ref.datasets)
    return {e.dataset for e in entries if _group(e) == _group(ref) and e.dataset != "average"}


def paper_for(entries: Sequence[PaperEntry], setting: str, method: str, dataset: str, backbone: str,
              our_datasets: set[str] | None = None, **match: Any) -> PaperEntry | None:
    """The published entry for one of our rows; an ``average`` row only matches when the paper's average is
    over the same datasets (OOD sets) as ``our_datasets``.

    ``match``: ``shots`` / ``score`` / ``id_dataset`` / ``training_free`` for :func:`find_entry`.
    """
    entry = find_entry(entries, setting, method, dataset, backbone, **match)
    if entry is not None and dataset == "average" and (our_datasets is None or {
            _dataset_key(setting, d) for d in averaged_datasets(entries, entry)} != {
            _dataset_key(setting, d) for d in our_datasets}):
        return None
    return entry
