"""A ViT image tower for the world CLIP, distilled from the shipped ResNet world model on 2 CPU cores.

    python -m vlprompt.world.distill --out DIR --minutes M [--steps N] [--seed S] [--batch 128]
        [--student vlprompt-world-vit] [--teacher vlprompt-world-rn] [--teacher-pretrained world]

Contrastive pretraining of a ViT from scratch is about 4x slower per pair than the ResNet's on this
CPU and does not get past chance in the time a CPU session has (docs/world.md). Deep vision prompts
(VPT-deep, IVLP, MaPLe, PromptSRC) need a transformer image tower, so the world ViT is made the cheap
way: the student CLIP takes the teacher's whole text tower (token embedding, transformer, final norm,
projection, logit scale: the two configs' ``text_cfg`` and ``embed_dim`` are identical) and keeps it
frozen; only the student's image tower ``visual.*`` is trained, on the pretraining stream of
:mod:`vlprompt.world.pretrain` (freshly rendered image-caption pairs), with

    L = CLIP(f_s(x), g(t)) + w * mean_i (1 - cos(f_s(x_i), f_t(x_i)))

where ``f_s`` is the student image tower, ``f_t`` the frozen teacher image tower, ``g`` the shared
frozen text tower, CLIP the symmetric contrastive loss at the teacher's logit scale (open_clip
``ClipLoss``) and ``w`` = ``--distill-weight``. The second term (feature distillation) is what makes
it sample-efficient: the student regresses onto an embedding space that already works.

Output in DIR: ``<student>-visual.safetensors`` (fp16, only the ``visual.*`` tensors),
``<student>-visual.sha256`` and ``<student>.json`` (configs, teacher and the sha256 of the teacher
weights the text tower came from, steps, time, zero-shot accuracies). The world plugin assembles the
full model from the two files (:data:`vlprompt.world.plugin.SHIPPED`), so shipping the ViT costs only
its image tower.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlprompt.core.errors import ConfigError, ModelError
from vlprompt.world.pretrain import (
    ImageNormalizer,
    PretrainConfig,
    ZeroShotProbe,
    _build_model,
    _pair_loader,
    _param_groups,
    add_run_arguments,
    cli,
    run_metadata,
    run_settings,
    save_weights,
    train_loop,
    training_device,
)

VISUAL_PREFIX = "visual."
EVAL_DATASETS = ("world_shapes", "world_objects", "world_scenes", "world_positions", "world_textures")


@dataclass(frozen=True)
class DistillConfig(PretrainConfig):
    """A :class:`PretrainConfig` (``model_name`` = the student) plus the teacher and the loss weight."""

    teacher: str = "vlprompt-world-rn"
    teacher_pretrained: str = "world"
    distill_weight: float = 10.0

    def validate(self) -> None:
        super().validate()
        if self.distill_weight < 0:
            raise ConfigError("--distill-weight must be >= 0")


def visual_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The image tower's tensors of an open_clip CLIP (keys starting with ``visual.``)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(VISUAL_PREFIX)}


def adopt_text_tower(student: torch.nn.Module, teacher: torch.nn.Module) -> list[str]:
    """Copy every non-image tensor of ``teacher`` into ``student`` and freeze it; returns the names.

    Raises:
        ModelError: the two models' text towers differ (a key is missing or has another shape).
    """
    theirs = {k: v for k, v in teacher.state_dict().items() if not k.startswith(VISUAL_PREFIX)}
    ours = {k: v for k, v in student.state_dict().items() if not k.startswith(VISUAL_PREFIX)}
    if set(theirs) != set(ours) or any(theirs[k].shape != ours[k].shape for k in ours):
        raise ModelError("the student and teacher text towers differ; give two configs with the same "
                         "text_cfg and embed_dim (options --student / --teacher)")
    student.load_state_dict(theirs, strict=False)
    for name, p in student.named_parameters():
        if not name.startswith(VISUAL_PREFIX):
            p.requires_grad_(False)
    return sorted(theirs)


def _load_models(cfg: DistillConfig, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, Path, Any,
                                                                  dict[str, Any]]:
    """Teacher (frozen, with its registered weights file) and random-init student with the teacher's text
    tower; also the student's tokenizer and config."""
    import open_clip

    from vlprompt.backbones.configs import pretrained_weights, register_model_configs

    register_model_configs()
    if open_clip.get_model_config(cfg.teacher) is None:
        raise ModelError(f"unknown open_clip model config '{cfg.teacher}' (option --teacher)")
    path = pretrained_weights().get((cfg.teacher, cfg.teacher_pretrained))
    if not isinstance(path, Path) or not path.is_file():  # one registered file (not parts)
        raise ModelError(f"no single weights file for teacher '{cfg.teacher}' with pretrained tag "
                         f"'{cfg.teacher_pretrained}' (options --teacher / --teacher-pretrained)")
    teacher = open_clip.create_model(cfg.teacher, pretrained=str(path), device=device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student, tokenizer, model_cfg = _build_model(cfg.model_name, device, option="--student")
    adopt_text_tower(student, teacher)
    return student, teacher, path, tokenizer, model_cfg


def _distill_step(
    student: Any,
    teacher: Any,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    normalize: ImageNormalizer,
    weight: float,
    lr: float,
) -> float:
    """One step on uint8 images [B, S, S, 3] and tokens [B, L]; returns the loss."""
    images, tokens = batch
    for group in opt.param_groups:
        group["lr"] = lr
    x = normalize(images)
    with torch.no_grad():
        txt = teacher.encode_text(tokens.to(normalize.device), normalize=True)
        target = teacher.encode_image(x, normalize=True)
    img = student.encode_image(x, normalize=True)
    loss = loss_fn(img, txt, teacher.logit_scale.exp()) + weight * (1 - (img * target).sum(-1)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().item()


def run_distillation(cfg: DistillConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Distil the student's image tower; write the files described in the module docstring."""
    import open_clip
    from open_clip.loss import ClipLoss

    cfg.validate()
    device = training_device(cfg)
    student, teacher, teacher_path, tokenizer, model_cfg = _load_models(cfg, device)
    pre = open_clip.get_model_preprocess_cfg(teacher)
    image_size = int(model_cfg["vision_cfg"]["image_size"])
    if image_size != int(open_clip.get_model_config(cfg.teacher)["vision_cfg"]["image_size"]):
        raise ConfigError("the student and teacher must take the same image size (--student / --teacher)")
    normalize = ImageNormalizer(pre["mean"], pre["std"], device)

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    probe = ZeroShotProbe(EVAL_DATASETS, cfg.eval_per_class, image_size, tokenizer)
    loader = _pair_loader(cfg, image_size, tokenizer, device)
    params = [p for p in student.parameters() if p.requires_grad]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]}
              for g in _param_groups(student, cfg.weight_decay)]
    assert sum(len(g["params"]) for g in groups) == len(params)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    teacher_accs = probe(teacher, normalize, autocast)
    (log or print)("teacher: " + " ".join(f"{k.removeprefix('world_')} {v:.1%}" for k, v in teacher_accs.items()))
    student.train()
    run = train_loop(cfg, loader, lambda batch, lr: _distill_step(student, teacher, opt, loss_fn, batch, normalize,
                                                                    cfg.distill_weight, lr),
                     lambda: probe(student, normalize, autocast), log)
    return _save(cfg, student, model_cfg, teacher_path, run.steps, run.seconds, run.loss, run.accs, teacher_accs,
                 run.history)


