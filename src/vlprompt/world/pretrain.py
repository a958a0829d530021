"""Contrastive pretraining of the synthetic world's CLIP on freshly generated image-caption pairs.

    python -m vlprompt.world.pretrain --out DIR --minutes M --seed S [--steps N] [--device cuda]
        [--batch 256] [--model vlprompt-world-rn] [--lr 1e-3] [--workers W]

Batch ``b`` holds pairs ``b*B .. b*B+B-1`` of the pretraining stream of ``seed``
(:func:`vlprompt.world.generate.pretrain_item`), rendered in DataLoader workers; the model is a
randomly initialised open_clip model built from vlprompt's configs, trained with open_clip's
``ClipLoss``, AdamW, a linear warm-up over ``--warmup-steps`` and a cosine decay over the run's
progress (steps done / ``--steps``, or time spent / ``--minutes``, whichever is further). bf16 autocast on CUDA.
Zero-shot accuracy on the world_shapes and world_objects val splits (prompt "a photo of a {}.") is
printed periodically and at the end.

Output in DIR: ``<model>.safetensors`` (fp16 state dict of the whole model), ``<model>.json``
(config name and config, seed, steps, pairs seen, time, device, final zero-shot accuracies, sha256)
and ``<model>.sha256`` (``sha256sum`` format). With ``--steps`` (and no ``--minutes``) a run is
reproducible from its seed up to floating-point nondeterminism of the device; a ``--minutes`` run
records its step count, so ``--steps <that>`` repeats it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlprompt.core.errors import ConfigError, ModelError, VlpromptError
from vlprompt.world.datasets import TEMPLATE, build_world_dataset, render_item
from vlprompt.world.generate import HELDOUT_PAIRS, PRETRAIN_DOMAIN, PRETRAIN_GROUP_SIZE, Domain, pretrain_item

DEFAULT_MODEL = "vlprompt-world-rn"
EVAL_DATASETS = ("world_shapes", "world_objects")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pretraining run (see :func:`pretrain`)."""

    out_dir: str
    minutes: float | None = None
    steps: int | None = None
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 256
    model_name: str = DEFAULT_MODEL
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 200
    workers: int | None = None
    eval_every: int | None = None
    eval_per_class: int = 16
    group_size: int = PRETRAIN_GROUP_SIZE
    progress: bool = True

    def validate(self) -> None:
        if self.minutes is None and self.steps is None:
            raise ConfigError("give --minutes or --steps (or both) to bound the pretraining run")
        if (self.minutes is not None and self.minutes <= 0) or (self.steps is not None and self.steps < 1):
            raise ConfigError("--minutes must be > 0 and --steps >= 1")
        if self.batch_size < 2:
            raise ConfigError("--batch must be >= 2 (contrastive loss needs negatives)")
        if self.group_size < 1:
            raise ConfigError("--group-size must be >= 1")
        if self.warmup_steps < 0:
            raise ConfigError("--warmup-steps must be >= 0")


class PairBatches(Dataset):
    """Batch ``b`` of the pretraining stream: (uint8 images [B, S, S, 3], int64 tokens [B, L])."""

    def __init__(
        self, seed: int, batch_size: int, image_size: int, tokenizer: Callable[..., torch.Tensor], domain: Domain
    ):
        self.seed, self.batch_size, self.image_size = seed, batch_size, image_size
        self.tokenizer, self.domain = tokenizer, domain

    def __len__(self) -> int:
        return 2**40 // self.batch_size

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.empty((self.batch_size, self.image_size, self.image_size, 3), dtype=np.uint8)
        captions = []
        for j in range(self.batch_size):
            index = b * self.batch_size + j
            images[j], cap = pretrain_item(self.seed, index, domain=self.domain, image_size=self.image_size)
            captions.append(cap)
        return torch.from_numpy(images), self.tokenizer(captions)


