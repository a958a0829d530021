"""The results schema: every result file vlprompt writes, as typed records with a format version.

One module writes and reads them (:func:`write_result`, :func:`read_result`); the trainer, the
sweep, the protocols, OOD evaluation, the API and the report all go through it. Files of every earlier
release still load:

* format 0 (no ``format_version``, no ``kind``): the fields of format 1, without the version and kind;
* format 1: no ``vlprompt_version`` / ``config_digest`` (read as None), and the backbone spelled two ways:
  run metrics and evaluation reports ``{"family", "model", "pretrained", "embed_dim", "text_width"}``,
  protocol and OOD results ``{"model": "<family>:<model>", "pretrained"}`` (``hf:<dir>``; open_clip
  names without a prefix);
* format 2 (this release): every record holds one :class:`BackboneRecord` (``{"family", "model",
  "pretrained"}``), the ``vlprompt_version`` that wrote it and the ``config_digest`` of the resolved
  config it was computed from (:func:`config_digest`).

Records and their files:

============================  =====================  =============================================
record                        file                   written by
============================  =====================  =============================================
:class:`RunResult`            ``metrics.json``       the trainer; a sweep's training-free runs
:class:`EvalResult`           ``eval_*.json`` etc.   ``vlprompt zeroshot`` / ``eval`` (tasks.api)
:class:`ProtocolResult`       ``<kind>_results.json`` base-to-new / DG / cross-dataset protocols
:class:`TestTimeResult`       ``tta_results.json``   the test-time protocol (``vlprompt protocol tta``)
:class:`OodResult`            ``ood_results.json``   ``vlprompt ood``
============================  =====================  =============================================

Accuracy blocks (``test``, ``val`` and the fields of an :class:`EvalResult`) hold ``accuracy``,
``macro_accuracy`` (%), ``n`` (images) and ``per_class`` (class -> % or None).

A record made in code carries this release's version (:data:`vlprompt.core.version.__version__`); one read
from a file carries what the file says (None for formats 0 and 1). :func:`write_result` refuses a record
without a config digest, so every file written from now on has both.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vlprompt.core.backbone_record import BackboneRecord
from vlprompt.core.errors import DataError
from vlprompt.core.io import atomic_write_json
from vlprompt.core.version import __version__

FORMAT_VERSION = 2

#: The protocols of CoOp / CoCoOp over seeds (a :class:`ProtocolResult` each: ``<kind>_results.json``).
TRANSFER_PROTOCOLS = ("base2new", "dg", "xd")
#: The evaluation protocols run by ``vlprompt protocol`` (one ``<kind>_results.json`` each): the transfer
#: protocols and test-time adaptation (``tta``: a :class:`TestTimeResult`).
PROTOCOLS = (*TRANSFER_PROTOCOLS, "tta")
#: What a sweep can run: few-shot training, the protocols, OOD detection, unsupervised (UPL) runs.
SWEEP_PROTOCOLS = ("fewshot", *PROTOCOLS, "ood", "unsupervised")


def _number(value: Any, what: str) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e308:
        raise ValueError(f"{what} must be a finite number, got an integer too large for a float")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{what}' must be non-empty text, got {type(value).__name__}")
    return value


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        shown = type(value).__name__ if not isinstance(value, int) else "an integer out of range"
        raise ValueError(f"'{what}' must be an integer within 64 bits, got {shown}")
    return value


def _accuracy_block(value: Any, what: str) -> dict[str, Any]:
    """Check an accuracy block (``accuracy`` is required; the rest is kept as written)."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping with 'accuracy'")
    _number(value.get("accuracy"), f"{what}.accuracy")
    return value


#: Options left out of :func:`config_digest` (``section.option``): they say where files are (output folder,
#: dataset root, download and feature caches) or how a run shows and keeps its progress (bars, log lines,
#: experiment trackers, checkpoint frequency, rank timeout), not what is computed; so one experiment run in another
#: folder or on another machine's paths, or resumed with other bookkeeping, has the same digest.
DIGEST_EXCLUDED = (
    "train.output_dir", "data.root", "data.feature_cache_dir", "backbone.cache_dir",
    "train.progress", "train.console_log", "train.tensorboard", "train.checkpoint_every", "train.keep_checkpoints",
    "train.dist_timeout_min", "train.loggers", "train.log_every",
)


