"""``vlprompt export RUN --format hub -o DIR``: a learned prompt as a Hugging Face Hub model folder.

The folder is uploaded as it is (``hf upload owner/name DIR``) and used from the local cache after
``hf download owner/name`` as ``vlprompt.load_prompt("hf://owner/name")`` / ``--prompt hf://owner/name``
(:mod:`vlprompt.core.hub`). It holds:

* ``prompt.safetensors``: the run's prompt file, byte for byte (learned tensors, metadata, checksum);
* ``config.json``: what the prompt is (``library_name``, method and its options, backbone, base model,
  class names, templates, the image preprocessing, dataset, shots, seed, the command that trains it);
* ``README.md``: the model card, its metadata block written with ``huggingface_hub``'s ``ModelCardData``
  (``library_name: vlprompt``, ``base_model``, ``datasets``, ``metrics``, tags and a ``model-index`` with the
  run's accuracies from ``metrics.json``);
* ``train_config.yaml`` and ``metrics.json``: the run's resolved config and result, when the source is a run
  folder (``vlprompt train -c train_config.yaml`` trains the prompt again).

The folder is staged next to ``DIR`` and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.core.hub import CONFIG_FILE, DEFAULT_PROMPT_FILE, PREFIX, REPO_ID, is_hub_ref, parse_repo_id
from vlprompt.core.io import atomic_write_json, atomic_write_text, write_error

HUB_FORMAT = "vlprompt-hub"
HUB_VERSION = 1
TRAIN_CONFIG = "train_config.yaml"
METRICS = "metrics.json"
#: Class names listed in the model card (all of them are in config.json).
CARD_CLASSES = 50


def _repo_like(text: Any) -> bool:
    return isinstance(text, str) and bool(REPO_ID.fullmatch(text)) and not os.path.exists(text)


def base_model_id(backbone: dict[str, Any]) -> str | None:
    """The Hub repository of the frozen backbone, when there is one: an ``hf`` model's id, an open_clip
    ``hf-hub:owner/name`` model, or the repository open_clip records for a pretrained tag (``ViT-B-16`` +
    ``openai`` -> ``timm/vit_base_patch16_clip_224.openai``); None for local files and random init."""
    family, model, pretrained = backbone.get("family", "open_clip"), backbone.get("model"), backbone.get("pretrained")
    if not isinstance(model, str):
        return None
    if family == "hf":
        return model if _repo_like(model) else None
    if family != "open_clip":
        return None
    if model.startswith("hf-hub:"):
        return model[len("hf-hub:"):].strip("/") or None
    if not isinstance(pretrained, str) or not pretrained:
        return None
    try:
        import open_clip

        hub = open_clip.get_pretrained_cfg(model, pretrained).get("hf_hub")
    except Exception:  # an unknown model / tag (a registered file, a plugin's weights): no Hub repository
        return None
    hub = hub.strip("/") if isinstance(hub, str) else None
    return hub if hub and _repo_like(hub) else None


def dataset_id(dataset: Any) -> str | None:
    """The Hub dataset id of a run's ``data.dataset`` (``hf:owner/name``), else None."""
    if isinstance(dataset, str) and dataset.startswith("hf:"):
        rest = dataset[len("hf:"):]
        return rest if _repo_like(rest) else None
    return None


def _run_files(source: Path) -> tuple[Path | None, Path | None]:
    """``(metrics.json, config.yaml)`` of the run folder ``source`` is (or whose prompt file it is), when present."""
    from vlprompt.engine.run import RunPaths

    root = source if source.is_dir() else (source.parent if source.name == DEFAULT_PROMPT_FILE else None)
    if root is None:
        return None, None
    paths = RunPaths(root)
    return (paths.metrics if paths.metrics.is_file() else None), (paths.config if paths.config.is_file() else None)


def _read_metrics(path: Path | None) -> Any:
    if path is None:
        return None
    from vlprompt.core.results import RunResult, read_result

    try:
        return read_result(path, RunResult)
    except VlpromptError:
        return None  # an unreadable / older metrics file: the card goes without results


