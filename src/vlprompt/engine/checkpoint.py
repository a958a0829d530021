"""Learned-prompt files and resumable training checkpoints (safetensors + JSON, never pickle).

* Prompt file ``prompt.safetensors``: only the learned tensors (e.g. ``prompt_learner.ctx``),
  with JSON metadata embedded in the safetensors header (method, method config, class names,
  backbone name/tag/dims, format version) and copied to a ``.json`` sidecar for people.
* Training checkpoint ``checkpoints/epoch-NNNN.safetensors``: learned tensors, optimiser state
  tensors and RNG states, plus JSON metadata (epoch, optimiser hyper-parameters, python RNG).

Both are written atomically (:mod:`vlprompt.core.io`); loading never unpickles anything.

Integrity: every file's header also holds ``vlprompt_sha256``, the SHA-256 of its tensors
(:func:`tensor_checksum`: name, dtype, shape and raw bytes of each tensor, in name order). Reading
recomputes it, so a flipped byte inside the tensor data (which safetensors itself cannot notice) is
an error: a resumed run falls back to the previous checkpoint, ``predict`` / ``eval`` refuse the
file. Learned tensors holding NaN / Inf are refused on reading and never written. Files written
before checksums existed (no ``vlprompt_sha256``) are still read.
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlprompt.core.errors import CheckpointError, VlpromptError
from vlprompt.core.hub import resolve_prompt_source
from vlprompt.core.io import atomic_write_json
from vlprompt.core.tensor_io import CHECKSUM_KEY, read_safetensors, tensor_checksum, write_safetensors

__all__ = ["CHECKSUM_KEY", "read_safetensors", "tensor_checksum", "write_safetensors"]  # re-exported (core.tensor_io)

PROMPT_FORMAT = "vlprompt-prompt"
CKPT_FORMAT = "vlprompt-checkpoint"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------- low level
def non_finite(tensors: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _check_format(meta: dict[str, Any], expected: str, path: Path, what: str) -> None:
    fmt = meta.get("format")
    if fmt != expected:
        raise CheckpointError(f"'{path}' is not a vlprompt {what} (format {fmt!r}, expected {expected!r})")
    version = meta.get("version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' was written by a newer vlprompt (format version {version}, this version reads "
            f"<= {FORMAT_VERSION}); upgrade vlprompt to load it."
        )


# ---------------------------------------------------------------------------------- prompts
def prompt_metadata(method: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from vlprompt.core.version import __version__

    return {
        "format": PROMPT_FORMAT,
        "version": FORMAT_VERSION,
        "vlprompt_version": __version__,
        "method": method.method_name,
        "config": dataclasses.asdict(method.config),
        "classnames": list(method.classnames),
        "context": method.context.as_dict(),
        "backbone": method.backbone.info.as_dict(),
        **(extra or {}),
    }


def save_prompt(path: str | Path, method: Any, extra: dict[str, Any] | None = None) -> Path:
    """Save ``method``'s learned tensors + metadata to ``path`` (.safetensors) and a ``.json`` sidecar."""
    path = Path(path)
    meta = prompt_metadata(method, extra)
    tensors = method.learned_state()
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(f"not writing prompt file '{path}': the learned tensors {', '.join(bad)} hold "
                              "non-finite values (NaN / Inf); lower optim.lr or use train.precision=fp32.")
    write_safetensors(path, tensors, meta)
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def read_prompt(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a prompt file written by :func:`save_prompt` (tensors, metadata); ``hf://owner/name`` reads the prompt
    of that repository in the local Hugging Face cache (:func:`vlprompt.core.hub.resolve_prompt_source`)."""
    path = resolve_prompt_source(path)
    tensors, meta = read_safetensors(path, what="prompt file")
    _check_format(meta, PROMPT_FORMAT, path, "prompt file")
    _check_prompt_metadata(meta, path)
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(f"prompt file '{path}' holds non-finite values (NaN / Inf) in {', '.join(bad)}; "
                              "it cannot give meaningful predictions. Train it again (a lower optim.lr).")
    return tensors, meta


def _check_prompt_metadata(meta: dict[str, Any], path: Path) -> None:
    """The fields :func:`load_prompt` relies on, with their types; else one clear error."""
    problems = []
    if not isinstance(meta.get("method"), str) or not meta.get("method"):
        problems.append("'method' must name the method (e.g. \"coop\")")
    if not isinstance(meta.get("backbone"), dict):
        problems.append("'backbone' must be a mapping (model, pretrained, embed_dim, text_width)")
    names = meta.get("classnames")
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        problems.append("'classnames' must be a non-empty list of class names")
    if not isinstance(meta.get("config", {}), dict):
        problems.append("'config' must be a mapping of method options")
    if problems:
        raise CheckpointError(f"prompt file '{path}' has damaged metadata: {'; '.join(problems)}. "
                              "Use a prompt file written by `vlprompt train` or `vlprompt import-coop`.")


def model_string(backbone_meta: dict[str, Any]) -> str:
    """The ``backbone.model`` value that loads a recorded backbone (``hf:`` prefix for that family)."""
    from vlprompt.backbones.base import backbone_families

    family = backbone_meta.get("family", "open_clip")
    prefix = backbone_families()[family].prefix if family in backbone_families() else None
    return f"{prefix or ''}{backbone_meta.get('model', '')}"


def check_backbone_matches(meta: dict[str, Any], backbone: Any, path: str | Path, *,
                           any_weights: bool = False) -> None:
    """Refuse a prompt learned on another backbone, naming what differs (``any_weights``: the weights' tag or file
    may differ, the architecture may not)."""
    saved = meta.get("backbone", {})
    have = backbone.info.as_dict()
    saved = {"family": "open_clip", **saved}  # files written before backbone families were recorded
    keys = [k for k in ("family", "model", "pretrained", "embed_dim", "text_width")
            if k != "pretrained" or not any_weights]
    diffs = [f"{k}: file has {saved.get(k)!r}, backbone has {have.get(k)!r}"
             for k in keys if saved.get(k) != have.get(k)]
    if diffs:
        raise CheckpointError(
            f"prompt file '{path}' was learned on another backbone ({'; '.join(diffs)}). "
            f"Load it with --model {model_string(saved)} --pretrained {saved.get('pretrained')}."
        )


def _holds_class_state(meta: dict[str, Any]) -> bool:
    """Whether the prompt in ``meta`` holds state that belongs to its classes: its method's capability
    ``class_specific`` with the saved options (the defaults when they no longer validate); an unknown method
    is a :class:`ConfigError` naming the known ones."""
    from vlprompt.methods.registry import get_method, make_method_config

    entry = get_method(str(meta.get("method")))
    try:
        config = make_method_config(entry.name, dict(meta.get("config") or {}))
    except (VlpromptError, TypeError, ValueError):
        config = None
    return entry.capabilities_for(config).class_specific


def check_classnames_match(meta: dict[str, Any], classnames: list[str], path: str | Path,
                           *, allow_new_classes: bool) -> None:
    """Refuse a prompt learned for another class list unless transfer to new classes is allowed."""
    saved = list(meta.get("classnames", []))
    if saved == list(classnames):
        return
    class_specific = _holds_class_state(meta)
    if allow_new_classes and not class_specific:
        return
    first = next((i for i, (a, b) in enumerate(zip(saved, classnames)) if a != b), min(len(saved), len(classnames)))
    detail = (f"{len(saved)} classes in the file vs {len(classnames)} here; first difference at index {first}: "
              f"{saved[first] if first < len(saved) else '-'!r} vs "
              f"{classnames[first] if first < len(classnames) else '-'!r}")
    if class_specific:
        raise CheckpointError(f"prompt file '{path}' holds class-specific state ({meta.get('method')}) for another "
                              f"class list ({detail}); it can only be used with its own classes.")
    raise CheckpointError(
        f"prompt file '{path}' was learned for another class list ({detail}). To evaluate a unified "
        "prompt on new classes (cross-dataset / domain generalisation) pass --allow-new-classes."
    )


def load_prompt(
    path: str | Path,
    backbone: Any = None,
    classnames: list[str] | None = None,
    *,
    allow_new_classes: bool = False,
    device: str | torch.device = "cpu",
    context: Any = None,
    any_weights: bool = False,
) -> Any:
    """Rebuild the method stored in a prompt file, ready for inference.

    Args:
        path: a ``.safetensors`` prompt file written by :func:`save_prompt`, or ``hf://owner/name``: the prompt
            folder written by ``vlprompt export --format hub`` and uploaded to the Hugging Face Hub, read from the
            local Hugging Face cache (never downloaded; :mod:`vlprompt.core.hub`).
        backbone: the backbone to use (checked against the file); None = load the one recorded.
        classnames: classes to predict; None = the file's. A different list needs
            ``allow_new_classes`` and a unified (non class-specific) prompt.
        context: the build context (:class:`~vlprompt.methods.base.MethodContext`: the dataset's
            templates) to use; None = the one recorded in the file (the training dataset's).
        any_weights: accept ``backbone`` with other weights than the recorded ones (same architecture; e.g.
            PromptKD's ``method.teacher_pretrained`` pointing at a teacher's moved weights file).
    """
    from vlprompt.backbones.base import load_any_backbone
    from vlprompt.methods.base import MethodContext
    from vlprompt.methods.registry import build_method, make_method_config

    path = resolve_prompt_source(path)
    tensors, meta = read_prompt(path)
    if backbone is None:
        bb = meta.get("backbone", {})
        backbone = load_any_backbone(model_string(bb), bb.get("pretrained"), device=device)
    check_backbone_matches(meta, backbone, path, any_weights=any_weights)
    names = list(meta.get("classnames", [])) if classnames is None else list(classnames)
    check_classnames_match(meta, names, path, allow_new_classes=allow_new_classes)
    config = make_method_config(meta["method"], dict(meta.get("config", {})))
    if context is None:
        saved_context = meta.get("context") or {}
        try:
            context = MethodContext(**{k: saved_context[k] for k in ("templates", "dataset", "descriptions")
                                       if k in saved_context})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"prompt file '{path}' has an unusable build context: {exc}") from exc
    method = build_method(meta["method"], backbone, names, config=config, context=context)
    try:
        method.load_learned_state(tensors)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"prompt file '{path}' does not fit method '{meta['method']}': {exc}") from exc
    return method.eval()


# ---------------------------------------------------------------------------------- training state
_CKPT_RE = re.compile(r"^epoch-(\d{4,})\.safetensors$")


def save_training_state(
    folder: str | Path,
    epoch: int,
    method: Any,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Atomically save everything needed to continue after ``epoch`` (0-based, completed).

    Tensors: ``model.<name>`` learned tensors, ``optim.<i>.<key>`` optimiser state, ``rng.torch``
    (+ ``rng.cuda.<i>``). Metadata: epoch, optimiser param groups, python RNG state, ``extra``.
    Older checkpoints beyond the ``keep`` most recent are removed after the new one is safe.
    Learned tensors holding NaN / Inf are never written: the error keeps the previous checkpoint as
    the newest one, so ``--resume`` (e.g. with a lower learning rate) starts from good weights.
    """
    folder = Path(folder)
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in method.learned_state().items()}
    bad = non_finite(tensors)
    if bad:
        raise VlpromptError(
            f"the learned tensors became non-finite (NaN / Inf in {', '.join(k[len('model.'):] for k in bad)}) at "
            f"epoch {epoch + 1}; training stopped and no checkpoint of this epoch was written (the last good one "
            "is kept). Likely cause: learning rate too high (optim.lr); resume with a lower one: --resume "
            "--set optim.lr=..."
        )
    opt_state = optimizer.state_dict()
    scalar_state: dict[str, dict[str, Any]] = {}
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalar_state.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py_state = random.getstate()
    meta = {
        "format": CKPT_FORMAT,
        "version": FORMAT_VERSION,
        "epoch": epoch,
        "method": method.method_name,
        "param_groups": opt_state["param_groups"],
        "optim_scalars": scalar_state,
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        **(extra or {}),
    }
    path = folder / f"epoch-{epoch + 1:04d}.safetensors"
    write_safetensors(path, tensors, meta)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest_training_state(folder: str | Path, log: Any = None) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """Newest readable checkpoint in ``folder`` (falling back past corrupted ones), or None."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return _read_checkpoint(path)
        except CheckpointError as exc:
            if log is not None:
                log(f"warning: skipping unusable checkpoint: {exc}")
    return None


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and check one training checkpoint (checksum, format, finite tensors, metadata types)."""
    tensors, meta = read_safetensors(path, what="checkpoint")
    _check_format(meta, CKPT_FORMAT, path, "checkpoint")
    bad = non_finite({k: v for k, v in tensors.items() if not k.startswith("rng.")})
    if bad:
        raise CheckpointError(f"checkpoint '{path}' holds non-finite values (NaN / Inf) in {', '.join(bad)}")
    epoch, groups, py = meta.get("epoch"), meta.get("param_groups"), meta.get("rng_python")
    if (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0
            or not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups)
            or not isinstance(meta.get("optim_scalars", {}), dict) or not isinstance(meta.get("history", []), list)
            or not (isinstance(py, list) and len(py) == 3 and isinstance(py[1], list))
            or "rng.torch" not in tensors):
        raise CheckpointError(f"checkpoint '{path}' has damaged metadata (epoch, param_groups, optim_scalars, "
                              "history, rng_python or rng.torch missing or of the wrong type)")
    return tensors, meta