class ImageNormalizer:
    """uint8 [B, S, S, 3] on any device -> normalised float [B, 3, S, S] on ``device``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std


class ZeroShotProbe:
    """Zero-shot accuracy on the val splits of world datasets (first ``per_class`` images per class)."""

    def __init__(self, names: Sequence[str], per_class: int, image_size: int, tokenizer: Callable[..., Any]):
        self.sets: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name in names:
            classnames = build_world_dataset(name, n_train=0, n_val=0, n_test=0).classnames
            items = [render_item(name, "val", i, image_size=image_size) for i in range(per_class * len(classnames))]
            images = torch.from_numpy(np.stack([img for img, _ in items]))
            labels = torch.tensor([label for _, label in items])
            prompts = tokenizer([TEMPLATE.format(c) for c in classnames])
            self.sets[name] = (images, labels, prompts)

    @torch.no_grad()
    def __call__(self, model: Any, normalize: ImageNormalizer, autocast: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        accs = {}
        for name, (images, labels, prompts) in self.sets.items():
            with autocast():
                text = model.encode_text(prompts.to(normalize.device), normalize=True).float()
                preds = [
                    (model.encode_image(normalize(chunk), normalize=True).float() @ text.T).argmax(-1).cpu()
                    for chunk in images.split(256)
                ]
            accs[name] = float((torch.cat(preds) == labels).float().mean())
        model.train(was_training)
        return accs


def lr_at(step: int, progress: float, base_lr: float, warmup_steps: int) -> float:
    """Learning rate of step ``step`` (0-based) at run progress ``progress`` in [0, 1].

    Linear warm-up over the first ``warmup_steps`` steps times a cosine decay from 1 to 0 over the
    run's progress (the run's length in steps is not known in advance for a time budget).
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return base_lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's convention: no weight decay on gains, biases, norms and the logit scale."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _build_model(model_name: str, device: torch.device, *, option: str = "--model"
                 ) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """A random-init open_clip model of a registered config, its tokenizer and config."""
    import open_clip

    from vlprompt.backbones.configs import register_model_configs

    register_model_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ModelError(f"unknown open_clip model config '{model_name}' (option {option})")
    model = open_clip.create_model(model_name, pretrained=None, device=device)
    return model, open_clip.get_tokenizer(model_name), cfg


def _default_workers(device: torch.device) -> int:
    return min(8, max(1, (os.cpu_count() or 2) - 2)) if device.type == "cuda" else 0


def save_weights(state: dict[str, torch.Tensor], path: Path) -> str:
    """Save ``state`` (tensor name -> tensor) as fp16 safetensors at ``path`` and its ``sha256sum`` line
    at ``path.with_suffix(".sha256")``; returns the sha256 (hex)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu", torch.float16).contiguous().clone() for k, v in state.items()}, str(path),
              metadata={"format": "pt"})
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".sha256").write_text(f"{sha}  {path.name}\n")
    return sha


def pretrain(out_dir: str | Path, *, log: Callable[[str], None] | None = None, **settings: Any) -> dict[str, Any]:
    """Pretrain a world CLIP; write weights and metadata to ``out_dir``.

    ``settings`` are the other fields of :class:`PretrainConfig` (``minutes``, ``steps``, ``seed``,
    ``device``, ``batch_size``, ``model_name``, ...); ``log`` receives the progress lines. Returns the
    metadata written to ``<model>.json``.
    """
    return run_pretraining(PretrainConfig(str(out_dir), **settings), log)


@dataclass
class _Clock:
    """When a run stops, how far it is (for the schedule) and when to evaluate."""

    cfg: PretrainConfig
    start: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.budget_s = None if self.cfg.minutes is None else 60.0 * self.cfg.minutes
        self.eval_every_s = None if self.budget_s is None or self.cfg.eval_every else max(60.0, self.budget_s / 8)
        steps_only = self.eval_every_s is None and self.cfg.steps
        self.eval_every = self.cfg.eval_every or (
            max(1, self.cfg.steps // 8) if steps_only and self.cfg.steps else None)
        self.warmup = min(self.cfg.warmup_steps, self.cfg.steps // 5) if self.cfg.steps else self.cfg.warmup_steps
        self.last_eval = self.start

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def done(self, step: int) -> bool:
        return bool((self.cfg.steps and step >= self.cfg.steps) or (self.budget_s and self.elapsed() >= self.budget_s))

    def lr(self, step: int) -> float:
        by_steps = (step + 0.5) / self.cfg.steps if self.cfg.steps else 0.0
        by_time = self.elapsed() / self.budget_s if self.budget_s else 0.0
        return lr_at(step, max(by_steps, by_time), self.cfg.lr, self.warmup)

    def eval_due(self, step: int) -> bool:
        now = time.monotonic()
        due = (self.eval_every and step % self.eval_every == 0) or (
            self.eval_every_s and now - self.last_eval >= self.eval_every_s
        )
        if due:
            self.last_eval = now
        return bool(due)


def _train_step(
    model: Any,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    images: torch.Tensor,
    tokens: torch.Tensor,
    normalize: ImageNormalizer,
    autocast: Callable[[], Any],
    lr: float,
) -> float:
    """One contrastive step on uint8 images [B, S, S, 3] and tokens [B, L]; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    with autocast():
        img_f = model.encode_image(normalize(images), normalize=True)
        txt_f = model.encode_text(tokens.to(normalize.device, non_blocking=True), normalize=True)
        loss = loss_fn(img_f.float(), txt_f.float(), model.logit_scale.exp())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.detach().item()


