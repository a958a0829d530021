"""``vlprompt sweep``: every combination of methods x datasets x shots x seeds x backbones, resumable.

A sweep file (YAML)::

    name: coop_fewshot
    protocol: fewshot              # fewshot | base2new | dg | xd | tta | ood | unsupervised
    config: configs/coop/{dataset}/rn50_{shots}shots.yaml   # optional template; {dataset} {shots} {method}
                                   # filled; or per method: {coop: ..., cocoop: ..., default: ...}
    methods: [coop]                # method.name of each run (optional: the config's)
    datasets: [dtd, eurosat]
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]
    backbones: [{model: RN50-quickgelu, pretrained: openai}]   # optional: the config's
    targets: [imagenetv2, imagenet_sketch]      # dg / xd / tta: target datasets; ood: the OOD sets
    views: 64                      # tta only: views per test image (default 64, TPT's)
    orders: 5                      # tta only: stream orders of online methods (mean ± std; default 1)
    set: [data.root=./data]        # overrides applied to every run
    output_dir: runs/sweeps/coop_fewshot

Each run is an ordinary run folder ``OUT/<method>/<backbone>/<dataset>/<shots>shots/seed<seed>``
(protocols: one folder per (method, backbone, dataset, shots) holding the seed runs).

* ``ood`` (LoCoOp's protocol): each seed's run is trained (nothing to train for ``zeroshot`` and the
  training-free OOD methods: NegLabel, CSP) and then scored against the ``targets`` OOD sets (``NAME`` or
  ``NAME:near`` / ``NAME:far``) with the method's own scores, MCM and GL-MCM into ``<run>/ood/ood_results.json``
  (:func:`vlprompt.tasks.ood.ood_evaluate`: per set, per near / far group and on average).
* ``tta`` (test-time adaptation, :mod:`vlprompt.tasks.test_time`): each seed runs the method on the
  ``targets`` into ``<run>/tta_results.json`` (the seed is the views' seed). A method that learns by training
  (CoOp) is first trained on the dataset (``shots``, seed) and its prompt evaluated on the targets; a method
  written ``A+B`` (e.g. ``tpt+coop``: TPT+CoOp) trains B into ``<run>/start_B`` and adapts A from B's prompt.
  The config of ``A+B`` is the mapping's entry for ``A+B``, else for A (else ``default``); B's is B's entry.
* ``unsupervised`` (UPL's protocol): the dataset's train split is pseudo-labelled once per (method,
  backbone, dataset, K) with the top-K (= ``shots``) most confident zero-shot predictions per class
  (``<folder>/pseudo_labels.json``, shared by the seeds); each seed trains on those labels only.

Finished runs are skipped, so a killed sweep resumes where it stopped; a failing run is reported at the end without
stopping the others. ``vlprompt report OUT`` turns the folder into tables and plots.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlprompt.config import apply_overrides, config_from_dict, read_yaml, resolve_config_path
from vlprompt.core.errors import ConfigError, VlpromptError, user_message
from vlprompt.core.io import atomic_write_json
from vlprompt.core.results import SWEEP_PROTOCOLS, BackboneRecord, RunResult, config_digest, write_result
from vlprompt.core.validate import shown
from vlprompt.tasks.protocols import refuse_test_time_method

SEEDS_INSIDE = ("base2new", "dg", "xd")  # protocol functions that run every seed themselves
NEEDS_TARGETS = ("dg", "xd", "tta", "ood")  # protocols run on the sweep's 'targets'
_KEYS = {"name", "protocol", "config", "methods", "datasets", "shots", "seeds", "backbones", "targets", "set",
         "output_dir", "views", "orders"}


@dataclass
class Sweep:
    name: str
    protocol: str
    output_dir: Path
    datasets: list[str]
    shots: list[int]
    seeds: list[int]
    methods: list[str | None] = field(default_factory=lambda: [None])
    backbones: list[dict[str, Any] | None] = field(default_factory=lambda: [None])
    config: str | dict[str, str] | None = None
    targets: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    views: int | None = None  # tta: views per test image (None: the protocol's default)
    orders: int = 1  # tta: stream orders of an online method (mean ± std over them)


def split_method(spec: str | None) -> tuple[str | None, str | None]:
    """A sweep's method entry ``A+B`` -> ``(A, B)`` (A adapts at test time from B's trained prompt; tta only);
    any other entry -> ``(entry, None)``."""
    if spec is None or "+" not in spec:
        return spec, None
    adapter, _, start = spec.partition("+")
    return adapter.strip(), start.strip()


def _list(raw: dict[str, Any], key: str, default: list[Any], path: str | Path, kind: type | None = None) -> list[Any]:
    """Sweep option ``key``: a non-empty list (of ``kind`` items when given)."""
    value = raw.get(key, default)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"sweep option '{key}' in '{path}' must be a non-empty list, got {shown(value)}")
    if kind is not None:
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, kind)]
        if bad:
            what = "whole numbers" if kind is int else "names"
            raise ConfigError(f"sweep option '{key}' in '{path}' must list {what}, got {shown(bad[0])}")
    return value


def load_sweep(path: str | Path) -> Sweep:
    raw = read_yaml(resolve_config_path(path, "sweep file"))
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file '{path}' must be a mapping")
    unknown = sorted(set(map(str, raw)) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown sweep option(s) {unknown} in '{path}'; valid: {', '.join(sorted(_KEYS))}")
    protocol = raw.get("protocol", "fewshot")
    if protocol not in SWEEP_PROTOCOLS:
        raise ConfigError(f"sweep protocol must be one of {', '.join(SWEEP_PROTOCOLS)}, got {shown(protocol)}")
    for key in ("name", "output_dir"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"sweep option '{key}' in '{path}' must be text, got {shown(raw[key])}")
    for key in ("targets", "set"):
        if not isinstance(raw.get(key, []), list):
            raise ConfigError(f"sweep option '{key}' in '{path}' must be a list, got {shown(raw[key])}")
    backbones = _list(raw, "backbones", [None], path)
    for bb in backbones:
        if bb is not None and not (isinstance(bb, dict) and isinstance(bb.get("model"), str)):
            raise ConfigError(f"sweep option 'backbones' in '{path}' must list mappings like {{model: RN50-quickgelu, "
                              f"pretrained: openai}}, got {shown(bb)}")
    views = raw.get("views")
    if views is not None and (protocol != "tta" or isinstance(views, bool) or not isinstance(views, int)
                              or views < 1):
        raise ConfigError(f"sweep option 'views' in '{path}' is for protocol tta and must be a whole number >= 1, "
                          f"got {shown(views)}")
    orders = raw.get("orders", 1)
    if (orders != 1 and protocol != "tta") or isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ConfigError(f"sweep option 'orders' in '{path}' is for protocol tta and must be a whole number >= 1, "
                          f"got {shown(orders)}")
    name = str(raw.get("name") or Path(path).stem)
    sweep = Sweep(
        name=name, protocol=protocol,
        output_dir=Path(raw.get("output_dir") or f"runs/sweeps/{name}"),
        datasets=[str(d) for d in _list(raw, "datasets", [], path, str)],
        shots=_list(raw, "shots", [16], path, int),
        seeds=_list(raw, "seeds", [1, 2, 3], path, int),
        methods=_list(raw, "methods", [None], path),
        backbones=backbones,
        config=_config_template(raw.get("config"), path),
        targets=[str(t) for t in raw.get("targets", [])],
        overrides=[str(s) for s in raw.get("set", [])],
        views=views,
        orders=orders,
    )
    for method in sweep.methods:
        adapter, start = split_method(method) if isinstance(method, str) else (method, None)
        if start is not None and (protocol != "tta" or not adapter or not start):
            raise ConfigError(f"sweep method {shown(method)} in '{path}': 'A+B' (A adapts at test time from the "
                              "prompt B learns, e.g. tpt+coop) needs protocol tta and two method names")
        template = _template_for(sweep, method)  # every method has a config (a mapping without 'default' may not)
        if template:
            try:
                template.format(dataset="d", shots=1, method="m")
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise ConfigError(f"sweep option 'config' in '{path}': template {shown(template)} has an unusable "
                                  f"placeholder ({exc}); use {{dataset}}, {{shots}} and {{method}}") from exc
    return sweep


def _config_template(value: Any, path: str | Path) -> str | dict[str, str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return value
    raise ConfigError(f"sweep option 'config' in '{path}' must be a file template or a mapping method -> template "
                      f"(with an optional 'default'), got {value!r}")


def _template_for(sw: Sweep, method: str | None) -> str | None:
    """The config template of ``method``: the sweep's string, or its mapping's entry (else 'default')."""
    if not isinstance(sw.config, dict):
        return sw.config
    adapter, _ = split_method(method)
    template = sw.config.get(method or "default", sw.config.get(adapter or "default", sw.config.get("default")))
    if template is None:
        raise ConfigError(f"sweep option 'config' has no entry for method '{method}' and no 'default'")
    return template


def _backbone_name(bb: dict[str, Any] | None) -> str:
    if not bb:
        return "default"
    return f"{bb.get('model')}_{bb.get('pretrained')}".replace("/", "-")


def build_config(sw: Sweep, method: str | None, bb: dict[str, Any] | None, dataset: str, shots: int,
                 seed: int, output_dir: Path, *, progress: bool = False) -> Any:
    """The experiment config of one combination (template config + sweep overrides); with ``progress``
    each run shows its own epoch bar (below the sweep's bar) but not its log lines."""
    raw: dict[str, Any] = {}
    template = _template_for(sw, method)
    if template:
        template = template.format(dataset=dataset, shots=shots, method=method or "")
        loaded = read_yaml(resolve_config_path(template))
        raw = loaded if isinstance(loaded, dict) else {}
    overrides = list(sw.overrides)
    method, _ = split_method(method)  # A+B (tta): the config of A
    if method:
        raw["method"] = {"name": method} if (raw.get("method") or {}).get("name") != method else raw["method"]
    if bb:
        overrides += [f"backbone.model={bb['model']}", f"backbone.pretrained={bb.get('pretrained')}"]
    overrides += [f"data.dataset={dataset}", f"data.shots={shots}", f"train.seed={seed}",
                  f"train.output_dir={output_dir}", f"train.progress={str(progress).lower()}",
                  "train.console_log=false"]
    return config_from_dict(apply_overrides(raw, overrides))


def _run_tta_seed(sw: Sweep, cfg: Any, method: str | None, bb: dict[str, Any] | None, run_dir: Path, dataset: str,
                  shots: int, seed: int, train: Any) -> None:
    """One seed of a ``tta`` sweep into ``run_dir``: the starting prompt trained first where there is one
    (module docstring), then :func:`~vlprompt.tasks.test_time.tta` on the sweep's targets."""
    from vlprompt.tasks.test_time import tta

    _, start = split_method(method)
    prompt = None
    if start is None and cfg.method.capabilities.trainable:
        train(cfg, resume=True)  # the run folder is run_dir itself (a trained method evaluated on the targets)
        prompt = run_dir / "prompt.safetensors"
    elif start is not None:
        if not cfg.method.capabilities.adapts_at_test_time:
            raise ConfigError(f"sweep method '{method}': '{cfg.method.name}' does not adapt at test time; write A+B "
                              f"with a test-time method A (e.g. tpt+{start}), or '{start}' alone to evaluate its "
                              "prompt")
        start_dir = run_dir / f"start_{start}"
        scfg = build_config(sw, start, bb, dataset, shots, seed, start_dir)
        if scfg.as_dict()["backbone"] != cfg.as_dict()["backbone"]:
            raise ConfigError(f"sweep method '{method}': the configs of '{start}' and '{split_method(method)[0]}' "
                              "name different backbones; a prompt starts test-time adaptation on its own backbone")
        if not scfg.method.capabilities.trainable:
            raise ConfigError(f"sweep method '{method}': '{start}' learns nothing to start from; write A+B with a "
                              "trained method B (e.g. tpt+coop)")
        train(scfg, resume=True)
        prompt = start_dir / "prompt.safetensors"
    tta(cfg, sw.targets, run_dir, prompt=prompt, n_views=sw.views, orders=sw.orders, progress=False)


def _run_seed(sw: Sweep, cfg: Any, folder: Path, run_dir: Path, dataset: str, shots: int, seed: int,
              train: Any, method: str | None = None, bb: dict[str, Any] | None = None) -> None:
    """One seed of a per-seed protocol (fewshot, tta, ood, unsupervised) into ``run_dir``."""
    if sw.protocol == "tta":
        _run_tta_seed(sw, cfg, method, bb, run_dir, dataset, shots, seed, train)
        return
    refuse_test_time_method(cfg, sw.protocol)
    trainable = cfg.method.capabilities.trainable
    if sw.protocol == "unsupervised" and trainable:
        from vlprompt.tasks.pseudo_label import pseudo_label

        pseudo = folder / "pseudo_labels.json"
        if not pseudo.exists():  # frozen work shared by the seeds
            pseudo_label(cfg, pseudo, top_k=shots, progress=False)
        cfg.data.fewshot_file = str(pseudo)
    if not trainable and sw.protocol == "ood" and cfg.method.name != "zeroshot":
        pass  # a training-free OOD method (NegLabel, CSP): its OOD result below holds its ID accuracy
    elif not trainable:  # nothing to train (zero-shot): record its accuracy as the run
        from vlprompt.tasks.api import zeroshot

        rep = zeroshot(cfg, progress=False)
        write_result(run_dir / "metrics.json", RunResult(
            method=rep["method"], dataset=dataset, shots=shots, seed=seed, backbone=BackboneRecord.from_any(
                rep["backbone"]), test={k: rep[k] for k in ("accuracy", "macro_accuracy", "n")},
            config_digest=config_digest(cfg.as_dict())))
    else:
        train(cfg, resume=True)  # a finished run (OOD sweep killed before scoring) returns its metrics as is
    if sw.protocol == "ood":
        from vlprompt.tasks.ood import ood_evaluate

        prompt = run_dir / "prompt.safetensors" if trainable else None
        ood_evaluate(cfg, prompt, sw.targets, progress=False, output_dir=run_dir / "ood")


def run_sweep(sw: Sweep, *, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Run (or resume) every job of :func:`~vlprompt.tasks.sweep_jobs.plan_jobs` in order, each through
    :func:`~vlprompt.tasks.sweep_jobs.execute_job`; returns ``{"done", "skipped", "failed": [...]}``."""
    from vlprompt.tasks.sweep_jobs import sweep_lock

    if sw.protocol in NEEDS_TARGETS and not sw.targets:
        raise ConfigError(f"sweep protocol {sw.protocol} needs 'targets' (the target / OOD datasets)")
    with sweep_lock(sw.output_dir):  # one sweep at a time in a folder: a second one is refused at once
        return _run_sweep(sw, progress, log)


def _run_sweep(sw: Sweep, progress: bool, log: Any) -> dict[str, Any]:
    """:func:`run_sweep` once the sweep folder is locked."""
    from vlprompt.tasks.sweep_jobs import execute_job, plan_jobs

    summary: dict[str, Any] = {"sweep": sw.name, "protocol": sw.protocol, "done": 0, "skipped": 0, "failed": []}
    bar = tqdm(plan_jobs(sw), desc=f"sweep {sw.name}", disable=not progress, unit="run")
    try:
        for job in bar:
            bar.set_postfix_str(job.label)
            try:
                summary[execute_job(sw, job, progress=progress, shared=False)] += 1
            except Exception as exc:  # any failure of one run: report it, go on with the others
                msg = user_message(exc) if isinstance(exc, VlpromptError) else f"{type(exc).__name__}: {exc}"
                summary["failed"].append({"run": job.label, "folder": str(sw.output_dir / job.group), "error": msg,
                                          "traceback": traceback.format_exc(limit=3)})
                log(f"FAILED {job.label}: {msg}")
    except BaseException:  # interrupted (Ctrl-C): the summary of what ran is still written
        summary["interrupted"] = True
        raise
    finally:
        summary["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        atomic_write_json(sw.output_dir / "sweep_summary.json", summary)
    return summary
