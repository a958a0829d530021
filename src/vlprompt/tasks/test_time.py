"""The test-time adaptation protocol (``vlprompt protocol tta``): TPT's two tables, with calibration and cost.

TPT (Shu et al., NeurIPS 2022; azshue/TPT) and its successors (C-TPT, Zero, MTA) adapt CLIP at test time, one
unlabeled test image at a time, and compare on two tables (:data:`TARGET_GROUPS`): the natural distribution
shifts of ImageNet (``imagenet_shifts``: ImageNet, -A, -V2, -R, -Sketch; azshue/TPT README "Main Results") and
the 10 cross-dataset targets of CoOp (``cross_dataset``). For every target dataset the protocol

1. builds the target's test split and the config's method for the target's class names (with the target's
   hand-crafted templates, :func:`~vlprompt.engine.trainer.method_context`);
2. with a prompt file (``--prompt FILE``: a CoOp / CoCoOp / MaPLe ... prompt, rebuilt for the target's class
   names as ``vlprompt eval --allow-new-classes`` rebuilds it) either starts the adapting method from it
   (:meth:`~vlprompt.methods.base.PromptMethod.start_from`: TPT+CoOp, TPT+CoCoOp) or, for a method that does
   not adapt, evaluates the prompt itself (the CoOp row of TPT's tables); a method that neither trains nor
   adapts is zero-shot CLIP with the target's templates (as ``vlprompt zeroshot``);
3. makes each test image's views (:func:`~vlprompt.data.test_time_views.views_for`: the original + 63
   augmented views, AugMix for the fine-grained sets and crops for the ImageNet sets as the dataset registers
   it; seeded per image) and runs the stream (:func:`~vlprompt.engine.test_time.adapt_stream`): episodic
   methods are reset before every image, so the order of the stream (``order_seed``) changes nothing;
4. records top-1 accuracy, the expected calibration error (C-TPT's metric, 20 bins), and the cost next to
   them: seconds per image (adapt + predict, views apart), peak accelerator memory, and the image-tower,
   text-tower and backward passes per image the method reports.

An ``"online"`` method (TDA, DPE, BoostAdapter: state carried across the stream) depends on the stream's order:
``orders`` (``--orders N``) runs it in N seeded orders and reports mean ± std, and each stream is checkpointed
(``OUT/tta_targets/<target>.stream/order-<k>/``, every ``--save-every`` images and every 60 s) so that a killed run
continues mid-stream and ends with the predictions of an uninterrupted one
(:class:`~vlprompt.engine.test_time.StreamCheckpoint`).

Every finished target is written at once to ``OUT/tta_targets/<target>.json`` (with its per-image
predictions in ``<target>.predictions.json``); a rerun in the same folder reuses it (nothing finished is
computed again, or lost) and refuses a folder that holds results of another setup. The targets together go to
``OUT/tta_results.json`` (a :class:`~vlprompt.core.results.TestTimeResult`) and ``OUT/tta_results.md``.
"""

from __future__ import annotations

import difflib
import hashlib
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlprompt.config import ExperimentConfig, apply_overrides, config_from_dict
from vlprompt.core.errors import ConfigError, DataError
from vlprompt.core.io import atomic_write_json, atomic_write_text
from vlprompt.core.metrics import accuracy_report, expected_calibration_error, mean_std
from vlprompt.core.results import TestTimeResult, config_digest, read_result, write_result
from vlprompt.core.tables import markdown_table
from vlprompt.data.registry import TEST_TIME_VIEWS
from vlprompt.data.test_time_views import DEFAULT_VIEWS

#: The papers' two tables as target groups (azshue/TPT README, "Main Results" and "Cross-Dataset
#: Generalization"; the same sets in hee-suk-yoon/C-TPT, FarinaMatteo/zero and MaxZanella/MTA).
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "imagenet_shifts": ("imagenet", "imagenet_a", "imagenetv2", "imagenet_r", "imagenet_sketch"),
    "cross_dataset": ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
                      "sun397", "dtd", "eurosat", "ucf101"),
}
#: Where the finished targets of a protocol folder are kept (one file each).
TARGETS_DIR = "tta_targets"


