"""Import prompts trained with the published CoOp / CoCoOp code (Dassl checkpoints).

Dassl saves ``prompt_learner/model.pth.tar-N`` as ``torch.save({"state_dict": {...}, "epoch": N,
"optimizer": ..., "scheduler": ..., "val_result": ...})``. ``state_dict`` holds ``ctx`` (``[M, D]`` or
``[n_cls, M, D]``), for CoCoOp ``meta_net.linear1/linear2.{weight,bias}``, and the frozen
``token_prefix`` / ``token_suffix`` buffers, which are dropped (vlprompt rebuilds them from the class
names).

The file is read with ``torch.load(weights_only=True)``: no code from it ever runs. Dassl's scheduler
state holds scheduler / optimiser *objects*; the unpickler is told to build those as inert records
(:class:`_Inert`, which only stores what it is given) instead of the real classes.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlprompt.core.errors import CheckpointError

_MAX_STUBS = 32


class _Inert:
    """Stand-in for any class named in a checkpoint: keeps constructor args and state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``, mapping unknown classes to :class:`_Inert` (never executed)."""
    import collections

    # plain containers Dassl's optimiser state uses; every other class becomes an inert record
    stubs: list[Any] = [collections.defaultdict, (dict, "builtins.dict"), (dict, "dict")]
    for _ in range(_MAX_STUBS):
        try:
            with torch.serialization.safe_globals(stubs), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's business
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError / RuntimeError from the weights-only unpickler
            match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            if not match:
                raise CheckpointError(f"cannot read checkpoint '{path}' as plain weights: {_reason(exc)}. vlprompt "
                                      "never runs code stored in a checkpoint; use the prompt_learner/model.pth.tar-N "
                                      "file the CoOp / CoCoOp code saved.") from exc
            stubs.append((_Inert, match.group(1)))
    raise CheckpointError(f"checkpoint '{path}' names too many classes to read safely")


def _reason(exc: BaseException) -> str:
    """The unpickler's own reason, without torch's advice to load with ``weights_only=False``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    skip = ("weights only load failed", "please file an issue", "check the documentation", "re-running",
            "in pytorch 2.6")
    for i, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error"):
            detail = line.partition(":")[2].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return f"unsupported content ({detail})" if detail else "unsupported content"
    useful = [ln for ln in lines if not ln.lower().startswith(skip) and "weights_only" not in ln]
    return useful[0][:200] if useful else "it is not a file torch.load(weights_only=True) can read"


def read_dassl_prompt(path: str | Path) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    """``(method, learned tensors in vlprompt names, info)`` from a CoOp / CoCoOp checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    obj = safe_torch_load(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "ctx" not in state:
        raise CheckpointError(f"'{path}' is not a CoOp / CoCoOp prompt_learner checkpoint (no state_dict['ctx'])")
    ctx = state["ctx"]
    if not isinstance(ctx, Tensor) or ctx.dim() not in (2, 3) or not ctx.is_floating_point() or 0 in ctx.shape:
        got = f"a tensor of shape {tuple(ctx.shape)}" if isinstance(ctx, Tensor) else type(ctx).__name__
        raise CheckpointError(f"checkpoint '{path}': state_dict['ctx'] must be a float tensor [n_ctx, width] or "
                              f"[n_classes, n_ctx, width], got {got}")
    tensors = {"prompt_learner.ctx": ctx.float()}
    meta_keys = [k for k in state if isinstance(k, str) and k.startswith("meta_net.")]
    for k in meta_keys:
        if not isinstance(state[k], Tensor):
            raise CheckpointError(f"checkpoint '{path}': state_dict['{k}'] must be a tensor, got "
                                  f"{type(state[k]).__name__}")
        tensors[k] = state[k].float()
    bad = [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"checkpoint '{path}' holds non-finite values (NaN / Inf) in {', '.join(bad)}")
    method = "cocoop" if meta_keys else "coop"
    info = {"epoch": obj.get("epoch") if isinstance(obj, dict) else None, "n_ctx": int(state["ctx"].shape[-2]),
            "csc": state["ctx"].dim() == 3,
            "dropped": sorted(k for k in state if isinstance(k, str) and k.startswith("token_"))}
    return method, tensors, info


def import_dassl_prompt(path: str | Path, backbone: Any, classnames: list[str], *,
                        class_token_position: str = "end") -> Any:
    """Build the vlprompt method (CoOp or CoCoOp) holding the published checkpoint's learned tensors."""
    from vlprompt.methods.registry import build_method

    method, tensors, info = read_dassl_prompt(path)
    ctx = tensors["prompt_learner.ctx"]
    if ctx.shape[-1] != backbone.text_width:
        raise CheckpointError(f"checkpoint '{path}' has context width {ctx.shape[-1]}, but '{backbone.name}' "
                              f"has text width {backbone.text_width}: it was trained on another backbone")
    if info["csc"] and ctx.shape[0] != len(classnames):
        raise CheckpointError(f"checkpoint '{path}' has class-specific contexts for {ctx.shape[0]} classes, "
                              f"the dataset has {len(classnames)}")
    if method == "cocoop":
        weight = tensors.get("meta_net.linear1.weight")
        if weight is None or weight.dim() != 2 or weight.shape[0] == 0:
            raise CheckpointError(f"checkpoint '{path}' has meta_net tensors but no 2-D meta_net.linear1.weight; it "
                                  "is not a CoCoOp checkpoint")
        model = build_method("cocoop", backbone, classnames, n_ctx=info["n_ctx"], ctx_init=None,
                             hidden_ratio=max(1, backbone.embed_dim // weight.shape[0]))
    else:
        model = build_method("coop", backbone, classnames, n_ctx=info["n_ctx"], csc=info["csc"],
                             class_token_position=class_token_position)
    try:
        model.load_learned_state(tensors)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}' does not fit {method} on '{backbone.name}': {exc}") from exc
    return model
