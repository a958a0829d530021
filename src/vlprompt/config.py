"""Experiment configuration: YAML files that map 1:1 onto dataclasses.

A config file has five sections::

    method:   {name: coop, n_ctx: 16, ctx_init: null, csc: false, class_token_position: end}
    backbone: {model: RN50-quickgelu, pretrained: openai}
    data:     {dataset: oxford_pets, root: ./data, shots: 16}
    optim:    {lr: 0.002, max_epoch: 200, batch_size: 32, ...}
    train:    {seed: 1, output_dir: runs/coop/oxford_pets/rn50_16shots/seed1}

Every key is checked: an unknown key or a wrong type raises :class:`ConfigError` naming the key
(``optim.lr``) and, for YAML syntax errors, the file, line and column. ``--set key=value``
overrides use the same dotted names; values are parsed as YAML (``--set method.csc=true``).

YAML is read by one strict loader (:func:`parse_yaml`): a key given twice in one mapping is an
error naming the key and both lines; anchors and aliases are allowed, but a document whose
aliases would expand it beyond :data:`MAX_YAML_VALUES` values (an "alias bomb") or that refers to
itself is refused before anything is built. Numbers must be finite and fit the tensors they end
in: floats within float32's range (±3.4e38), integers within 64 bits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import FLOAT_MAX, INT_MAX, INT_MIN, check_choice, check_float, check_int, path_part, shown

if typing.TYPE_CHECKING:
    from vlprompt.methods.capabilities import Capabilities


@dataclass
class BackboneConfig:
    """Which frozen CLIP to use (open_clip name + pretrained tag or weights file)."""

    model: str = field(default="RN50-quickgelu", metadata={"help": "open_clip model name"})
    pretrained: str | None = field(
        default="openai", metadata={"help": "open_clip pretrained tag, local weights file, or null (random)"}
    )
    weight_dtype: str = field(default="fp32", metadata={"help": "dtype of the frozen weights: fp32, fp16 or bf16"})
    cache_dir: str | None = field(default=None, metadata={"help": "open_clip download cache"})

    def __post_init__(self) -> None:
        check_choice(self.weight_dtype, "backbone.weight_dtype", ("fp32", "fp16", "bf16"))


@dataclass
class DataConfig:
    """Dataset, few-shot sampling and loading."""

    dataset: str = field(default="", metadata={"help": "dataset name (oxford_pets, imagefolder, csv, ...)"})
    root: str | None = field(default=None, metadata={"help": "folder holding the dataset(s)"})
    shots: int = field(default=16, metadata={"help": "K images per class for training; -1 = all"})
    fewshot_file: str | None = field(
        default=None,
        metadata={"help": "reuse a saved few-shot split: vlprompt JSON or CoOp's split_fewshot/shot_K-seed_S.pkl"},
    )
    descriptions_file: str | None = field(
        default=None,
        metadata={"help": "class descriptions: JSON {class name: [sentence, ...]} (CoPrompt's gpt_file, CuPL's "
                          "prompts); null = <root>/descriptions/<dataset>.json when it exists"},
    )
    fewshot_sampler: str = field(
        default="auto",
        metadata={"help": "reference (CoOp's images for the seed), stable (independent of listing order), "
                          "lpclip (the images of CoOp's linear-probe script for the seed), "
                          "auto (reference for the CoOp datasets, else stable)"},
    )
    templates: str | list[str] = field(
        default="dataset",
        metadata={"help": "zero-shot templates: dataset, imagenet80, imagenet_select, or a list"},
    )
    subsample_classes: str = field(
        default="all", metadata={"help": "base-to-new: all, base (first half of the classes) or new"}
    )
    on_bad_image: str = field(
        default="stop", metadata={"help": "stop at the first unreadable image, or skip (check all, report, drop)"}
    )
    augment: bool = field(default=True, metadata={"help": "CoOp training augmentation (crop + flip)"})
    cache_features: bool = field(
        default=True, metadata={"help": "without augmentation, encode each training image once (exact)"}
    )
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "also keep encoded image features on disk here, reused across processes"}
    )
    augment_views: int = field(
        default=0, metadata={"help": "opt-in approximation: encode K augmented views per image once and "
                             "sample one per epoch instead of augmenting on the fly (0 = off)"}
    )
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes"})
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "extra dataset-reader options"})

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError("option data.dataset is required (e.g. oxford_pets, imagefolder, csv)")
        if self.shots != -1:
            check_int(self.shots, "data.shots", minimum=1)
        check_int(self.num_workers, "data.num_workers", minimum=0)
        check_choice(self.subsample_classes, "data.subsample_classes", ("all", "base", "new"))
        check_choice(self.on_bad_image, "data.on_bad_image", ("stop", "skip"))
        check_choice(self.fewshot_sampler, "data.fewshot_sampler", ("auto", "reference", "stable", "lpclip"))
        check_int(self.augment_views, "data.augment_views", minimum=0)
        if isinstance(self.options, dict) and "descriptions_file" in self.options:  # the spelling
            options = dict(self.options)
            alias = options.pop("descriptions_file")
            if self.descriptions_file is not None and alias != self.descriptions_file:
                raise ConfigError("give the description file once: data.descriptions_file or "
                                  "data.options.descriptions_file (the same option), not both")
            self.descriptions_file, self.options = alias, options
        if self.descriptions_file is not None and (not isinstance(self.descriptions_file, str)
                                                   or not self.descriptions_file):
            raise ConfigError(f"option data.descriptions_file must be a file path, got {self.descriptions_file!r}")


@dataclass
class OptimConfig:
    """CoOp's optimisation recipe (Dassl): SGD, cosine schedule stepped per epoch, constant warm-up; or AdamW
    (``eps``) with the cosine stepped per iteration (``scheduler_step``), as Tip-Adapter-F, APE-T and CLIP-LoRA."""

    name: str = field(default="sgd", metadata={"help": "optimiser: sgd (CoOp), adam (Dassl's: L2 weight decay in the "
                                                        "gradient; TCP) or adamw"})
    lr: float = field(default=0.002, metadata={"help": "base learning rate"})
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_epoch: int | None = field(
        default=None, metadata={"help": "epochs; null = CoOp's by shots (50 / 100 / 200; ImageNet 50)"}
    )
    iterations: int | None = field(default=None, metadata={
        "help": "training length in optimisation steps instead of epochs (CLIP-LoRA: 500 x shots), rounded up "
                "to whole epochs of the training set; give it or max_epoch, not both"})
    batch_size: int = 32
    warmup_epoch: int = field(default=1, metadata={"help": "epochs at constant warmup_lr before cosine"})
    warmup_lr: float = 1e-5
    lr_scheduler: str = field(default="cosine", metadata={"help": "cosine or constant"})
    scheduler_step: str = field(default="epoch", metadata={
        "help": "epoch (Dassl: the rate changes once per epoch) or iteration (the cosine stepped every step over "
                "max_epoch x steps per epoch, or optim.iterations: Tip-Adapter-F, APE-T, CLIP-LoRA)"})
    eps: float | None = field(default=None, metadata={
        "help": "epsilon of adamw / adam (not sgd); null = torch's default 1e-8 (Tip-Adapter-F: 1e-4, TCP: 1e-3)"})
    min_lr: float = field(default=0.0, metadata={
        "help": "the cosine's floor (CosineAnnealingLR's eta_min; CLIP-LoRA: 1e-6); below optim.lr"})
    test_batch_size: int = 100

    def __post_init__(self) -> None:
        check_choice(self.name, "optim.name", ("sgd", "adam", "adamw"))
        check_float(self.lr, "optim.lr", minimum=0.0, strict=True)
        check_float(self.momentum, "optim.momentum", minimum=0.0)
        check_float(self.weight_decay, "optim.weight_decay", minimum=0.0)
        if self.max_epoch is not None:
            check_int(self.max_epoch, "optim.max_epoch", minimum=1)
        if self.iterations is not None:
            check_int(self.iterations, "optim.iterations", minimum=1)
            if self.max_epoch is not None:
                raise ConfigError("options optim.max_epoch and optim.iterations both set; give one of them "
                                  "(set the other to null)")
        check_int(self.batch_size, "optim.batch_size", minimum=1)
        check_int(self.warmup_epoch, "optim.warmup_epoch", minimum=0)
        check_float(self.warmup_lr, "optim.warmup_lr", minimum=0.0)
        check_choice(self.lr_scheduler, "optim.lr_scheduler", ("cosine", "constant"))
        check_choice(self.scheduler_step, "optim.scheduler_step", ("epoch", "iteration"))
        check_float(self.min_lr, "optim.min_lr", minimum=0.0)
        if self.min_lr >= self.lr:
            raise ConfigError(f"option optim.min_lr ({self.min_lr:g}) is the floor of the cosine and must be below "
                              f"optim.lr ({self.lr:g})")
        if self.eps is not None:
            self.eps = check_float(self.eps, "optim.eps", minimum=0.0, strict=True)
            if self.name == "sgd":
                raise ConfigError(f"option optim.eps is AdamW's epsilon (or Adam's) and has no effect with optim.name "
                                  f"{self.name}; set optim.name=adamw (or adam) or optim.eps=null")
        check_int(self.test_batch_size, "optim.test_batch_size", minimum=1)


@dataclass
class TrainConfig:
    """Run-level options."""

    seed: int = 1
    output_dir: str = field(default="", metadata={"help": "run folder (config, log, checkpoints, results)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    compute_precision: str = field(default="fp32", metadata={"help": "fp32, or amp (bf16 autocast of the step)"})
    eval_every: int = field(default=0, metadata={"help": "validate every N epochs (0 = only at the end)"})
    checkpoint_every: int = field(default=1, metadata={"help": "save a resumable checkpoint every N epochs"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    console_log: bool = field(
        default=True, metadata={"help": "with progress on, also print the run's log lines (a sweep shows bars only)"}
    )
    loggers: list[str] = field(
        default_factory=lambda: ["tensorboard"], metadata={
            "help": "experiment trackers written on rank 0: any of tensorboard, csv, wandb (offline unless WANDB_MODE "
                    "says otherwise), mlflow (a file store in the run folder unless MLFLOW_TRACKING_URI is set); "
                    "[] = none. wandb and mlflow: pip install -e \".[track]\" (docs/reports.md)"})
    log_every: int = field(default=1, metadata={
        "help": "give the trackers the step metrics (loss terms, lr, images/s) every N optimisation steps"})
    tensorboard: bool | None = field(
        default=None, metadata={"help": "older switch: true adds tensorboard to train.loggers, false removes it, "
                                "null leaves train.loggers as it is"})
    compile: bool | str = field(
        default=False, metadata={"help": "torch.compile the training loss step (prompt -> text encoder -> loss): "
                                 "false, true (inductor) or a torch.compile backend name (e.g. aot_eager)"}
    )
    dist_timeout_min: float = field(
        default=120.0, metadata={"help": "under torchrun: how long ranks wait for each other (rank 0 "
                                 "evaluates alone), in minutes"}
    )

    def __post_init__(self) -> None:
        check_int(self.seed, "train.seed", minimum=0)
        check_float(self.dist_timeout_min, "train.dist_timeout_min", minimum=0.0, strict=True)
        if isinstance(self.compile, str) and not self.compile.strip():
            raise ConfigError("option train.compile must be true, false or a torch.compile backend name, got ''")
        check_choice(self.compute_precision, "train.compute_precision", ("fp32", "amp"))
        check_int(self.eval_every, "train.eval_every", minimum=0)
        check_int(self.checkpoint_every, "train.checkpoint_every", minimum=1)
        check_int(self.keep_checkpoints, "train.keep_checkpoints", minimum=1)
        check_int(self.log_every, "train.log_every", minimum=1)
        self.loggers = check_loggers(self.loggers, self.tensorboard)
        self.tensorboard = None  # folded into train.loggers: the saved config says it once


#: The experiment trackers of option ``train.loggers`` (:mod:`vlprompt.engine.tracking` writes them).
LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")


def check_loggers(names: Any, tensorboard: bool | None = None) -> list[str]:
    """Option ``train.loggers`` checked (known names, each once, in the order given), with the older switch
    ``train.tensorboard`` folded in (true adds ``tensorboard``, false removes it, None changes nothing)."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"option train.loggers must be a list of names (e.g. [tensorboard, csv]), got {shown(names)}")
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"option train.loggers: unknown logger{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(repr(n) for n in unknown)}; known: {', '.join(LOGGERS)}")
    out = list(dict.fromkeys(names))
    if tensorboard is True and "tensorboard" not in out:
        out.append("tensorboard")
    elif tensorboard is False:
        out = [n for n in out if n != "tensorboard"]
    return out