def _save(
    cfg: DistillConfig,
    student: torch.nn.Module,
    model_cfg: dict[str, Any],
    teacher_path: Path,
    steps: int,
    train_s: float,
    loss: float,
    accs: dict[str, float],
    teacher_accs: dict[str, float],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{cfg.model_name}-visual.safetensors"
    sha = save_weights(visual_state(student), weights)
    meta = {
        "model": cfg.model_name,
        "model_config": model_cfg,
        "weights": weights.name,
        "format": "safetensors, fp16 image-tower tensors (visual.*); the rest of the model is the teacher's",
        "sha256": sha,
        "text_tower_from": {"model": cfg.teacher, "pretrained": cfg.teacher_pretrained, "file": teacher_path.name,
                            "sha256": hashlib.sha256(teacher_path.read_bytes()).hexdigest()},
        "method": "feature distillation + CLIP loss against the teacher's frozen text tower (vlprompt.world.distill)",
        "distill_weight": cfg.distill_weight,
        **run_metadata(cfg, steps, train_s, loss, accs, history),
        "teacher_zero_shot_val": teacher_accs,
    }
    (out / f"{cfg.model_name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def parse_args(argv: Sequence[str] | None = None) -> DistillConfig:
    """Parse the command line into a :class:`DistillConfig`."""
    p = argparse.ArgumentParser(prog="python -m vlprompt.world.distill", description=__doc__.split("\n")[0])
    add_run_arguments(p, batch=128, warmup=100, seed=1)
    p.add_argument("--student", default="vlprompt-world-vit", help="open_clip config of the student")
    p.add_argument("--teacher", default="vlprompt-world-rn", help="open_clip config of the teacher")
    p.add_argument("--teacher-pretrained", default="world", help="the teacher's pretrained tag")
    p.add_argument("--distill-weight", type=float, default=10.0, help="weight w of the distillation term")
    a = p.parse_args(argv)
    return DistillConfig(**run_settings(a), model_name=a.student, teacher=a.teacher,
                         teacher_pretrained=a.teacher_pretrained, distill_weight=a.distill_weight)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    return cli(argv, parse_args, run_distillation)


if __name__ == "__main__":
    sys.exit(main())