def _pair_loader(
    cfg: PretrainConfig, image_size: int, tokenizer: Callable[..., Any], device: torch.device
) -> DataLoader:
    workers = _default_workers(device) if cfg.workers is None else cfg.workers
    domain = replace(PRETRAIN_DOMAIN, group_size=cfg.group_size)
    return DataLoader(
        PairBatches(cfg.seed, cfg.batch_size, image_size, tokenizer, domain),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def run_pretraining(cfg: PretrainConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """:func:`pretrain` with a ready :class:`PretrainConfig`."""
    import open_clip
    from open_clip.loss import ClipLoss

    cfg.validate()
    device = training_device(cfg)
    model, tokenizer, model_cfg = _build_model(cfg.model_name, device)
    pre = open_clip.get_model_preprocess_cfg(model)
    image_size = int(model_cfg["vision_cfg"]["image_size"])
    normalize = ImageNormalizer(pre["mean"], pre["std"], device)

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    probe = ZeroShotProbe(EVAL_DATASETS, cfg.eval_per_class, image_size, tokenizer)
    loader = _pair_loader(cfg, image_size, tokenizer, device)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    model.train()
    run = train_loop(cfg, loader,
                     lambda batch, lr: _train_step(model, opt, loss_fn, batch[0], batch[1], normalize, autocast, lr),
                     lambda: probe(model, normalize, autocast), log)
    return _save(cfg, model, model_cfg, run.steps, run.seconds, run.loss, run.accs, run.history)


@dataclass
class LoopResult:
    """What :func:`train_loop` returns: steps run, loop seconds, final loss EMA, final accuracies, history."""

    steps: int
    seconds: float
    loss: float
    accs: dict[str, float]
    history: list[dict[str, Any]]


def train_loop(cfg: PretrainConfig, loader: Any, step: Callable[[Any, float], float],
               evaluate: Callable[[], dict[str, float]], log: Callable[[str], None] | None) -> LoopResult:
    """The loop of every world training run: ``step(batch, lr) -> loss`` until the step / time budget of
    ``cfg`` is spent, a tqdm bar with the loss EMA, ``evaluate()`` (zero-shot accuracies) periodically
    and at the end, each reported through ``log``."""
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, disable=not cfg.progress, unit="step", dynamic_ncols=True, mininterval=2.0)
    say = log or (bar.write if cfg.progress else print)
    done, loss_ema, history = 0, float("nan"), []
    clock = _Clock(cfg)
    for batch in loader:
        if clock.done(done):
            break
        lr = clock.lr(done)
        value = step(batch, lr)
        done += 1
        loss_ema = value if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.2e}")
        if clock.eval_due(done):
            accs = evaluate()
            history.append({"step": done, "seconds": round(clock.elapsed(), 1), "loss": loss_ema, **accs})
            say(_report(done, done * cfg.batch_size, loss_ema, accs))
    bar.close()
    seconds = clock.elapsed()
    accs = evaluate()
    say("final: " + _report(done, done * cfg.batch_size, loss_ema, accs))
    return LoopResult(done, seconds, loss_ema, accs, history)