def resolve_targets(spec: str | Sequence[str] | None) -> list[str]:
    """Target datasets from ``"a,b"``, group names (:data:`TARGET_GROUPS`) or a list of either; each registered
    dataset once, in the order given. :class:`ConfigError` for none, or for a name that is neither."""
    from vlprompt.data.registry import get_dataset_info, list_datasets

    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else (spec or []))]
    parts = [p for p in parts if p]
    if not parts:
        raise ConfigError("the tta protocol needs target datasets (--targets a,b or a group: "
                          f"{', '.join(TARGET_GROUPS)})")
    out: list[str] = []
    for part in parts:
        for name in TARGET_GROUPS.get(part, (part,)):
            try:
                key = get_dataset_info(name).name
            except DataError:
                known = sorted(list_datasets()) + list(TARGET_GROUPS)
                close = difflib.get_close_matches(name, known, n=3)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown target dataset '{name}' (option --targets).{hint} Targets are registered "
                                  f"datasets (vlprompt datasets) or the groups {', '.join(TARGET_GROUPS)}") from None
            if key not in out:
                out.append(key)
    return out


def _with(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    return config_from_dict(apply_overrides(cfg.as_dict(), overrides))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_prompt(prompt: str | Path | None) -> Path | None:
    """The prompt file, checked before anything runs (exists, is a prompt file vlprompt reads)."""
    if prompt is None:
        return None
    from vlprompt.core.deploy import refuse_exported
    from vlprompt.core.hub import resolve_prompt_source
    from vlprompt.engine.checkpoint import read_prompt

    path = resolve_prompt_source(prompt)  # hf://owner/name: the prompt file in the local Hugging Face cache
    if not path.is_file():
        raise DataError(f"prompt file '{path}' does not exist (option --prompt)")
    refuse_exported(path, "protocol tta")
    read_prompt(path)  # damaged or not a prompt file: one clear error now, not after the first target
    return path


def _check_views(n_views: Any) -> int | None:
    if n_views is None:
        return None
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ConfigError(f"--views must be a whole number >= 1 (the original image counts as one view), got "
                          f"{n_views!r}")
    return n_views


def _check_seed(value: Any, option: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError(f"{option} must be a whole number >= 0, got {value!r}")
    return value


def _refuse_untrained(cfg: ExperimentConfig) -> None:
    """A method that learns by training and does not adapt needs its trained prompt file."""
    caps = cfg.method.capabilities
    if caps.trainable and not caps.adapts_at_test_time:
        raise ConfigError(f"method '{cfg.method.name}' learns its prompt by training and does not adapt at test "
                          "time: give its trained prompt file (--prompt FILE), or a test-time method (tpt, ctpt, "
                          "zero, mta) or zeroshot")


def _build_method(cfg: ExperimentConfig, backbone: Any, splits: Any, prompt: Path | None) -> Any:
    """The method evaluated on one target (module docstring, step 2)."""
    from vlprompt.engine.checkpoint import load_prompt
    from vlprompt.engine.trainer import method_context
    from vlprompt.methods.registry import build_method
    from vlprompt.methods.zeroshot import zeroshot_classifier

    caps = cfg.method.capabilities
    context = method_context(cfg, splits)
    source = None
    if prompt is not None:
        source = load_prompt(prompt, backbone, splits.classnames, allow_new_classes=True, context=context)
    if caps.adapts_at_test_time:
        method = build_method(cfg.method.name, backbone, splits.classnames, config=cfg.method.config,
                              context=context)
        if source is not None:
            try:
                method.start_from(source)
            except ValueError as exc:
                raise ConfigError(f"{exc} (option --prompt '{prompt}')") from exc
        return method
    if source is not None:
        return source
    _refuse_untrained(cfg)
    return zeroshot_classifier(backbone, splits.classnames, list(context.templates))


def order_seeds(orders: int, order_seed: int | None) -> list[int | None]:
    """The stream orders of a run: ``[order_seed]`` for one order (None: the dataset's order), else ``orders``
    seeded shuffles ``order_seed, order_seed + 1, ...`` (from 0 when ``order_seed`` is None)."""
    if orders == 1:
        return [order_seed]
    base = 0 if order_seed is None else order_seed
    return [base + k for k in range(orders)]


def run_target(cfg: ExperimentConfig, target: str, backbone: Any, *, prompt: Path | None, n_views: int | None,
               seed: int, order_seed: int | None, progress: bool, augment: str | None = None, orders: int = 1,
               stream_dir: Path | None = None, fingerprint: str = "",
               save_every: int | None = None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Adapt and predict the test split of ``target``: its row of :class:`TestTimeResult`, its per-image
    predictions ``{"label", "pred", "confidence", "order"}`` (test-item order; of the first order, with every
    order's under ``by_order`` when several ran), and the method that ran.

    An ``"online"`` method runs the stream in each of ``orders`` seeded orders (:func:`order_seeds`) and the row
    holds the mean and ``*_std`` over them (``accuracy_by_order`` each); any other method's predictions do not
    depend on the order, so it runs once (``orders_run`` 1). With ``stream_dir``, each order's stream is
    checkpointed in ``stream_dir/order-<k>`` (resumed from there; the caller removes it once the row is saved).
    """
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.data.registry import get_dataset_info
    from vlprompt.engine.run import autocast, seed_everything
    from vlprompt.engine.test_time import StreamCheckpoint, adapt_stream, method_views

    tcfg = _with(cfg, [f"data.dataset={target}"])
    splits = load_dataset(tcfg.data)
    if not splits.test:
        raise DataError(f"dataset '{target}' has no test images")
    method = _build_method(tcfg, backbone, splits, prompt).to(backbone.device)
    views, kind = method_views(method, get_dataset_info(target).test_time_views, n_views=n_views, augment=augment,
                               seed=seed)
    seeds = order_seeds(orders, order_seed) if method.capabilities.adaptation == "online" else [order_seed]
    runs = []
    for k, oseed in enumerate(seeds):
        checkpoint = None
        if stream_dir is not None:
            checkpoint = StreamCheckpoint(stream_dir / f"order-{k}", f"{fingerprint}/{target}/{oseed}")
        seed_everything(seed)
        with autocast(backbone.device, cfg.train.compute_precision):
            out = adapt_stream(method, splits.test, splits.loader, views, order_seed=oseed,
                               num_workers=cfg.data.num_workers, progress=progress,
                               desc=target if len(seeds) == 1 else f"{target} order {k + 1}/{len(seeds)}",
                               checkpoint=checkpoint, save_every=save_every)
        probs = out.logits.float().softmax(dim=-1)
        confidence, preds = probs.max(dim=-1)
        acc = accuracy_report(preds, out.labels, list(splits.classnames))
        runs.append((out, acc, expected_calibration_error(probs, out.labels), preds, confidence))
    first, first_acc = runs[0][0], runs[0][1]
    accuracy, accuracy_std = mean_std([r[1]["accuracy"] for r in runs])
    ece, ece_std = mean_std([r[2] for r in runs])
    row = {"accuracy": accuracy, "accuracy_std": accuracy_std,
           "macro_accuracy": statistics.fmean(r[1]["macro_accuracy"] for r in runs), "ece": ece, "ece_std": ece_std,
           "n": first_acc["n"], "seconds_per_image": statistics.fmean(r[0].seconds_per_image for r in runs),
           "views_seconds_per_image": statistics.fmean(r[0].views_seconds_per_image for r in runs),
           "peak_memory_mb": first.peak_memory_mb,
           "passes": {k: statistics.fmean(r[0].cost.get(k, 0.0) for r in runs) for k in first.cost},
           "cache_size": statistics.fmean(r[0].cache_size for r in runs), "n_views": first.n_views,
           "views": kind, "seed": seed, "order_seed": order_seed, "orders_run": len(seeds),
           "order_seeds": seeds, "accuracy_by_order": [r[1]["accuracy"] for r in runs],
           "ece_by_order": [r[2] for r in runs], "resumed_at": [r[0].resumed_at for r in runs],
           "classes": len(splits.classnames)}
    predictions: dict[str, Any] = {"label": first.labels.tolist(), "pred": runs[0][3].tolist(),
                                   "confidence": [round(float(c), 6) for c in runs[0][4]], "order": list(first.order)}
    if len(runs) > 1:
        predictions["by_order"] = [{"order_seed": oseed, "pred": r[3].tolist(),
                                    "confidence": [round(float(c), 6) for c in r[4]], "order": list(r[0].order)}
                                   for oseed, r in zip(seeds, runs, strict=True)]
    return row, predictions, method


def tta(cfg: ExperimentConfig, targets: str | Sequence[str], out_dir: str | Path, *,
                         prompt: str | Path | None = None, n_views: int | None = None, seed: int | None = None,
                         order_seed: int | None = None, progress: bool = False,
                         augment: str | None = None, orders: int = 1,
                         save_every: int | None = None) -> dict[str, Any]:
    """Run the test-time protocol of ``cfg``'s method on ``targets`` into ``out_dir`` (module docstring).

    Args:
        cfg: the experiment config: its method (``tpt``, ``zeroshot``, ...), backbone and data options
            (``data.root``, ``data.options`` and ``data.templates`` apply to every target).
        targets: dataset names and / or groups (:data:`TARGET_GROUPS`), a list or ``"a,b"``.
        out_dir: the protocol folder (finished targets there are reused).
        prompt: a prompt file to start from (or, for a method that does not adapt, to evaluate).
        n_views: views per image, the original included (default 64, TPT's batch of 63 augmented views + the
            original, azshue/TPT scripts/test_tpt.sh ``bs=64``); a method that does not adapt sees the
            original only.
        seed: seed of the views (default ``train.seed``).
        order_seed: seed of the stream's order (default: the dataset's order).
        progress: progress bars (targets, images).
        augment: ``"augmix"`` or ``"crop"`` views on every target (C-TPT's ImageNet script passes ``--I_augmix``);
            default: the method's choice for the dataset's registered kind (``PromptMethod.test_time_views``).
        orders: stream orders for an online method (``--orders N``: seeded shuffles ``order_seed, order_seed +
            1, ...``; the row reports mean ± std); methods whose predictions do not depend on the order run once.
        save_every: checkpoint each stream every this many images (besides every 60 s); a killed run resumes
            mid-stream from ``OUT/tta_targets/<target>.stream/`` when run again with the same options.

    Returns:
        The :class:`~vlprompt.core.results.TestTimeResult` written to ``out_dir/tta_results.json``, as a dict
        with its Markdown ``table``.
    """
    from vlprompt.backbones.build import build_backbone
    from vlprompt.engine.run import resolve_device

    names = resolve_targets(targets)
    n_views = _check_views(n_views)
    if augment is not None and augment not in TEST_TIME_VIEWS:
        raise ConfigError(f"--augment must be one of {', '.join(TEST_TIME_VIEWS)}, got {augment!r}")
    _check_seed(order_seed, "--order-seed")
    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ConfigError(f"--orders must be a whole number >= 1, got {orders!r}")
    if save_every is not None and (isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1):
        raise ConfigError(f"--save-every must be a whole number of images >= 1, got {save_every!r}")
    if _check_seed(seed, "--seed") is not None:
        cfg = _with(cfg, [f"train.seed={seed}"])
    seed = cfg.train.seed
    prompt_path = _check_prompt(prompt)
    caps = cfg.method.capabilities
    if prompt_path is None:
        _refuse_untrained(cfg)  # before any dataset or backbone is loaded
    effective_views = (n_views or DEFAULT_VIEWS) if caps.adapts_at_test_time else 1
    digest = config_digest({**cfg.as_dict(), "test_time": {
        "n_views": effective_views, "order_seed": order_seed, **({"augment": augment} if augment else {}),
        **({"orders": orders} if orders > 1 else {}),
        "prompt_sha256": _file_sha256(prompt_path) if prompt_path else None}})
    out = Path(out_dir)
    done: dict[str, TestTimeResult] = {}
    for target in names:
        path = out / TARGETS_DIR / f"{target}.json"
        if path.exists():
            old = read_result(path, TestTimeResult)
            if old.config_digest != digest:
                raise ConfigError(f"'{out}' holds the test-time result of {target} for another setup (config, "
                                  "views, seeds or prompt differ); it is kept: use another --output-dir, or delete "
                                  f"'{path}' to compute it again")
            done[target] = old
    device = resolve_device(cfg.train.device)
    backbone = None
    for target in tqdm(names, desc="tta targets", disable=not progress, leave=False):
        if target in done:
            continue
        if backbone is None:
            backbone = build_backbone(cfg.backbone, device=device)
        stream_dir = out / TARGETS_DIR / f"{target}.stream"
        row, predictions, method = run_target(cfg, target, backbone, prompt=prompt_path, n_views=n_views, seed=seed,
                                              order_seed=order_seed, progress=progress, augment=augment,
                                              orders=orders, stream_dir=stream_dir, fingerprint=digest,
                                              save_every=save_every)
        record = _record(cfg, method, backbone.info.record, [target], {target: row}, prompt_path, digest)
        (out / TARGETS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / TARGETS_DIR / f"{target}.predictions.json", predictions)
        write_result(out / TARGETS_DIR / f"{target}.json", record)  # last: its existence means finished
        shutil.rmtree(stream_dir, ignore_errors=True)  # the stream checkpoints are no longer needed
        done[target] = record
    first = done[names[0]]
    record = TestTimeResult(method=first.method, backbone=first.backbone, targets=names,
                            per_target={t: done[t].per_target[t] for t in names}, adaptation=first.adaptation,
                            start_from=first.start_from, prompt=first.prompt, dataset=cfg.data.dataset,
                            config_digest=digest)
    record.table = tta_table(record.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    result = write_result(out / "tta_results.json", record)
    atomic_write_text(out / "tta_results.md", record.table)
    return result


def _record(cfg: ExperimentConfig, method: Any, backbone: Any, targets: list[str], rows: dict[str, Any],
            prompt: Path | None, digest: str) -> TestTimeResult:
    adapts = method.capabilities.adapts_at_test_time
    start = None
    if prompt is not None and adapts:
        from vlprompt.engine.checkpoint import read_prompt

        start = str(read_prompt(prompt)[1]["method"])
    return TestTimeResult(method=method.method_name, backbone=backbone, targets=targets, per_target=rows,
                          adaptation=method.capabilities.adaptation, start_from=start,
                          prompt=str(prompt) if prompt is not None else None, dataset=cfg.data.dataset,
                          config_digest=digest)


#: The columns of a test-time table: (header, key of a target's row or of its ``passes``).
TABLE_COLUMNS = (("accuracy %", "accuracy"), ("ECE %", "ece"), ("n", "n"), ("s / image", "seconds_per_image"),
                 ("views s / image", "views_seconds_per_image"), ("peak MB", "peak_memory_mb"),
                 ("image fwd", "image_forward"), ("text fwd", "text_forward"), ("backward", "backward"),
                 ("views", "n_views"), ("cache", "cache_size"), ("orders", "orders_run"))


def _cell(row: dict[str, Any], key: str) -> Any:
    value = row.get("passes", {}).get(key) if key in ("image_forward", "text_forward", "backward") else row.get(key)
    if key in ("seconds_per_image", "views_seconds_per_image") and value is not None:
        return f"{value:.4f}"
    if key in ("accuracy", "ece") and value is not None and row.get("orders_run", 1) > 1:
        return f"{value:.2f} ± {row.get(key + '_std', 0.0):.2f}"
    if key == "orders_run":
        return value or 1
    if key == "cache_size":
        return f"{value:g}" if value else 0
    return value


def tta_table(result: dict[str, Any]) -> str:
    """One row per target (+ the average over targets of accuracy, ECE and seconds per image): accuracy and ECE
    (mean ± std over the stream orders of an online method), images, seconds per image, views seconds per image,
    peak memory, passes per image, views, cache size at the end of the stream, orders."""
    targets = result["targets"]
    per = result["per_target"]
    rows = [[t, *[_cell(per[t], key) for _, key in TABLE_COLUMNS]] for t in targets]
    if len(targets) > 1:
        mean = {k: statistics.fmean(per[t][k] for t in targets) for k in ("accuracy", "ece", "seconds_per_image")}
        rows.append(["average", mean["accuracy"], mean["ece"], sum(per[t]["n"] for t in targets),
                     f"{mean['seconds_per_image']:.4f}", *["-"] * (len(TABLE_COLUMNS) - 4)])
    label = f"{result['method']}+{result['start_from']}" if result.get("start_from") else result["method"]
    first = per[targets[0]]
    orders = first.get("orders_run", 1)
    stream = (f"{orders} stream orders (seeds {', '.join(str(s) for s in first.get('order_seeds', []))})"
              if orders > 1 else f"order seed {first['order_seed']}")
    title = (f"tta - {label} ({result['backbone']['model']}), {first['n_views']} view(s), seed {first['seed']}, "
             f"{stream} (top-1 accuracy %, ECE %, passes per image)\n\n")
    return title + markdown_table(["target", *[h for h, _ in TABLE_COLUMNS]], rows)