def config_digest(resolved: Mapping[str, Any]) -> str:
    """The sha256 (hex) of the resolved config (``ExperimentConfig.as_dict()``) without :data:`DIGEST_EXCLUDED`,
    as canonical JSON (keys sorted, no spaces, UTF-8): equal digests mean results of the same experiment."""
    data = copy.deepcopy(dict(resolved))
    for option in DIGEST_EXCLUDED:
        section, name = option.split(".")
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _optional_text(value: Any, what: str) -> None:
    if value is not None:
        _text(value, what)


def _backbone(value: Any, *, optional: bool = False) -> None:
    """A record's ``backbone`` is a :class:`BackboneRecord` (None only where ``optional``)."""
    if not (isinstance(value, BackboneRecord) or (optional and value is None)):
        raise ValueError(f"'backbone' must be a BackboneRecord, got {type(value).__name__}")


@dataclass
class Result:
    """Base of every record: ``kind`` names the record type in the file, ``format_version`` its schema;
    ``vlprompt_version`` the release that wrote it and ``config_digest`` (:func:`config_digest`) the resolved
    config it was computed from (both None in files of formats 0 and 1)."""

    kind: ClassVar[str] = ""
    vlprompt_version: str | None = field(default=__version__, kw_only=True)
    config_digest: str | None = field(default=None, kw_only=True)

    def validate(self) -> None:
        """Raise ValueError naming the first malformed field."""
        _optional_text(self.vlprompt_version, "vlprompt_version")
        if self.config_digest is not None and not (
                isinstance(self.config_digest, str) and re.fullmatch(r"[0-9a-f]{64}", self.config_digest)):
            raise ValueError(f"'config_digest' must be 64 hex digits (sha256), got {self.config_digest!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {"format_version": FORMAT_VERSION, "kind": self.kind}
        out.update(dataclasses.asdict(self))
        return out


@dataclass
class RunResult(Result):
    """One trained (or training-free) run: ``metrics.json`` in its run folder, and what ``vlprompt.train``
    returns (``result.test["accuracy"]`` or ``result.accuracy``, ``result.history``, ``result.to_dict()``)."""

    kind: ClassVar[str] = "run"
    method: str
    dataset: str
    shots: int
    seed: int
    backbone: BackboneRecord
    test: dict[str, Any]
    val: dict[str, Any] | None = None
    epochs: int | None = None
    train_time_s: float | None = None
    skipped_images: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    fit: dict[str, Any] | None = None  # what a fitted method chose (e.g. the C of a linear probe)

    def validate(self) -> None:
        super().validate()
        _text(self.method, "method")
        _text(self.dataset, "dataset")
        _backbone(self.backbone)
        _accuracy_block(self.test, "test")
        if self.val is not None:
            _accuracy_block(self.val, "val")
        _integer(self.shots, "shots")
        _integer(self.seed, "seed")

    @property
    def accuracy(self) -> float:
        return float(self.test["accuracy"])


@dataclass
class EvalResult(Result):
    """Accuracy of a method on one split (``vlprompt zeroshot`` / ``vlprompt eval``)."""

    kind: ClassVar[str] = "eval"
    method: str
    dataset: str
    split: str
    backbone: BackboneRecord
    accuracy: float
    macro_accuracy: float
    n: int
    per_class: dict[str, float | None] = field(default_factory=dict)
    templates: list[str] | None = None
    prompt: str | None = None
    table: str = ""

    def validate(self) -> None:
        super().validate()
        _backbone(self.backbone)
        _number(self.accuracy, "accuracy")


@dataclass
class ProtocolResult(Result):
    """Mean ± std over seeds of a protocol (base-to-new, DG, cross-dataset): ``<kind>_results.json``.

    ``per_seed`` rows map column -> accuracy (plus ``seed``); ``summary`` maps column -> {mean, std}.
    """

    kind: ClassVar[str] = "protocol"
    protocol: str
    method: str
    dataset: str
    backbone: BackboneRecord
    seeds: list[int]
    columns: list[str]
    per_seed: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    table: str = ""

    def validate(self) -> None:
        super().validate()
        _backbone(self.backbone)
        if self.protocol not in TRANSFER_PROTOCOLS:
            raise ValueError(f"'protocol' must be one of {', '.join(TRANSFER_PROTOCOLS)}, got {self.protocol!r}")
        for c in self.columns:
            stats = self.summary.get(c) if isinstance(self.summary, dict) else None
            if not isinstance(stats, dict):
                raise ValueError(f"summary of column {c!r} is missing")
            _number(stats.get("mean"), f"summary[{c!r}].mean")
            _number(stats.get("std"), f"summary[{c!r}].std")


@dataclass
class OodResult(Result):
    """OOD detection of one run: ``ood_results.json`` (metrics per OOD set and score, and their average)."""

    kind: ClassVar[str] = "ood"
    method: str
    id_dataset: str
    scores: list[str]
    per_set: dict[str, dict[str, dict[str, float]]]
    average: dict[str, dict[str, float]]
    backbone: BackboneRecord | None = None  # absent in the earliest OOD files
    id_accuracy: float | None = None
    prompt: str | None = None
    seed: int | None = None
    shots: int | None = None
    temperature: float = 1.0
    convention: str = "ID = positive; higher score = more ID"
    table: str = ""
    #: ``{set: "near" | "far" | None}``: the group each OOD set declares (absent in files before the groups).
    groups: dict[str, str | None] = field(default_factory=dict)
    #: ``{"near" | "far": {score: {"fpr95", "auroc", "aupr"}}}``: the mean over the sets of each group present.
    group_average: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: What the method records about itself (:meth:`~vlprompt.methods.base.PromptMethod.ood_record`: e.g. the
    #: word corpus and its version for NegLabel).
    method_record: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        _backbone(self.backbone, optional=True)
        if not isinstance(self.per_set, dict) or not isinstance(self.average, dict):
            raise ValueError("'per_set' and 'average' must be mappings")
        if not isinstance(self.groups, dict) or not isinstance(self.group_average, dict):
            raise ValueError("'groups' and 'group_average' must be mappings")
        bad = sorted({g for g in self.groups.values() if g not in (None, "near", "far")})
        if bad:
            raise ValueError(f"'groups' values must be near, far or null, got {bad}")
        if not isinstance(self.scores, list):
            raise ValueError("'scores' must be a list")


#: What every target of a :class:`TestTimeResult` holds (besides the optional fields listed there).
TEST_TIME_FIELDS = ("accuracy", "ece", "n", "seconds_per_image", "views_seconds_per_image", "peak_memory_mb",
                    "passes", "n_views", "views", "seed", "order_seed")


@dataclass
class TestTimeResult(Result):
    """Test-time adaptation of one method on target datasets (``vlprompt protocol tta``): ``tta_results.json``
    (all targets) and ``tta_targets/<target>.json`` (one each, what a resumed protocol reuses).

    ``per_target[target]`` holds ``accuracy`` and ``macro_accuracy`` (top-1, %), ``ece`` (expected
    calibration error of the softmax, %, :func:`~vlprompt.core.metrics.expected_calibration_error`), ``n``
    (test images), ``seconds_per_image`` (adapt + predict), ``views_seconds_per_image`` (making the views),
    ``peak_memory_mb`` (accelerator; None on CPU), ``passes`` (mean per image: ``image_forward``,
    ``text_forward``, ``backward``), ``n_views`` (the original included), ``views`` (``augmix``, ``crop``, or
    ``original`` for a method that does not adapt), ``seed`` (of the views) and ``order_seed`` (of the
    stream; None: the dataset's order), ``classes``; ``cache_size`` (entries in an online method's state at
    the end of the stream), ``orders_run`` / ``order_seeds`` (an online method runs ``--orders N`` seeded orders:
    ``accuracy``, ``ece`` and the cost are their mean, ``accuracy_std`` / ``ece_std`` the population standard
    deviation, ``accuracy_by_order`` each; other methods run once) and ``resumed_at`` (per order, the image a
    checkpointed stream resumed from; 0: run in one go).

    ``method`` is the method that ran; ``start_from`` the method of the prompt file it started from
    (TPT+CoOp: ``method="tpt"``, ``start_from="coop"``), ``prompt`` that file.
    """

    __test__ = False  # not a pytest test class, whatever its name
    kind: ClassVar[str] = "tta"
    method: str
    backbone: BackboneRecord
    targets: list[str]
    per_target: dict[str, dict[str, Any]]
    adaptation: str = "none"
    start_from: str | None = None
    prompt: str | None = None
    dataset: str | None = None  # the config's dataset (where a starting prompt was learned)
    protocol: str = "tta"
    table: str = ""

    @property
    def label(self) -> str:
        """The name reports show: ``tpt+coop`` for a method started from another's prompt, else the method."""
        return f"{self.method}+{self.start_from}" if self.start_from else self.method

    def validate(self) -> None:
        super().validate()
        _text(self.method, "method")
        _backbone(self.backbone)
        if self.protocol != "tta":
            raise ValueError(f"'protocol' must be 'tta', got {self.protocol!r}")
        if not isinstance(self.targets, list) or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError("'targets' must be a list of dataset names")
        if not isinstance(self.per_target, dict):
            raise ValueError("'per_target' must map each target to its result")
        for target in self.targets:
            row = self.per_target.get(target)
            if not isinstance(row, dict):
                raise ValueError(f"per_target[{target!r}] is missing")
            missing = [k for k in TEST_TIME_FIELDS if k not in row]
            if missing:
                raise ValueError(f"per_target[{target!r}] lacks {', '.join(missing)}")
            for key in ("accuracy", "ece", "seconds_per_image", "views_seconds_per_image"):
                value = _number(row[key], f"per_target[{target!r}].{key}")
                if value < 0 or (key in ("accuracy", "ece") and value > 100):
                    raise ValueError(f"per_target[{target!r}].{key} must be in 0..100 (percent), got {value!r}"
                                     if key in ("accuracy", "ece") else
                                     f"per_target[{target!r}].{key} must not be negative, got {value!r}")
            _integer(row["n"], f"per_target[{target!r}].n")
            if _integer(row["n_views"], f"per_target[{target!r}].n_views") < 1:
                raise ValueError(f"per_target[{target!r}].n_views must be at least 1")
            if row["peak_memory_mb"] is not None:
                _number(row["peak_memory_mb"], f"per_target[{target!r}].peak_memory_mb")
            if not isinstance(row["passes"], dict):
                raise ValueError(f"per_target[{target!r}].passes must map image_forward / text_forward / "
                                 "backward to passes per image")
            for key, value in row["passes"].items():
                _number(value, f"per_target[{target!r}].passes.{key}")


R = TypeVar("R", bound=Result)
RECORDS: dict[str, type[Result]] = {c.kind: c for c in (RunResult, EvalResult, ProtocolResult, OodResult,
                                                        TestTimeResult)}


def from_dict(cls: type[R], data: Any, *, source: str = "result") -> R:
    """Build a ``cls`` record from a parsed JSON object (any format version this release reads).

    Unknown extra fields of newer writers are ignored; missing required fields or malformed values
    raise :class:`DataError` naming ``source`` and the field. ``vlprompt_version`` is what the object holds
    (None when absent: formats 0 and 1), not this release's.
    """
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"{source}: results format {version!r} is newer than this vlprompt reads "
                        f"({FORMAT_VERSION}); upgrade vlprompt")
    kind = data.get("kind", cls.kind)
    if kind != cls.kind:
        raise DataError(f"{source}: holds a '{kind}' result, not a '{cls.kind}' result")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {"vlprompt_version": None, **{k: v for k, v in data.items() if k in names}}
    try:
        if kwargs.get("backbone") is not None:  # any spelling of formats 0-2 (BackboneRecord.from_any)
            kwargs["backbone"] = BackboneRecord.from_any(kwargs["backbone"])
        record = cls(**kwargs)
        record.validate()
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # overflow: an int too large for float
        raise DataError(f"{source}: not a valid {cls.kind} result ({exc})") from exc
    return record


def write_result(path: str | Path, record: Result) -> dict[str, Any]:
    """Write ``record`` atomically as JSON (with ``format_version`` and ``kind``); return the dict written.

    Raises:
        ValueError: a malformed record, or one without its ``vlprompt_version`` or ``config_digest`` (every
            file written records both; a writer sets ``config_digest=config_digest(cfg.as_dict())``).
    """
    if record.vlprompt_version is None or record.config_digest is None:
        raise ValueError(f"a {record.kind} result is written with its vlprompt_version and config_digest")
    record.validate()
    data = record.to_dict()
    atomic_write_json(path, data)
    return data


def read_result(path: str | Path, cls: type[R]) -> R:
    """Read a ``cls`` record from ``path``; :class:`DataError` (naming the file) when it is unreadable,
    not JSON, or not such a record."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read result file '{path}': {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"result file '{path}' is not valid JSON ({exc})") from exc
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting deeper than Python's stack
        what = "is nested too deeply" if isinstance(exc, RecursionError) else f"holds an unreadable value ({exc})"
        raise DataError(f"result file '{path}' {what}; not a result file vlprompt wrote") from exc
    return from_dict(cls, data, source=f"result file '{path}'")
