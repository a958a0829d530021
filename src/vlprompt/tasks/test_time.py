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

Every finished target is written at once to ``OUT/tta_targets/<target>.json`` (with its per-image
predictions in ``<target>.predictions.json``); a rerun in the same folder reuses it (nothing finished is
computed again, or lost) and refuses a folder that holds results of another setup. The targets together go to
``OUT/tta_results.json`` (a :class:`~vlprompt.core.results.TestTimeResult`) and ``OUT/tta_results.md``.
"""

from __future__ import annotations

import difflib
import hashlib
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlprompt.config import ExperimentConfig, apply_overrides, config_from_dict
from vlprompt.core.errors import ConfigError, DataError
from vlprompt.core.io import atomic_write_json, atomic_write_text
from vlprompt.core.metrics import accuracy_report, expected_calibration_error
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
    from vlprompt.engine.checkpoint import read_prompt

    path = Path(prompt)
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


def run_target(cfg: ExperimentConfig, target: str, backbone: Any, *, prompt: Path | None, n_views: int | None,
               seed: int, order_seed: int | None, progress: bool,
               augment: str | None = None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Adapt and predict the test split of ``target``: its row of :class:`TestTimeResult`, its per-image
    predictions ``{"label", "pred", "confidence"}`` (test-item order), and the method that ran."""
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.data.registry import get_dataset_info
    from vlprompt.data.test_time_views import views_for
    from vlprompt.engine.run import autocast, seed_everything
    from vlprompt.engine.test_time import adapt_stream

    tcfg = _with(cfg, [f"data.dataset={target}"])
    splits = load_dataset(tcfg.data)
    if not splits.test:
        raise DataError(f"dataset '{target}' has no test images")
    method = _build_method(tcfg, backbone, splits, prompt).to(backbone.device)
    adapts = method.capabilities.adapts_at_test_time
    dataset_views = get_dataset_info(target).test_time_views
    kind = (augment or method.test_time_views(dataset_views)) if adapts else "original"
    count = (n_views or method.test_time_view_count(dataset_views) or DEFAULT_VIEWS) if adapts else 1
    views = views_for(backbone, n_views=count, augmix=kind == "augmix", seed=seed)
    seed_everything(seed)
    with autocast(backbone.device, cfg.train.compute_precision):
        out = adapt_stream(method, splits.test, splits.loader, views, order_seed=order_seed,
                           num_workers=cfg.data.num_workers, progress=progress, desc=target)
    probs = out.logits.float().softmax(dim=-1)
    confidence, preds = probs.max(dim=-1)
    acc = accuracy_report(preds, out.labels, list(splits.classnames))
    row = {"accuracy": acc["accuracy"], "macro_accuracy": acc["macro_accuracy"],
           "ece": expected_calibration_error(probs, out.labels), "n": acc["n"],
           "seconds_per_image": out.seconds_per_image, "views_seconds_per_image": out.views_seconds_per_image,
           "peak_memory_mb": out.peak_memory_mb, "passes": dict(out.cost), "n_views": out.n_views,
           "views": kind, "seed": seed, "order_seed": order_seed, "classes": len(splits.classnames)}
    predictions = {"label": out.labels.tolist(), "pred": preds.tolist(),
                   "confidence": [round(float(c), 6) for c in confidence], "order": list(out.order)}
    return row, predictions, method


def tta(cfg: ExperimentConfig, targets: str | Sequence[str], out_dir: str | Path, *,
                         prompt: str | Path | None = None, n_views: int | None = None, seed: int | None = None,
                         order_seed: int | None = None, progress: bool = False,
                         augment: str | None = None) -> dict[str, Any]:
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
        row, predictions, method = run_target(cfg, target, backbone, prompt=prompt_path, n_views=n_views, seed=seed,
                                              order_seed=order_seed, progress=progress, augment=augment)
        record = _record(cfg, method, backbone.info.record, [target], {target: row}, prompt_path, digest)
        (out / TARGETS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / TARGETS_DIR / f"{target}.predictions.json", predictions)
        write_result(out / TARGETS_DIR / f"{target}.json", record)  # last: its existence means finished
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
                 ("views", "n_views"))


def _cell(row: dict[str, Any], key: str) -> Any:
    value = row.get("passes", {}).get(key) if key in ("image_forward", "text_forward", "backward") else row.get(key)
    if key in ("seconds_per_image", "views_seconds_per_image") and value is not None:
        return f"{value:.4f}"
    return value


def tta_table(result: dict[str, Any]) -> str:
    """One row per target (+ the average over targets of accuracy, ECE and seconds per image): accuracy,
    ECE, images, seconds per image, views seconds per image, peak memory, passes per image, views."""
    targets = result["targets"]
    per = result["per_target"]
    rows = [[t, *[_cell(per[t], key) for _, key in TABLE_COLUMNS]] for t in targets]
    if len(targets) > 1:
        mean = {k: statistics.fmean(per[t][k] for t in targets) for k in ("accuracy", "ece", "seconds_per_image")}
        rows.append(["average", mean["accuracy"], mean["ece"], sum(per[t]["n"] for t in targets),
                     f"{mean['seconds_per_image']:.4f}", *["-"] * (len(TABLE_COLUMNS) - 4)])
    label = f"{result['method']}+{result['start_from']}" if result.get("start_from") else result["method"]
    first = per[targets[0]]
    title = (f"tta - {label} ({result['backbone']['model']}), {first['n_views']} view(s), seed {first['seed']}, "
             f"order seed {first['order_seed']} (top-1 accuracy %, ECE %, passes per image)\n\n")
    return title + markdown_table(["target", *[h for h, _ in TABLE_COLUMNS]], rows)