def _training_command(meta: dict[str, Any], config: Path | None) -> str | None:
    """The command recorded with the run, else ``vlprompt train -c train_config.yaml`` when its config is kept."""
    recorded = meta.get("command")
    if isinstance(recorded, str) and recorded.strip():
        return recorded.strip()
    return f"vlprompt train -c {TRAIN_CONFIG}" if config is not None else None


def hub_config(method: Any, meta: dict[str, Any], *, base_model: str | None, command: str | None) -> dict[str, Any]:
    """The folder's ``config.json`` (JSON-serialisable)."""
    from vlprompt.core.version import __version__
    from vlprompt.tasks.export import classifier_metadata

    preprocess = classifier_metadata(method, "hub", None)["preprocess"]
    return {
        "library_name": "vlprompt", "format": HUB_FORMAT, "version": HUB_VERSION, "vlprompt_version": __version__,
        "prompt_file": DEFAULT_PROMPT_FILE, "method": method.method_name, "method_config": meta.get("config", {}),
        "backbone": meta.get("backbone", {}), "base_model": base_model, "classnames": list(method.classnames),
        "templates": list(method.context.templates), "preprocessing": preprocess,
        "dataset": meta.get("dataset"), "shots": meta.get("shots"), "seed": meta.get("seed"),
        "epochs": meta.get("epochs"), "command": command,
    }


