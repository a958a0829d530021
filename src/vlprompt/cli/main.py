"""``vlprompt`` command line: argument parsing and printing only; the work is in the library.

Every user error is printed as one line ``error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.core.errors import VlpromptError, user_message
from vlprompt.core.results import PROTOCOLS

SEEDS_DEFAULT = "1,2,3"
#: ``vlprompt train``'s run folder when neither the config nor --output-dir gives one
DEFAULT_RUN_DIR = "runs/{method}/{dataset}/{model}_{shots}shots/seed{seed}"
EPILOG = "Docs: README.md. Every option of a config can be overridden with --set section.option=value."


# ------------------------------------------------------------------------------------ helpers
def _add_config_args(p: argparse.ArgumentParser, *, config_required: bool = False) -> None:
    p.add_argument("--config", "-c", required=config_required,
                   help="YAML config file, or a packaged config's name (e.g. coop/dtd/vit_b16_16shots; "
                        "`vlprompt config list` lists them)")
    p.add_argument("--method", help="start the method section from this method's defaults (e.g. --method kgcoop "
                                    "on a CoOp config); the config's method options are dropped unless it names "
                                    "the same method; --set method.<option>=... still applies")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config option, e.g. --set optim.lr=0.001 (repeatable)")
    p.add_argument("--model", help="shortcut for --set backbone.model=...")
    p.add_argument("--pretrained", help="shortcut for --set backbone.pretrained=... (tag or weights file)")
    p.add_argument("--dataset", help="shortcut for --set data.dataset=...")
    p.add_argument("--root", help="shortcut for --set data.root=... (the folder holding the dataset folders; for "
                                  "imagefolder the folder holding train/ and test/, for csv the folder of "
                                  "train.csv / test.csv)")
    p.add_argument("--device", help="shortcut for --set train.device=... (auto, cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _overrides(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> list[str]:
    out = list(args.overrides)
    shortcuts = {"model": "backbone.model", "pretrained": "backbone.pretrained", "dataset": "data.dataset",
                 "root": "data.root", "device": "train.device", **(extra or {})}
    for attr, key in shortcuts.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    if getattr(args, "no_progress", False):
        out.append("train.progress=false")
    return out


def _load_cfg(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    from vlprompt.config import load_config

    return load_config(args.config, _overrides(args, extra), method=getattr(args, "method", None))


def _print_table(text: str) -> None:
    print(text.rstrip())


def _int_list(text: str, option: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; anything else is one error line naming ``option``."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values:
        raise VlpromptError(f"{option} expects comma-separated whole numbers (e.g. 1,2,3), got '{text}'")
    return values


#: Longest error message printed; longer ones keep their start and end (one line, never megabytes).
MAX_ERROR_CHARS = 1000


def _capped(msg: str) -> str:
    msg = " ".join(msg.split("\n")) if "\n" in msg else msg
    if len(msg) <= MAX_ERROR_CHARS:
        return msg
    cut = len(msg) - MAX_ERROR_CHARS + 60
    return f"{msg[:700]} ... [{cut:,} characters left out] ... {msg[-(MAX_ERROR_CHARS - 760):]}"


# ------------------------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace) -> int:
    """Train one run; under ``torchrun`` every process runs this and rank 0 alone prints and writes."""
    from vlprompt.engine.distributed import env_world, shutdown
    from vlprompt.engine.trainer import train

    cfg = _load_cfg(args, {"output_dir": "train.output_dir", "seed": "train.seed", "shots": "data.shots"})
    if not cfg.train.output_dir:  # no config file, or one without a run folder: one per method / data / seed
        cfg.train.output_dir = DEFAULT_RUN_DIR
    try:
        result = train(cfg, resume=args.resume, command=_command_line(args))
    finally:
        shutdown()
    test = result.test
    if env_world()[1] == 0:
        print(f"test accuracy {test['accuracy']:.2f}% (mean per-class {test['macro_accuracy']:.2f}%) - "
              f"results in {cfg.train.output_dir}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command that is running, as a shell takes it back (``vlprompt train -c ... --set ...``)."""
    import shlex

    return shlex.join(["vlprompt", *getattr(args, "argv", [])])


def _under_torchrun() -> bool:
    """True in a process of a multi-process torchrun job (``WORLD_SIZE > 1``)."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


def _rank_prefix() -> str:
    """``[rank N] `` for messages of a torchrun process other than rank 0, else empty."""
    rank = os.environ.get("RANK", "0")
    return f"[rank {rank}] " if _under_torchrun() and rank != "0" else ""


def _prompt_tag(prompt: Path, own: Path) -> str:
    """``""`` for a run's own prompt, else ``_<file stem>-<8 hex digits of its absolute path>``: ``eval --run RUN
    --prompt OTHER`` never overwrites the run's own ``eval_<dataset>_<split>.json`` (nor another prompt's)."""
    import hashlib
    import re

    if prompt.resolve() == own.resolve():
        return ""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", prompt.stem)[:40] or "prompt"
    return f"_{stem}-{hashlib.sha256(str(prompt.resolve()).encode()).hexdigest()[:8]}"


def _prompt_arg(text: str) -> str | Path:
    """A ``--prompt`` value: a path, or an ``hf://owner/name`` reference kept as text (``Path`` would fold ``//``)."""
    from vlprompt.core.hub import is_hub_ref

    return text if is_hub_ref(text) else Path(text)


