"""Finding and reading the result files below a runs folder, through the results schema only.

Every file is read with :func:`vlprompt.core.results.read_result` (any format version this release reads,
including files written before the schema: format 0):

* ``metrics.json`` -> :class:`~vlprompt.core.results.RunResult`, grouped by (method, backbone, dataset, shots)
  (a PromptKD teacher trained inside its student's run folder is part of that run: :func:`is_nested_teacher_run`);
* ``<kind>_results.json`` (kind in :data:`~vlprompt.core.results.TRANSFER_PROTOCOLS`) ->
  :class:`~vlprompt.core.results.ProtocolResult`, one :class:`ProtocolRow` each;
* ``tta_results.json`` -> :class:`~vlprompt.core.results.TestTimeResult`, grouped by (method label,
  backbone, target): one :class:`TtaRun` per result file (a seed of a sweep, a protocol folder);
* ``ood_results.json`` -> :class:`~vlprompt.core.results.OodResult`, grouped by (method, backbone, ID
  dataset, shots); the per-image ``ood_scores.json`` next to it is read by :func:`load_ood_scores`.

The backbone of every group is the results' :class:`~vlprompt.core.results.BackboneRecord`, named by its
``label`` (``ViT-B-16``, ``hf:<dir>``): the family and model, whichever way an older file spelled them (a run's
``{"family": "hf", "model": "<dir>"}`` and a protocol's ``"hf:<dir>"`` are one backbone).

A file that cannot be read or is not such a record (also a malformed ``metrics.json``: a method given as a
mapping, a number too large for a float, a null dataset, JSON nested too deeply) is noted in ``skipped``
(listed at the end of the report) with the reason in ``reasons``; ``vlprompt report`` prints one warning
for each and reports the rest. What a method is (trainable, unsupervised) comes from its registered
capabilities (:func:`method_capabilities`), never from its name.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from vlprompt.core.errors import ConfigError, DataError
from vlprompt.core.metrics import harmonic_mean
from vlprompt.core.results import (
    TRANSFER_PROTOCOLS,
    BackboneRecord,
    OodResult,
    ProtocolResult,
    RunResult,
    TestTimeResult,
    read_result,
)
from vlprompt.methods.registry import Capabilities, get_method

FewKey = tuple[str, str, str, int]  # (method, backbone label, dataset, shots)
OodKey = tuple[str, str, str, int | None]  # (method, backbone label, ID dataset, shots or None when unknown)


@cache
def method_capabilities(name: str) -> Capabilities:
    """The registered capabilities of method ``name`` with its default options; a name this release does not
    know (an old or a plugin's result file) counts as a trainable, supervised method."""
    try:
        return get_method(name).capabilities_for()
    except ConfigError:
        return Capabilities()


def is_training_free(method: str) -> bool:
    """The method learns nothing (zero-shot CLIP): one result stands for every shot count."""
    return not method_capabilities(method).trainable


def _backbone_label(backbone: BackboneRecord | None) -> str:
    """The name a backbone is grouped and shown under (``?`` for the earliest OOD files, which have none)."""
    return "?" if backbone is None else backbone.label


# ------------------------------------------------------------------------------------ few-shot
def _skip(path: Path, exc: Exception, skipped: list[str] | None, reasons: dict[str, str] | None) -> None:
    """Note ``path`` (left out of the report) and why."""
    if skipped is not None:
        skipped.append(str(path))
    if reasons is not None:
        reasons[str(path)] = str(exc) if str(path) in str(exc) else f"'{path}': {exc}"


def is_nested_teacher_run(folder: Path) -> bool:
    """A run trained inside another run folder as part of it: PromptKD's teacher in ``<student run>/teacher/``
    (:mod:`vlprompt.engine.teacher`). It belongs to the student's row, not a row of its own."""
    from vlprompt.engine.run import RunPaths
    from vlprompt.engine.teacher import TEACHER_DIR

    return folder.name == TEACHER_DIR and RunPaths(folder.parent).config.is_file()


def collect_fewshot(root: Path, skipped: list[str] | None = None,
                    reasons: dict[str, str] | None = None) -> dict[FewKey, list[float]]:
    """(method, backbone, dataset, shots) -> test accuracies of every seed found (``metrics.json``); a file
    that is not a finished run's metrics is noted in ``skipped`` / ``reasons`` and left out."""
    groups: dict[FewKey, list[float]] = defaultdict(list)
    for path in sorted(root.rglob("metrics.json")):
        if is_nested_teacher_run(path.parent):
            continue
        try:
            run = read_result(path, RunResult)
        except DataError as exc:
            _skip(path, exc, skipped, reasons)
            continue
        groups[(run.method, _backbone_label(run.backbone), run.dataset, run.shots)].append(run.accuracy)
    return dict(groups)


# ------------------------------------------------------------------------------------ protocols
@dataclass
class ProtocolRow:
    """One protocol result (or a derived average row): ``summary`` maps column -> (mean, std or None)."""

    kind: str
    method: str
    backbone: str  # the BackboneRecord's label
    dataset: str
    columns: list[str]
    summary: dict[str, tuple[float, float | None]]
    seeds: list[Any] | None = None  # None for a derived average row
    path: str | None = None
    datasets: list[str] | None = None  # the datasets an ``average`` row averages


def collect_protocols(root: Path, skipped: list[str], reasons: dict[str, str] | None = None) -> list[ProtocolRow]:
    """Every ``<kind>_results.json`` below ``root``, in protocol order then path order."""
    found = []
    for kind in TRANSFER_PROTOCOLS:
        for path in sorted(root.rglob(f"{kind}_results.json")):
            try:
                r = read_result(path, ProtocolResult)
            except DataError as exc:
                _skip(path, exc, skipped, reasons)
                continue
            cols = [str(c) for c in r.columns]
            summary: dict[str, tuple[float, float | None]] = {
                c: (float(r.summary[c]["mean"]), float(r.summary[c]["std"])) for c in cols}
            found.append(ProtocolRow(kind=kind, method=str(r.method), backbone=_backbone_label(r.backbone),
                                     dataset=str(r.dataset), columns=cols, summary=summary,
                                     seeds=list(r.seeds or []), path=str(path)))
    return found


def base2new_averages(results: list[ProtocolRow]) -> list[ProtocolRow]:
    """Per (method, backbone) with several datasets: average base and new, H of the averages (CoCoOp's Table 1)."""
    by: dict[tuple[str, str], dict[str, ProtocolRow]] = defaultdict(dict)
    for r in results:
        if r.kind == "base2new":
            by[(r.method, r.backbone)].setdefault(r.dataset, r)
    out = []
    for (method, bb), per in sorted(by.items()):
        if len(per) < 2:
            continue
        base = statistics.fmean(r.summary["base"][0] for r in per.values())
        new = statistics.fmean(r.summary["new"][0] for r in per.values())
        out.append(ProtocolRow(kind="base2new", method=method, backbone=bb, dataset="average",
                               columns=["base", "new", "H"], datasets=sorted(per),
                               summary={"base": (base, None), "new": (new, None),
                                        "H": (harmonic_mean(base, new), None)}))
    return out


# ------------------------------------------------------------------------------------ test-time adaptation
TtaKey = tuple[str, str, str]  # (method label: "tpt", "tpt+coop", ...; backbone label; target dataset)


@dataclass
class TtaRun:
    """One target of one ``tta_results.json``: its row (accuracy, ece, cost, ...) and the file's path."""

    row: dict[str, Any]
    path: str


def collect_tta(root: Path, skipped: list[str], reasons: dict[str, str] | None = None) -> dict[TtaKey, list[TtaRun]]:
    """(method label, backbone, target) -> the target's row of every ``tta_results.json`` below ``root`` (one per
    seed of a sweep), in path order. The per-target files of ``tta_targets/`` are not read: the result file
    of a protocol holds them all."""
    groups: dict[TtaKey, list[TtaRun]] = defaultdict(list)
    for path in sorted(root.rglob("tta_results.json")):
        try:
            r = read_result(path, TestTimeResult)
        except DataError as exc:
            _skip(path, exc, skipped, reasons)
            continue
        for target in r.targets:
            groups[(r.label, _backbone_label(r.backbone), target)].append(TtaRun(dict(r.per_target[target]), str(path)))
    return dict(groups)


# ------------------------------------------------------------------------------------ OOD
@dataclass
class OodRun:
    """One seed's OOD result and the folder it was found in."""

    result: OodResult
    folder: str

    @property
    def seed(self) -> int | None:
        return self.result.seed


def _ood_shots(r: OodResult, path: Path, root: Path) -> int | None:
    """The run's shot count: its ``shots`` field (written by ``vlprompt ood`` for a learned prompt), else a
    ``<k>shots`` folder of a sweep's layout (zero-shot runs, older results), else None."""
    if isinstance(r.shots, int) and not isinstance(r.shots, bool):
        return int(r.shots)
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError:
        parts = path.parent.parts
    found = [int(m.group(1)) for part in parts if (m := re.fullmatch(r"(\d+)shots", part))]
    return found[-1] if found else None


def ood_order(item: tuple[OodKey, Any]) -> tuple[Any, ...]:
    """Sort key of ``(OodKey, runs)`` items: method, backbone, ID dataset, then shots (unknown first)."""
    key = item[0]
    return (*key[:3], -1 if key[3] is None else key[3])


def ood_name(key: OodKey) -> str:
    """``locoop|ViT-B-16|imagenet`` (+ ``|16shots`` when the shots are known): the report.json key."""
    return "|".join(key[:3]) + ("" if key[3] is None else f"|{key[3]}shots")


def collect_ood(root: Path, skipped: list[str], reasons: dict[str, str] | None = None) -> dict[OodKey, list[OodRun]]:
    """(method, backbone, ID dataset, shots) -> the ``ood_results.json`` of each seed, lowest seed first."""
    groups: dict[OodKey, list[OodRun]] = defaultdict(list)
    for path in sorted(root.rglob("ood_results.json")):
        try:
            r = read_result(path, OodResult)
        except DataError as exc:
            _skip(path, exc, skipped, reasons)
            continue
        if not (r.method and r.id_dataset):
            _skip(path, ValueError("no 'method' or 'id_dataset'"), skipped, reasons)
            continue
        key = (str(r.method), _backbone_label(r.backbone), str(r.id_dataset), _ood_shots(r, path, root))
        groups[key].append(OodRun(r, str(path.parent)))
    for runs in groups.values():
        runs.sort(key=lambda run: (run.seed is None, run.seed or 0, run.folder))
    return dict(groups)


def load_ood_scores(run: OodRun) -> dict[str, Any] | None:
    """The per-image scores saved next to an ``ood_results.json`` (``{"id": {score: [...]}, "ood": {set:
    {score: [...]}}}``; None when that run has none or they cannot be read)."""
    path = Path(run.folder) / "ood_scores.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("id"), dict) and isinstance(
        data.get("ood"), dict) else None