def resume_training_state(
    folder: str | Path, method: Any, optimizer: torch.optim.Optimizer, log: Any = None
) -> tuple[int, dict[str, Any]] | None:
    """Restore the newest checkpoint of ``folder`` that reads, verifies and fits ``method`` / ``optimizer``.

    Checkpoints are tried newest first; one that cannot be read (truncated, checksum mismatch), has
    damaged metadata, non-finite tensors or tensors of another shape is skipped with a warning
    (``log``) and the previous one is tried. Returns ``(next epoch, metadata)``, or None (nothing
    restored: ``method``, ``optimizer`` and the RNGs are as they were) when no checkpoint is usable.
    """
    import copy

    snapshot = ({k: v.detach().clone() for k, v in method.learned_state().items()},
                copy.deepcopy(optimizer.state_dict()), torch.get_rng_state(), random.getstate(),
                torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    for path in reversed(list_checkpoints(folder)):
        try:
            tensors, meta = _read_checkpoint(path)
            return restore_training_state(tensors, meta, method, optimizer), meta
        except (CheckpointError, KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
            if log is not None:
                detail = exc if isinstance(exc, CheckpointError) else f"'{path}' does not fit this run ({exc})"
                log(f"warning: skipping unusable checkpoint: {detail}")
            learned, opt_state, rng, py, cuda = snapshot
            method.load_learned_state(learned)
            optimizer.load_state_dict(copy.deepcopy(opt_state))
            torch.set_rng_state(rng)
            random.setstate(py)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
    return None


def restore_training_state(
    tensors: dict[str, Tensor], meta: dict[str, Any], method: Any, optimizer: torch.optim.Optimizer
) -> int:
    """Load a checkpoint into ``method`` / ``optimizer`` and the RNGs; return the next epoch to run."""
    method.load_learned_state({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            if value.dim() and tuple(value.shape) != tuple(params[int(idx)].shape):
                raise ValueError(f"optimiser state '{key}' has shape {tuple(value.shape)}, expected "
                                 f"{tuple(params[int(idx)].shape)}")
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta.get("optim_scalars", {}).items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    py = meta["rng_python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return int(meta["epoch"]) + 1