def _card(config: dict[str, Any], result: Any, repo_id: str, *, has_config: bool, has_metrics: bool) -> str:
    """The model card: ``ModelCardData``'s metadata block and a Markdown body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = config.get("dataset")
    ds_id = dataset_id(dataset)
    evals = []
    if result is not None:
        for split, block in (("test", result.test), ("validation", result.val)):
            if block:
                evals.append(EvalResult(task_type="image-classification", dataset_type=ds_id or str(dataset),
                                        dataset_name=str(dataset), dataset_split=split, metric_type="accuracy",
                                        metric_name=f"{split} accuracy (%)",
                                        metric_value=round(float(block["accuracy"]), 2)))
    name = repo_id.rsplit("/", 1)[-1]
    data = ModelCardData(
        library_name="vlprompt", base_model=config.get("base_model"), datasets=[ds_id] if ds_id else None,
        metrics=["accuracy"] if evals else None, pipeline_tag="image-classification",
        tags=["vlprompt", "prompt-learning", "clip", str(config["method"])], model_name=name if evals else None,
        eval_results=evals or None,
    )
    bb = config.get("backbone", {})
    backbone = f"{bb.get('model')}" + (f" ({bb.get('pretrained')})" if bb.get("pretrained") else "")
    shots = config.get("shots")
    where = f" on {dataset}" + (f" ({'all' if shots == -1 else shots}-shot, seed {config.get('seed')})"
                                if shots is not None else "") if dataset else ""
    classes = config["classnames"]
    shown = ", ".join(classes[:CARD_CLASSES]) + (f", ... ({len(classes)} in config.json)"
                                                  if len(classes) > CARD_CLASSES else "")
    body = [
        f"# {name}", "",
        f"A learned **{config['method']}** prompt for the frozen CLIP-family model **{backbone}**, trained with "
        f"vlprompt{where} (vlprompt is installed from its source clone: `pip install -e .`). It classifies images "
        f"into {len(classes)} classes.",
        "", "## Use", "",
        "vlprompt reads it from the local Hugging Face cache (it never downloads by itself):", "",
        "```bash", f"hf download {repo_id}", f"vlprompt predict image.jpg --prompt {PREFIX}{repo_id}", "```", "",
        "```python", "import vlprompt", "", f'method = vlprompt.load_prompt("{PREFIX}{repo_id}")  # the backbone is '
        "loaded as recorded", "logits = method(images)  # [B, n_classes]", "```", "",
    ]
    if result is not None:
        body += ["## Results", "", "| split | accuracy (%) | mean per-class (%) | images |", "|---|---|---|---|"]
        for split, block in (("test", result.test), ("val", result.val)):
            if block:
                body.append(f"| {split} | {float(block['accuracy']):.2f} | "
                            f"{float(block.get('macro_accuracy', block['accuracy'])):.2f} | {block.get('n', '')} |")
        body.append("")
    if config.get("command"):
        body += ["## Training", "", "The command that made it:", "", "```bash", str(config["command"]), "```", ""]
        again = f"vlprompt train -c {TRAIN_CONFIG}"
        if has_config:
            if str(config["command"]) != again:
                body += ["Again from the files here:", "", "```bash", again, "```", ""]
            body += [f"`{TRAIN_CONFIG}` is the run's resolved config; its data paths (`data.root`, a local dataset) "
                     "are the trainer's: point them at your copy.", ""]
    files = [f"- `{DEFAULT_PROMPT_FILE}`: the learned tensors and their metadata (safetensors, no pickle)",
             f"- `{CONFIG_FILE}`: method, backbone, class names, templates, preprocessing"]
    if has_config:
        files.append(f"- `{TRAIN_CONFIG}`: the training config")
    if has_metrics:
        files.append(f"- `{METRICS}`: the run's result (vlprompt results schema)")
    body += ["## Files", "", *files, "", "## Classes", "", shown, ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"output folder '{output}' (option -o/--output) already exists and is not empty; "
                          "choose a new folder (the hub folder is uploaded as a whole)")


def export_hub(source: str | Path, output: str | Path, *, repo_id: str | None = None) -> dict[str, Any]:
    """Write the Hub folder of a run folder or prompt file ``source`` to ``output`` (a new or empty folder).

    Args:
        source: a run folder (its prompt, ``metrics.json`` and ``config.yaml``) or a prompt file.
        output: the folder to write.
        repo_id: ``owner/name`` the folder will be uploaded as (for the card's snippets); default
            ``<your-user>/<output folder name>``.

    Returns:
        ``config.json``'s content plus ``path`` and ``files`` (the names written).
    """
    from vlprompt.engine.checkpoint import read_prompt
    from vlprompt.tasks.export import load_source

    if is_hub_ref(source):
        raise ConfigError(f"'{source}' is already a Hub prompt; export the run folder or prompt file it came from")
    output = Path(output)
    if repo_id is not None:
        repo_id, _ = parse_repo_id(repo_id, "option --repo-id")
    repo_id = repo_id or f"<your-user>/{output.resolve().name}"
    _check_output(output)
    method, _info = load_source(source)
    prompt = Path(_info["source"])
    _, meta = read_prompt(prompt)
    metrics_file, config_file = _run_files(Path(source))
    result = _read_metrics(metrics_file)
    if result is not None:
        meta = {"dataset": result.dataset, "shots": result.shots, "seed": result.seed, "epochs": result.epochs, **meta}
    config = hub_config(method, meta, base_model=base_model_id(meta.get("backbone", {})),
                        command=_training_command(meta, config_file))
    card = _card(config, result, repo_id, has_config=config_file is not None, has_metrics=result is not None)
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        shutil.copyfile(prompt, staged / DEFAULT_PROMPT_FILE)
        atomic_write_json(staged / CONFIG_FILE, config)
        atomic_write_text(staged / "README.md", card)
        if config_file is not None:
            shutil.copyfile(config_file, staged / TRAIN_CONFIG)
        if result is not None and metrics_file is not None:
            shutil.copyfile(metrics_file, staged / METRICS)
        files = sorted(p.name for p in staged.iterdir())
        _check_output(output)  # still free (another process may have written it meanwhile)
        if output.is_dir():
            output.rmdir()
        os.replace(staged, output)
    except OSError as exc:
        raise write_error(output, exc) from exc
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return {**config, "path": str(output), "files": files, "repo_id": repo_id}