def training_device(cfg: PretrainConfig) -> torch.device:
    """The run's device (seeded); a clear error when CUDA is asked for but absent."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    torch.manual_seed(cfg.seed)
    return device


def _report(step: int, pairs: int, loss: float, accs: dict[str, float]) -> str:
    shown = " ".join(f"{k.removeprefix('world_')} {v:.1%}" for k, v in accs.items())
    return f"step {step} pairs {pairs} loss {loss:.3f} zero-shot val: {shown}"


def _save(
    cfg: PretrainConfig,
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    steps: int,
    train_s: float,
    loss: float,
    accs: dict[str, float],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{cfg.model_name}.safetensors"
    sha = save_weights(model.state_dict(), weights)
    meta = {
        "model": cfg.model_name,
        "model_config": model_cfg,
        "weights": weights.name,
        "format": "safetensors, fp16 state dict of the whole open_clip model",
        "sha256": sha,
        **run_metadata(cfg, steps, train_s, loss, accs, history),
        "group_size": cfg.group_size,
    }
    (out / f"{cfg.model_name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def run_metadata(cfg: PretrainConfig, steps: int, train_s: float, loss: float, accs: dict[str, float],
                 history: list[dict[str, Any]]) -> dict[str, Any]:
    """What a pretraining or distillation run records about itself in ``<model>.json``."""
    import open_clip

    return {
        "seed": cfg.seed,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "pairs_seen": steps * cfg.batch_size,
        "train_seconds": round(train_s, 1),  # wall time of the loop, periodic evaluations included
        "minutes_budget": cfg.minutes,
        "steps_budget": cfg.steps,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "warmup_steps": cfg.warmup_steps,
        "device": _device_name(torch.device(cfg.device)),
        "final_loss": loss,
        "zero_shot_val": accs,
        "zero_shot_template": TEMPLATE,
        "history": history,
        "heldout_pairs": sorted(f"{c} {s}" for c, s in HELDOUT_PAIRS),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__},
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def add_run_arguments(p: argparse.ArgumentParser, *, batch: int, warmup: int, seed: int) -> None:
    """The options every world training run takes (pretraining and distillation)."""
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--minutes", type=float, help="training time budget (minutes)")
    p.add_argument("--steps", type=int, help="number of optimisation steps (exactly reproducible)")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, default=batch, help="batch size (pairs per step)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=warmup, help="linear warm-up steps (capped at --steps/5)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: 0 on cpu, up to 8 on cuda)")
    p.add_argument("--eval-every", type=int, help="steps between zero-shot evaluations")
    p.add_argument("--eval-per-class", type=int, default=16, help="val images per class for zero-shot")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def run_settings(a: argparse.Namespace) -> dict[str, Any]:
    """:class:`PretrainConfig` fields from the options of :func:`add_run_arguments`."""
    return {"out_dir": a.out, "minutes": a.minutes, "steps": a.steps, "seed": a.seed, "device": a.device,
            "batch_size": a.batch, "lr": a.lr, "weight_decay": a.weight_decay, "warmup_steps": a.warmup_steps,
            "workers": a.workers, "eval_every": a.eval_every, "eval_per_class": a.eval_per_class,
            "progress": not a.no_progress}


def parse_args(argv: Sequence[str] | None = None) -> PretrainConfig:
    """Parse the command line into a :class:`PretrainConfig`."""
    p = argparse.ArgumentParser(prog="python -m vlprompt.world.pretrain", description=__doc__.split("\n")[0])
    add_run_arguments(p, batch=256, warmup=200, seed=0)
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip config name")
    p.add_argument("--group-size", type=int, default=PRETRAIN_GROUP_SIZE, help="hard-negative shape groups")
    a = p.parse_args(argv)
    return PretrainConfig(**run_settings(a), model_name=a.model, group_size=a.group_size)


def cli(argv: Sequence[str] | None, parse: Callable[[Sequence[str] | None], Any],
        run: Callable[[Any], Any]) -> int:
    """Run ``run(parse(argv))``; a :class:`VlpromptError` becomes one ``error:`` line and its exit code."""
    try:
        run(parse(argv))
    except VlpromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    return cli(argv, parse_args, run_pretraining)


if __name__ == "__main__":
    sys.exit(main())