@dataclass
class MethodSpec:
    """``method`` section: the registered method name plus its own config dataclass."""

    name: str
    config: Any

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.config)}

    @property
    def capabilities(self) -> Capabilities:
        """The method's capabilities with these options: ``get_method(name).capabilities_for(config)``."""
        from vlprompt.methods.registry import get_method

        return get_method(self.name).capabilities_for(self.config)


@dataclass
class ExperimentConfig:
    method: MethodSpec
    backbone: BackboneConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig

    def resolve_output_dir(self) -> str:
        """``train.output_dir`` with ``{method}``, ``{dataset}``, ``{shots}``, ``{seed}``, ``{model}`` filled in."""
        fields = {"method": self.method.name, "dataset": path_part(self.data.dataset), "shots": self.data.shots,
                  "seed": self.train.seed, "model": self.backbone.model.replace("/", "-")}
        try:
            return self.train.output_dir.format(**fields)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ConfigError(f"option train.output_dir {shown(self.train.output_dir)}: unusable placeholder "
                              f"({exc}); use {', '.join('{' + k + '}' for k in fields)} (write {{{{ and }}}} for "
                              "literal braces)") from exc

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.as_dict(),
            "backbone": dataclasses.asdict(self.backbone),
            "data": dataclasses.asdict(self.data),
            "optim": dataclasses.asdict(self.optim),
            "train": dataclasses.asdict(self.train),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {
    "backbone": BackboneConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


# ---------------------------------------------------------------------------------- typing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


class _OutOfRange(ConfigError):
    """A number of the right kind but out of range: a union of types reports it as it is (``optim.iterations=1e20``
    is too large, not "int or null")."""


def _as_number(value: Any) -> float | None:
    """``value`` as a float when it is a number or numeric text (PyYAML reads ``1e20`` as text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if abs(value) < 1e309 else float("inf") * (1 if value > 0 else -1)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return None


def coerce(value: Any, tp: Any, option: str) -> Any:
    """Check ``value`` against annotation ``tp`` (int, float, str, bool, None, Literal, list, dict, unions)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            try:
                return coerce(value, arm, option)
            except _OutOfRange:
                raise
            except ConfigError as exc:
                errors.append(exc)
        names = " or ".join(_type_name(a) if a is not type(None) else "null" for a in get_args(tp))
        raise ConfigError(f"option {option} must be {names}, got {shown(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"option {option} must be null, got {shown(value)}")
    if tp is Any:
        return value
    if origin is Literal:
        return check_choice(value, option, get_args(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"option {option} must be true or false, got {shown(value)}")
    if tp is int:
        number = _as_number(value)
        out_of_range = number is not None and number == number and not INT_MIN <= number <= INT_MAX  # not NaN
        if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
            return value
        if out_of_range or (isinstance(value, int) and not isinstance(value, bool)):
            size = "large" if number is not None and number > 0 else "small"
            raise _OutOfRange(f"option {option} is out of range: {shown(value)} is too {size} for a 64-bit integer "
                              f"(integers must fit in 64 bits: {INT_MIN} to {INT_MAX})")
        raise ConfigError(f"option {option} must be an integer, got {shown(value)}")
    if tp is float:
        number = _as_number(value)  # PyYAML (YAML 1.1) reads 1e-3 as text
        if number is None:
            raise ConfigError(f"option {option} must be a number, got {shown(value)}")
        if not abs(number) <= FLOAT_MAX:  # also NaN
            raise _OutOfRange(f"option {option} must be a finite number within ±{FLOAT_MAX:.3g} (float32), "
                              f"got {shown(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"option {option} must be text, got {shown(value)}")
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"option {option} must be a list, got {shown(value)}")
        (arm,) = get_args(tp) or (Any,)
        return [coerce(v, arm, f"{option}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"option {option} must be a mapping, got {shown(value)}")
        return dict(value)
    return value


#: Options renamed so that each says what it sets: (section, old key) -> new key. Old keys still load.
RENAMED_OPTIONS = {("backbone", "precision"): "weight_dtype", ("train", "precision"): "compute_precision"}


def _renamed(values: dict[str, Any], section: str) -> dict[str, Any]:
    """``values`` with deprecated keys moved to their new names (a FutureWarning says so)."""
    out = dict(values)
    for (sec, old), new in RENAMED_OPTIONS.items():
        if sec == section and old in out:
            if new in out:
                raise ConfigError(f"options '{section}.{old}' (deprecated) and '{section}.{new}' are both set; "
                                  f"keep only '{section}.{new}'")
            warnings.warn(f"option '{section}.{old}' is deprecated; use '{section}.{new}' (same values)",
                          FutureWarning, stacklevel=3)
            out[new] = out.pop(old)
    return out


def build_dataclass(cls: type, values: dict[str, Any], section: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, checking every key and type."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"section '{section}' must be a mapping of options, got {shown(values)}")
    values = _renamed(values, section)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=2)
            hint = f" Did you mean: {', '.join(f'{section}.{c}' for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown option '{section}.{key}'.{hint} Valid options in '{section}': {', '.join(names)}."
            )
        kwargs[key] = coerce(value, hints[key], f"{section}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"section '{section}': {exc}") from exc


def _build_method(values: Any) -> MethodSpec:
    from vlprompt.methods.registry import get_method

    if not isinstance(values, dict) or not values.get("name"):
        raise ConfigError("section 'method' needs a 'name' (e.g. method: {name: coop})")
    values = dict(values)
    name = values.pop("name")
    entry = get_method(str(name))
    try:
        return MethodSpec(str(name), build_dataclass(entry.config_cls, values, "method"))
    except ConfigError as exc:
        if not str(exc).startswith("unknown option 'method."):
            raise
        raise ConfigError(f"{exc} (options of method '{name}'; --method {name} starts the method section from "
                          f"its defaults, dropping another method's options)") from exc


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a plain nested dict (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping with sections method, backbone, data, optim, train")
    allowed = ["method", *SECTIONS]
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config section '{key}'.{hint} Sections: {', '.join(allowed)}.")
    sections = {name: build_dataclass(cls, raw.get(name) or {}, name) for name, cls in SECTIONS.items()}
    return ExperimentConfig(method=_build_method(raw.get("method") or {"name": "coop"}), **sections)


#: Most values (mapping / list entries, scalars) a YAML document may expand to through its aliases.
MAX_YAML_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (naming the key and both lines)."""

    source = "YAML"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"{self.source}: duplicate key {shown(key_node.value)} at line {line} (first "
                                      f"given at line {seen[key]}); keep only one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node, source: str) -> int:
    """How many values ``root`` expands to when its aliases are copied out; refuses self-reference."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{source}: the alias at line {node.start_mark.line + 1} refers to a value that "
                              "contains it (a recursive alias); write the value out instead")
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        active.discard(key)
        sizes[key] = min(total, MAX_YAML_VALUES + 1)
        return sizes[key]

    return size(root)


def parse_yaml(text: str, source: str = "YAML") -> Any:
    """Parse one YAML document strictly (see module doc); errors are :class:`ConfigError` naming ``source``
    and the line."""
    loader = _StrictLoader(text)
    loader.source = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, source) > MAX_YAML_VALUES:
            raise ConfigError(f"{source}: its aliases (*name) expand it to more than {MAX_YAML_VALUES:,} values "
                              "(an alias bomb?); write the values out or use fewer aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML in {source}{where}: {problem}") from exc
    except RecursionError as exc:
        raise ConfigError(f"invalid YAML in {source}: nested too deeply") from exc
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file (:func:`parse_yaml`); errors become :class:`ConfigError` with file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc}") from exc
    return parse_yaml(text, f"'{path}'")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.001), got '{item}'")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if len(parts) < 2:
            raise ConfigError(f"--set key '{key}' must be section.option (e.g. optim.lr), got '{key}'")
        value = parse_yaml(text, f"--set {key}") if text.strip() else None
        node = raw
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
            node = node[p]
        node[parts[-1]] = value
    return raw


#: The configs shipped inside the package (the repository's ``configs/`` links here): the authors' recipes per
#: method / dataset / backbone / shots, the world's configs and the sweep files.
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_config_names(text: str = "") -> list[str]:
    """The names of the packaged configs containing ``text`` (``coop/dtd/vit_b16_16shots``, ``sweeps/...``)."""
    names = sorted(p.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix()
                   for p in PACKAGED_CONFIGS.rglob("*.yaml"))
    return [n for n in names if text.lower() in n.lower()]


def resolve_config_path(spec: str | Path, what: str = "config file") -> Path:
    """A config file: ``spec`` itself when it is a file, else the packaged config of that name
    (``coop/dtd/vit_b16_16shots``, with or without ``configs/`` in front and ``.yaml`` behind), so that
    ``-c coop/dtd/vit_b16_16shots`` works from any folder of an installed vlprompt."""
    path = Path(spec)
    if path.is_file():
        return path
    name = path.as_posix().strip()
    for prefix in ("./", "configs/"):
        name = name[len(prefix):] if name.startswith(prefix) else name
    candidate = PACKAGED_CONFIGS / (name if name.endswith((".yaml", ".yml")) else name + ".yaml")
    if name and ".." not in Path(name).parts and candidate.is_file():
        return candidate
    close = difflib.get_close_matches(name.removesuffix(".yaml"), packaged_config_names(), n=3, cutoff=0.7)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"{what} '{spec}' does not exist: give a YAML file or the name of a packaged config "
                      f"(`vlprompt config list TEXT` lists them).{hint}")


def start_method(raw: dict[str, Any], method: str | None) -> dict[str, Any]:
    """``--method NAME``: the method section becomes NAME's defaults; the config's method options are kept only
    when it already names NAME (they belong to another method otherwise, e.g. CoOp's n_ctx for zero-shot)."""
    if method is None:
        return raw
    section = raw.get("method")
    if not (isinstance(section, dict) and section.get("name") == method):
        raw["method"] = {"name": method}
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                method: str | None = None) -> ExperimentConfig:
    """Load a YAML config (a file or a packaged config's name; defaults when ``path`` is None), start its method
    section from ``method``'s defaults when given (:func:`start_method`) and apply ``--set`` overrides."""
    raw = read_yaml(resolve_config_path(path)) if path is not None else {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must contain a mapping of sections, not {type(raw).__name__}")
    return config_from_dict(apply_overrides(start_method(raw, method), list(overrides or [])))