def cmd_eval(args: argparse.Namespace) -> int:
    from vlprompt.config import load_config
    from vlprompt.core.deploy import refuse_exported
    from vlprompt.core.hub import resolve_prompt_source
    from vlprompt.core.validate import path_part
    from vlprompt.engine.run import RunPaths
    from vlprompt.engine.run_life import load_run_config
    from vlprompt.tasks.api import evaluate

    if args.prompt:
        refuse_exported(args.prompt, "eval")
    prompt: str | Path
    if args.run:
        paths = RunPaths(Path(args.run))
        cfg = load_run_config(paths.root, _overrides(args))
        prompt = _prompt_arg(args.prompt) if args.prompt else paths.prompt
        tag = _prompt_tag(resolve_prompt_source(prompt), paths.prompt)
        default_out = paths.root / f"eval_{path_part(cfg.data.dataset)}_{args.split}{tag}.json"
    else:
        if not (args.config and args.prompt):
            raise VlpromptError("vlprompt eval needs --run RUN_FOLDER, or both --config and --prompt")
        cfg = load_config(args.config, _overrides(args), method=args.method)
        prompt = _prompt_arg(args.prompt)
        name = f"eval_{path_part(cfg.data.dataset)}_{args.split}.json"
        default_out = Path(name) if isinstance(prompt, str) else prompt.with_name(name)  # hf://: not in the cache
    output = Path(args.output) if args.output else default_out
    report = evaluate(cfg, prompt, split=args.split, output=output, allow_new_classes=args.allow_new_classes,
                      progress=cfg.train.progress)
    _print_table(report["table"])
    print(f"saved {output}")
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from vlprompt.tasks.api import zeroshot

    extra = {"templates": "data.templates"}
    cfg = _load_cfg(args, extra)
    report = zeroshot(cfg, split=args.split, output=args.output, progress=cfg.train.progress)
    _print_table(report["table"])
    if args.output:
        print(f"saved {args.output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from vlprompt.tasks.api import duplicate_names, predict

    if args.topk < 1:
        raise VlpromptError(f"--topk must be at least 1, got {args.topk}")
    classnames = None
    if args.classnames:
        path = Path(args.classnames)
        if not path.is_file():
            raise VlpromptError(f"class-name file '{path}' does not exist (option --classnames)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VlpromptError(f"cannot read class-name file '{path}' (option --classnames): {exc}") from exc
        numbered = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
        classnames = [name for _, name in numbered]
        if not classnames:
            raise VlpromptError(f"class-name file '{path}' (option --classnames) lists no class names; write one "
                                "class name per line")
        dups = duplicate_names(classnames)
        if dups:
            where = [f"{name!r} on lines {' and '.join(str(numbered[i][0]) for i in pos)}"
                     for name, pos in list(dups.items())[:5]]
            more = f" (and {len(dups) - 5} more)" if len(dups) > 5 else ""
            raise VlpromptError(f"class-name file '{path}' (option --classnames) lists the same class name more "
                                f"than once: {'; '.join(where)}{more}; class names must be distinct")
    results = predict(args.prompt, args.images, topk=args.topk, classnames=classnames, device=args.device,
                      device_option="--device")
    for r in results:
        top = ", ".join(f"{name} ({p:.3f})" for name, p in r["top"])
        print(f"{r['image']}: {top}")
    if args.json:
        from vlprompt.core.io import atomic_write_json

        atomic_write_json(args.json, results)
        print(f"saved {args.json}")
    return 0


def cmd_interpret(args: argparse.Namespace) -> int:
    from vlprompt.core.deploy import refuse_exported
    from vlprompt.engine.checkpoint import load_prompt
    from vlprompt.methods.coop.interpret import nearest_words

    refuse_exported(args.prompt, "interpret")
    method = load_prompt(args.prompt)
    ctx = getattr(method, "ctx", None)
    if ctx is None:
        raise VlpromptError(f"prompt file '{args.prompt}' has no learned context vectors to interpret")
    words = nearest_words(ctx, method.backbone, topk=args.topk)
    n_ctx = ctx.shape[-2]
    for i, row in enumerate(words):
        cls = f"[{method.classnames[i // n_ctx]}] " if ctx.dim() == 3 else ""
        print(f"{cls}ctx {i % n_ctx + 1:2d}: " + "  ".join(f"{w!r} ({d:.3f})" for w, d in row))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlprompt.cli.demo import QUICK, results_table, run_demo

    shots = _int_list(args.shots, "--shots") if args.shots else None
    jobs = args.jobs if args.jobs is not None else (args.threads or available_cores())
    if jobs < 1:
        raise VlpromptError(f"--jobs must be at least 1, got {jobs}")
    kwargs: dict[str, Any] = {"seed": args.seed, "epochs": args.epochs, "device": args.device,
                              "methods": not args.coop_only, "jobs": jobs}
    if args.quick:
        kwargs.update(QUICK)
    if shots:
        kwargs["shots"] = shots
    if args.datasets:
        kwargs["datasets"] = args.datasets.split(",")
    if args.model:
        kwargs["model"] = args.model
    if args.pretrained is not None:
        kwargs["pretrained"] = None if args.pretrained in ("none", "") else args.pretrained
    if not args.output_dir:
        import time

        args.output_dir = str(Path("vlprompt_demo") / time.strftime("run-%Y%m%d-%H%M%S"))
    results = run_demo(args.output_dir, **kwargs)
    print()
    print(f"Test accuracy (%) on the embedded world, {results['model']} ({results['pretrained']}), "
          f"seed {results['seed']}, {results['seconds']:.0f} s:")
    print(results_table(results).rstrip())
    print(f"saved {Path(args.output_dir) / 'demo_results.json'}, demo_results.md and demo_plot.png")
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from vlprompt.core.validate import path_part
    from vlprompt.tasks.protocols import base_to_new, transfer

    if args.protocol == "tta":
        return _protocol_tta(args)
    given = [opt for opt, value in (("--prompt", args.prompt), ("--views", args.views), ("--seed", args.seed),
                                    ("--order-seed", args.order_seed), ("--augment", args.augment),
                                    ("--orders", args.orders), ("--save-every", args.save_every))
             if value is not None]
    if given:
        raise VlpromptError(f"{', '.join(given)}: only for protocol tta (test-time adaptation), not "
                            f"{args.protocol} (which runs --seeds)")
    cfg = _load_cfg(args)
    seeds = _int_list(args.seeds or SEEDS_DEFAULT, "--seeds")
    out = Path(args.output_dir or f"runs/{args.protocol}/{cfg.method.name}/{path_part(cfg.data.dataset)}")
    if args.protocol == "base2new":
        result = base_to_new(cfg, seeds, out, progress=cfg.train.progress)
    else:
        targets = [t for t in (args.targets or "").split(",") if t]
        result = transfer(cfg, targets, seeds, out, kind=args.protocol, progress=cfg.train.progress)
    _print_table(result["table"])
    print(f"saved {out / (args.protocol + '_results.json')}")
    return 0


def _protocol_tta(args: argparse.Namespace) -> int:
    """``vlprompt protocol tta``: test-time adaptation on target datasets (vlprompt.tasks.test_time)."""
    from vlprompt.tasks.test_time import resolve_targets, tta

    if args.seeds is not None:
        raise VlpromptError("protocol tta runs one seed of the views (--seed S); run it again with another "
                            "--seed (and --output-dir) for more")
    if args.prompt:
        from vlprompt.core.deploy import refuse_exported

        refuse_exported(args.prompt, "protocol tta")
    targets = resolve_targets(args.targets)
    cfg = _load_cfg(args, {"seed": "train.seed"})
    out = Path(args.output_dir or f"runs/tta/{cfg.method.name}/seed{cfg.train.seed}")
    result = tta(cfg, targets, out, prompt=args.prompt, n_views=args.views, order_seed=args.order_seed,
                 progress=cfg.train.progress, augment=args.augment, orders=args.orders or 1,
                 save_every=args.save_every)
    _print_table(result["table"])
    print(f"saved {out / 'tta_results.json'} (finished targets in {out / 'tta_targets'})")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from vlprompt.tasks.pseudo_label import format_report, pseudo_label

    cfg = _load_cfg(args)
    backbones = []
    for spec in (args.backbones or "").split(","):
        if spec.strip():
            model, _, tag = spec.strip().partition(":")
            backbones.append((model, tag or None))
    report = pseudo_label(cfg, args.output, backbones=backbones, top_k=args.topk, cache_dir=args.cache_dir,
                          progress=cfg.train.progress)
    print(format_report(report))
    print(f"saved {args.output} (train with --set data.fewshot_file={args.output})")
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    from vlprompt.core.deploy import refuse_exported
    from vlprompt.engine.run import RunPaths
    from vlprompt.tasks.ood import ood_evaluate

    if args.prompt:
        refuse_exported(args.prompt, "ood")
    prompt = _prompt_arg(args.prompt) if args.prompt else (RunPaths(Path(args.run)).prompt if args.run else None)
    if args.run and not args.config:
        args.config = str(RunPaths(Path(args.run)).config)
    if not args.config:
        raise VlpromptError("vlprompt ood needs --config (or --run RUN_FOLDER)")
    cfg = _load_cfg(args)
    out = Path(args.output_dir) if args.output_dir else (Path(args.run) / "ood" if args.run else Path("ood_results"))
    result = ood_evaluate(cfg, prompt, [s for s in args.ood_sets.split(",") if s],
                          scores=[s for s in (args.scores or "").split(",") if s] or None,
                          temperature=args.temperature,
                          output_dir=out, progress=cfg.train.progress)
    _print_table(result["table"])
    print(f"saved {out / 'ood_results.json'}, ood_results.md and ood_scores.png")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from vlprompt.tasks.sweep import load_sweep, run_sweep

    sw = load_sweep(args.sweep)
    if args.output_dir:
        sw.output_dir = Path(args.output_dir)
    sw.overrides += list(args.overrides)
    if args.status or args.launcher or args.shard is not None:  # --shard "" (an unset variable) is refused
        return _sweep_elsewhere(args, sw)
    summary = run_sweep(sw, progress=not args.no_progress)
    print(f"sweep {sw.name}: {summary['done']} runs done, {summary['skipped']} already finished, "
          f"{len(summary['failed'])} failed - results in {sw.output_dir} (vlprompt report {sw.output_dir})")
    for f in summary["failed"]:
        print(f"  failed: {f['run']}: {f['error']}")
    return 1 if summary["failed"] else 0


def _sweep_elsewhere(args: argparse.Namespace, sw: Any) -> int:
    """``vlprompt sweep --launcher`` / ``--shard`` / ``--status`` (vlprompt.tasks.launchers, sweep_jobs)."""
    from vlprompt.tasks.sweep_jobs import parse_shard, run_shard, sweep_status

    if args.status:
        status = sweep_status(sw.output_dir)
        for line in status["warnings"]:  # damaged state files: left out, one line each
            print(f"warning: {_capped(line)}", file=sys.stderr)
        print(f"sweep {sw.name} in {sw.output_dir} ({', '.join(status['files']) or 'no state file'}): "
              + ", ".join(f"{n} {s}" for s, n in status["counts"].items()))
        for run_id, r in sorted(status["runs"].items()):
            if r.get("status") == "failed":
                print(f"  failed: {run_id}: {r.get('error')} (log {r.get('log')})")
            elif r.get("status") == "interrupted":
                print(f"  interrupted: {run_id}: its launcher / shard process is gone; run the same sweep command "
                      "again to resume it from its last checkpoint")
        return 0
    shard = parse_shard(args.shard) if args.shard is not None else None
    if args.launcher:
        from vlprompt.tasks.launchers import LaunchOptions, launch_sweep

        opts = LaunchOptions(launcher=args.launcher, partition=args.partition, gpus_per_run=args.gpus_per_run,
                             cpus_per_task=args.cpus_per_task, time_min=args.time, mem_gb=args.mem_gb,
                             account=args.account, max_parallel=args.max_parallel, retries=args.retries,
                             wait=not args.no_wait, sbatch=dict(kv.split("=", 1) for kv in args.sbatch),
                             setup=list(args.setup))
        summary = launch_sweep(sw, opts, shard=shard)
    else:
        assert shard is not None  # without a launcher, _sweep_elsewhere is reached only with --shard
        summary = run_shard(sw, shard)
    where = f" shard {summary['shard']}" if summary.get("shard") else ""
    running = f", {summary['running']} submitted and running" if summary.get("running") else ""
    print(f"sweep {sw.name}{where}: {summary['done']} runs done, {summary['skipped']} already finished, "
          f"{summary.get('resubmitted', 0)} resubmitted, {len(summary['failed'])} failed{running} - results in "
          f"{sw.output_dir} (vlprompt report {sw.output_dir}; vlprompt sweep {args.sweep} --status)")
    for f in summary["failed"]:
        print(f"  failed: {f['run']}: {f['error']}" + (f" (log {f['log']})" if f.get("log") else ""))
    return 1 if summary["failed"] else 0


def _export_hub(args: argparse.Namespace) -> int:
    from vlprompt.tasks.hub_export import export_hub

    if not args.source:
        raise VlpromptError("vlprompt export --format hub needs a run folder or prompt file (a learned prompt to "
                            "upload); zero-shot CLIP has nothing learned")
    info = export_hub(args.source, args.output, repo_id=args.repo_id)
    print(f"exported {info['method']} prompt ({len(info['classnames'])} classes) as a Hugging Face folder -> "
          f"{info['path']} ({', '.join(info['files'])}); upload it with: hf upload {info['repo_id']} {info['path']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vlprompt.tasks.export import export_classifier, load_source, zeroshot_source

    if args.format == "hub":
        return _export_hub(args)
    if args.source:
        method, extra = load_source(args.source)
    elif args.config or args.model:
        method, extra = zeroshot_source(_load_cfg(args))
    else:
        raise VlpromptError("vlprompt export needs a run folder or prompt file, or --config / --model (zero-shot CLIP)")
    info = export_classifier(method, args.output, fmt=args.format, extra=extra)
    shape = info["input"]["shape"]
    print(f"exported {info['method']} ({len(info['classnames'])} classes; input uint8 {shape}) -> {args.output}; "
          f"max |logit difference| vs vlprompt {info['max_abs_diff']:.2g} (tolerance {info['tolerance']:.2g})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vlprompt.report.build import make_report

    papers = [p for p in (args.paper or "").split(",") if p.strip()]
    result = make_report(args.runs, args.output, papers=papers, paper_file=args.paper_file)
    for line in result["warnings"]:  # files left out (unreadable, malformed): one line each
        print(_capped(line), file=sys.stderr)
    _print_table(result["markdown"])
    names = [Path(f).name for f in result["files"]]
    n_plots = len(result["plots"])
    print(f"saved {', '.join(names)}{f' and {n_plots} plot files' if n_plots else ''} in {args.output or args.runs}")
    return 0


def cmd_import_coop(args: argparse.Namespace) -> int:
    from vlprompt.backbones.build import build_backbone
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.engine.checkpoint import save_prompt
    from vlprompt.tasks.import_coop import import_dassl_prompt

    cfg = _load_cfg(args)
    backbone = build_backbone(cfg.backbone, shared=False)
    classnames = load_dataset(cfg.data).classnames
    method = import_dassl_prompt(args.checkpoint, backbone, classnames,
                                 class_token_position=args.class_token_position)
    save_prompt(args.output, method, extra={"imported_from": str(args.checkpoint), "dataset": cfg.data.dataset})
    print(f"imported {method.method_name} prompt ({method.ctx.shape[-2]} context tokens) -> {args.output}; "
          f"evaluate with: vlprompt eval -c {args.config} --prompt {args.output}")
    return 0


def cmd_import_split(args: argparse.Namespace) -> int:
    from vlprompt.data.pipeline import import_reference_split

    cfg = _load_cfg(args)
    info = import_reference_split(args.split, cfg.data, args.output)
    print(f"imported {info['train']} train / {info['val']} val images of {info['classes']} classes from "
          f"{args.split} -> {args.output} (train with --set data.fewshot_file={args.output})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from vlprompt.cli.listing import list_models

    return list_models(args.filter)


def cmd_datasets(args: argparse.Namespace) -> int:
    from vlprompt.data.registry import list_datasets

    print("\n".join(list_datasets()))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``vlprompt config list [TEXT]`` / ``vlprompt config show NAME``: the packaged configs, one resolved."""
    import yaml

    from vlprompt.config import load_config, packaged_config_names

    if args.action == "list":
        names = packaged_config_names(args.name or "")
        if not names:
            raise VlpromptError(f"no packaged config name contains '{args.name}'; `vlprompt config list` lists all")
        print("\n".join(names))
        return 0
    if not args.name:
        raise VlpromptError("vlprompt config show needs a config (file or packaged name) or a method name")
    from vlprompt.core.catalog import method_names

    is_method = not Path(args.name).is_file() and args.name in method_names() and not args.config
    path = None if is_method else args.name
    overrides = _overrides(args)
    missing_dataset = not any(o.startswith("data.dataset=") for o in overrides)
    if is_method and missing_dataset:  # a method's defaults: the dataset is the user's to give
        overrides.insert(0, "data.dataset=REQUIRED")
    cfg = load_config(path, overrides, method=args.name if is_method else args.method)
    text = yaml.safe_dump(cfg.as_dict(), sort_keys=False, default_flow_style=False)
    if is_method and missing_dataset:
        text = text.replace("dataset: REQUIRED", "dataset: REQUIRED  # e.g. dtd, imagefolder (with data.root), csv")
    source = f"method {args.name}'s defaults" if is_method else f"{args.name}"
    print(f"# resolved config: {source}; train with: vlprompt train -c FILE (after saving this), or add --set\n"
          + text.rstrip())
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from vlprompt.cli.listing import list_methods

    return list_methods(list(args.names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlprompt",
        description="Prompt learning (zero-shot CLIP, CoOp, ...) on frozen open_clip models.",
        epilog=EPILOG,
    )
    from vlprompt.core.version import __version__

    parser.add_argument("--version", action="version", version=f"vlprompt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="learn a prompt (from a config, or from flags alone)", epilog=EPILOG,
                       description="Train a prompt method (CoOp, ...) on a dataset; writes a run folder. Without "
                                   "--config, the method's defaults and vlprompt's (CoOp's optimiser) plus the "
                                   "flags: vlprompt train --method coop --model ViT-B-16 --pretrained openai "
                                   "--dataset dtd --root data --shots 16. Run folder by default: "
                                   + DEFAULT_RUN_DIR.replace("{", "<").replace("}", ">") + ".")
    _add_config_args(p)
    p.add_argument("--output-dir", "-o", help="run folder (shortcut for --set train.output_dir=...)")
    p.add_argument("--seed", type=int, help="shortcut for --set train.seed=...")
    p.add_argument("--shots", type=int, help="shortcut for --set data.shots=...")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output folder from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a learned prompt", epilog=EPILOG,
                       description="Evaluate a learned prompt on a dataset split (default: the run's own test split).")
    p.add_argument("--run", "-r", help="run folder made by `vlprompt train`")
    p.add_argument("--prompt", "-p", help="prompt file (.safetensors); default: RUN/prompt.safetensors")
    _add_config_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--allow-new-classes", action="store_true",
                   help="evaluate a unified prompt on other classes (cross-dataset / domain generalisation)")
    p.add_argument("--output", help="results JSON (a .md table is written next to it); default with --run: "
                                    "RUN/eval_<dataset>_<split>.json, for another --prompt "
                                    "RUN/eval_<dataset>_<split>_<prompt name>-<hash>.json")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("zeroshot", help="zero-shot CLIP accuracy", epilog=EPILOG,
                       description="Zero-shot CLIP with CoOp's per-dataset templates or a prompt ensemble.")
    _add_config_args(p)
    p.add_argument("--templates", help="dataset (default), imagenet80, imagenet_select, or a template with {}")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--output", help="results JSON (a .md table is written next to it)")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("predict", help="classify images with a learned prompt",
                       description="Top-k classes for image files / folders with a learned prompt file, or with a "
                                   "classifier written by `vlprompt export` (docs/deploy.md).",
                       epilog="A TorchScript file (.pt / .ts) runs code when it is loaded: load only files you "
                              "exported (or trust).")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--prompt", "-p", required=True,
                   help="prompt file (.safetensors) from `vlprompt train`, or a classifier from `vlprompt export` "
                        "(.onnx; .pt / .ts TorchScript, which runs code when loaded: load only files you exported)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--classnames", help="text file with one class name per line (unified prompts only)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the predictions to this JSON file")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("interpret", help="nearest vocabulary words of learned context vectors",
                       description="CoOp's interpretation: nearest token embeddings to each context vector.")
    p.add_argument("prompt", help="prompt file (.safetensors)")
    p.add_argument("--topk", type=int, default=3)
    p.set_defaults(func=cmd_interpret)

    p = sub.add_parser("demo", help="zero-shot CLIP vs CoOp on the embedded synthetic world (no downloads)",
                       description="Runs zero-shot CLIP and CoOp at several shot counts on the synthetic world "
                                   "with the shipped world CLIP; prints a table, saves JSON + a plot.")
    p.add_argument("--output-dir", "-o", help="where results and run folders go (default: a new "
                                              "vlprompt_demo/run-<time> folder)")
    p.add_argument("--shots", help="comma-separated shot counts (default 1,4,16)")
    p.add_argument("--datasets", help="comma-separated world datasets of the CoOp table (default world_shapes,"
                                      "world_objects,world_scenes,world_positions,world_textures,world_patterns)")
    p.add_argument("--coop-only", action="store_true",
                   help="skip the CoCoOp base-to-new, UPL and LoCoOp OOD sections")
    p.add_argument("--quick", action="store_true",
                   help="a first look in about 10 s: world_shapes and world_scenes, 1 and 4 shots, no methods "
                        "section (--datasets / --shots still apply)")
    p.add_argument("--jobs", type=int, help="worker processes for the demo's independent pieces (one thread each; "
                                            "default: --threads, else the cores this process may use); 1 runs "
                                            "everything in this process. The numbers do not depend on it")
    p.add_argument("--epochs", type=int, default=50, help="CoOp epochs per run (default 50)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model", help="backbone (default: the shipped world CLIP)")
    p.add_argument("--pretrained", help="pretrained tag or weights file of --model")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("protocol", help="base-to-new / domain generalisation / cross-dataset over seeds; "
                                        "test-time adaptation (tta)",
                       epilog=EPILOG,
                       description="Run an evaluation protocol of CoOp/CoCoOp for the config's method over "
                                   "several seeds; prints mean ± std. Finished seed runs are reused. Or (tta) "
                                   "adapt the config's method at test time on target datasets, one image at a "
                                   "time: accuracy, ECE and cost per target; finished targets are reused.")
    p.add_argument("protocol", choices=list(PROTOCOLS),
                   help="base2new: train on base classes, test base and new; dg: domain generalisation; "
                        "xd: cross-dataset transfer; tta: test-time adaptation (TPT's tables)")
    _add_config_args(p, config_required=True)
    p.add_argument("--seeds", help=f"comma-separated seeds (default {SEEDS_DEFAULT})")
    p.add_argument("--targets", help="comma-separated target datasets (dg, xd, tta); for tta also the groups "
                                     "imagenet_shifts and cross_dataset")
    p.add_argument("--output-dir", "-o", help="folder for the per-seed runs and the results")
    g = p.add_argument_group("test-time adaptation (tta)")
    g.add_argument("--prompt", "-p", help="prompt file to start from (TPT+CoOp), or to evaluate with a method that "
                                          "does not adapt")
    g.add_argument("--views", type=int, help="views per test image, the original included (default 64, TPT's)")
    g.add_argument("--seed", type=int, help="seed of the views (default: train.seed)")
    g.add_argument("--order-seed", type=int, help="shuffle the test stream with this seed (default: dataset order)")
    g.add_argument("--orders", type=int, help="online methods (tda, dpe, boostadapter): run the stream in N seeded "
                                              "orders (--order-seed, +1, ...) and report mean ± std (default 1)")
    g.add_argument("--save-every", type=int, help="checkpoint each stream every N images (also every 60 s); a "
                                                  "killed run continues mid-stream when run again")
    g.add_argument("--augment", choices=("augmix", "crop"),
                   help="views on every target (default: the method's choice for the dataset: AugMix for TPT / "
                        "C-TPT on all but the ImageNet sets, crops for Zero / MTA)")
    p.set_defaults(func=cmd_protocol)

    p = sub.add_parser("pseudo-label", help="UPL: zero-shot pseudo-labels for the unlabeled train split",
                       epilog=EPILOG,
                       description="Zero-shot CLIP pseudo-labels (top-K most confident per class) of the training "
                                   "images, written as a split file that `vlprompt train` accepts.")
    _add_config_args(p, config_required=True)
    p.add_argument("--output", "-o", required=True, help="pseudo-label split file (.json) to write")
    p.add_argument("--topk", type=int, default=16, help="images kept per class (default 16)")
    p.add_argument("--backbones", help="ensemble, e.g. RN50-quickgelu:openai,ViT-B-16-quickgelu:openai "
                                       "(default: the config's backbone)")
    p.add_argument("--cache-dir", help="where per-backbone probabilities are cached (default: next to --output)")
    p.set_defaults(func=cmd_pseudo_label)

    p = sub.add_parser("ood", help="OOD detection (MCM, GL-MCM, NegLabel, ...): FPR95, AUROC, AUPR per OOD set and "
                                   "near / far group", epilog=EPILOG,
                       description="Score ID test images and OOD sets with a learned prompt, a training-free OOD "
                                   "method of the config (NegLabel, CSP) or zero-shot CLIP; ID = positive.")
    p.add_argument("--run", "-r", help="run folder made by `vlprompt train` (uses its config and prompt)")
    p.add_argument("--prompt", "-p", help="prompt file; omit for zero-shot CLIP")
    _add_config_args(p)
    p.add_argument("--ood-sets", required=True,
                   help="comma-separated OOD dataset names or image folders, each optionally NAME:near or NAME:far "
                        "(default: the dataset's declared group)")
    p.add_argument("--scores", default=None,
                   help="comma-separated: the method's own (e.g. neglabel), mcm, glmcm, maxlogit, energy "
                        "(default: the method's own, mcm, glmcm)")
    p.add_argument("--temperature", type=float, default=1.0, help="T of MCM / GL-MCM (default 1)")
    p.add_argument("--output-dir", "-o", help="where the JSON, table and histogram go")
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("sweep", help="run methods x datasets x shots x seeds x backbones (resumable)",
                       description="Run every combination of a sweep file; finished runs are skipped, failures "
                                   "reported at the end. See vlprompt.tasks.sweep for the file format.")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--output-dir", "-o", help="override the sweep's output_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("running elsewhere (docs/distributed.md)")
    g.add_argument("--launcher", choices=["slurm", "local"],
                   help="submit each run as a job: SLURM through submitit, or local processes")
    g.add_argument("--shard", metavar="I/N", help="only shard I of N (0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/8")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--gpus-per-run", type=int, default=1, help="GPUs per run (> 1: data-parallel; 0: CPU)")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--time", type=int, default=240, help="minutes per job (default 240)")
    g.add_argument("--mem-gb", type=float)
    g.add_argument("--max-parallel", type=int, default=16, help="jobs running at once (default 16)")
    g.add_argument("--retries", type=int, default=2, help="resubmissions of a failed job (default 2)")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="more #SBATCH options")
    g.add_argument("--setup", action="append", default=[], metavar="CMD", help="shell line run before each job")
    g.add_argument("--no-wait", action="store_true", help="SLURM: submit and return (rerun to watch / resubmit)")
    g.add_argument("--status", action="store_true", help="print the state of the sweep's runs and exit")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("export", help="a learned classifier as one ONNX / TorchScript graph (docs/deploy.md)",
                       epilog=EPILOG,
                       description="Image encoder + class text features (+ normalisation) as one graph with the "
                                   "class names in its metadata; runs without vlprompt or torch (onnxruntime).")
    p.add_argument("source", nargs="?", help="run folder or prompt file; omit for zero-shot CLIP of --config")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "hub"],
                   help="onnx / torchscript: one graph; hub: a Hugging Face model folder (prompt, config.json, model "
                        "card) to upload with `hf upload`, loaded as --prompt hf://owner/name")
    p.add_argument("--output", "-o", required=True,
                   help="file to write (.onnx; .pt or .ts for TorchScript); a new folder for --format hub")
    p.add_argument("--repo-id", help="--format hub: the owner/name it will be uploaded as (for the model card)")
    _add_config_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="tables and plots from a folder of runs",
                       description="Mean ± std tables (Markdown, CSV, JSON) of few-shot runs, protocol results "
                                   "(base2new, dg, xd), test-time adaptation (tta) and OOD results, a comparison "
                                   "of methods, and plots "
                                   "(accuracy vs shots, base/new/H bars, OOD score histograms).")
    p.add_argument("runs", help="folder with run folders (e.g. a sweep's output_dir)")
    p.add_argument("--output", help="where report.* go (default: the runs folder)")
    p.add_argument("--paper", metavar="NAMES",
                   help="show published numbers next to ours: comma-separated papers of the shipped data "
                        "(cocoop) or 'all'")
    p.add_argument("--paper-file", help="published numbers from this JSON file instead (same format as "
                                        "vlprompt/report/paper_results.json)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("import-coop", help="import a prompt trained with the published CoOp / CoCoOp code",
                       description="Reads prompt_learner/model.pth.tar-N (weights_only, nothing executed) and "
                                   "writes a vlprompt prompt file for the config's backbone and dataset classes.")
    p.add_argument("checkpoint", help="Dassl checkpoint, e.g. output/.../prompt_learner/model.pth.tar-50")
    _add_config_args(p, config_required=True)
    p.add_argument("--output", "-o", required=True, help="prompt file to write (.safetensors)")
    p.add_argument("--class-token-position", default="end", choices=["end", "middle", "front"],
                   help="CoOp's CLASS_TOKEN_POSITION used in training (not stored in the checkpoint)")
    p.set_defaults(func=cmd_import_coop)

    p = sub.add_parser("import-split", help="convert CoOp's split_fewshot/shot_K-seed_S.pkl to a few-shot JSON",
                       description="Reads the pickled few-shot split of a reference (CoOp / Dassl) run without "
                                   "executing pickled code, finds its images in the dataset (data.dataset, "
                                   "data.root) and writes vlprompt's few-shot JSON for data.fewshot_file.")
    p.add_argument("split", help="e.g. DATA/oxford_pets/split_fewshot/shot_16-seed_1.pkl")
    _add_config_args(p)
    p.add_argument("--output", "-o", required=True, help="few-shot JSON to write")
    p.set_defaults(func=cmd_import_split)

    p = sub.add_parser("models", help="list every open_clip architecture: tower kinds, the methods that run on "
                                      "it, pretrained tags")
    p.add_argument("--filter", help="only names containing this text")
    p.set_defaults(func=cmd_models)
    sub.add_parser("datasets", help="list dataset names").set_defaults(func=cmd_datasets)
    p = sub.add_parser("config", help="the packaged configs: list them, show one resolved (to start from)",
                       epilog=EPILOG, description="vlprompt config list [TEXT]: packaged config names (use them "
                       "with -c NAME anywhere). vlprompt config show NAME|METHOD [--set ...]: the resolved config, "
                       "every option written out, as YAML to save and edit.")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("name", nargs="?", help="list: text the names contain; show: a config file, a packaged "
                                           "config's name or a method name")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("methods", help="list methods; with names, their options and defaults")
    p.add_argument("names", nargs="*", help="methods to show in full (options, defaults, help)")
    p.set_defaults(func=cmd_methods)
    for name, command in sub.choices.items():
        if name not in ("methods", "models", "datasets", "config", "report", "import-split"):
            command.add_argument("--threads", type=int, metavar="N",
                                 help=f"CPU threads for torch (default: $OMP_NUM_THREADS, else the {available_cores()} "
                                      "cores this process may use); give each of several runs on one machine its "
                                      "share")
    return parser


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads for torch's kernels (None: $OMP_NUM_THREADS when set, else every core this
    process may use); the environment carries the number to DataLoader workers and a sweep's local jobs.
    Returns the number used."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else available_cores()
    if threads < 1:
        raise VlpromptError(f"--threads must be at least 1, got {threads}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:  # already imported (library use, tests): tell it directly
        sys.modules["torch"].set_num_threads(threads)
    return threads


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "no_progress", False):
        from vlprompt.backbones.hf import quiet_progress_bars

        quiet_progress_bars()  # transformers' bars too, where it is imported
    try:
        if getattr(args, "threads", None) is not None or "torch" not in sys.modules:
            set_threads(getattr(args, "threads", None))
        if args.func is not cmd_train and _under_torchrun():
            raise VlpromptError(f"only `vlprompt train` runs under torchrun (several processes); run "
                                f"`vlprompt {args.command}` as a single process")
        return int(args.func(args) or 0)
    except VlpromptError as exc:
        if not getattr(exc, "relayed", False):  # a copy of rank 0's error under torchrun: rank 0 prints it
            print(f"{_rank_prefix()}error: {_capped(user_message(exc))}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (`vlprompt models | head`): nothing more to say
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished checkpoints and results are kept (resume with --resume)", file=sys.stderr)
        return 130
    except OSError as exc:  # a place that cannot be written or read (read-only disk, a file in the way, ...)
        if exc.filename is None:
            raise
        from vlprompt.core.io import write_error

        print(f"{_rank_prefix()}error: {_capped(str(write_error(exc.filename, exc, 'use')))}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # errors re-raised from DataLoader workers keep their message
        if "Original Traceback" in str(exc) and "Error" in str(exc).splitlines()[-1]:
            print(f"error: {_capped(user_message(exc))}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
