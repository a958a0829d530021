"""PromptKD's teacher: where it comes from, and a teacher trained first inside the student's run.

The authors pre-train a PromptSRC ViT-L/14 teacher on the labeled base classes (zhengli97/PromptKD README
l.93-98, configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml) and load it from a file
(trainers/promptkd.py l.314-336). Here the teacher is, in this order:

1. ``method.teacher_prompt``: any vlprompt prompt file whose classifier is fixed text features (PromptSRC,
   IVLP, MaPLe, CoOp, KgCoOp, ...), on whatever backbone it records (``method.teacher_pretrained`` replaces the
   recorded weights);
2. ``method.teacher_config``: an experiment config trained first into ``<run>/teacher/`` (resumable) on the
   student run's dataset, data root and seed, on the classes ``method.teacher_classes``; its prompt file is then
   case 1 (:func:`prepare_teacher`, called by the trainer before the student's run starts, so the student's saved
   config names the file);
3. neither: zero-shot CLIP of the student's own backbone with the dataset's templates (a self-distillation
   baseline and what the tiny contract runs use, not the paper's setting).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import PromptMethod

#: The teacher's run folder inside the student's run.
TEACHER_DIR = "teacher"


def prepare_teacher(cfg: Any, resume: bool) -> Any:
    """The student's config with ``method.teacher_prompt`` = the prompt of ``method.teacher_config`` trained into
    ``<run>/teacher/`` (reused when finished, resumed when interrupted); ``cfg`` itself when a teacher prompt is
    given or no teacher config. The teacher run takes the student run's dataset, root, options and seed, its
    own method, backbone, optimiser and other data options, and ``data.subsample_classes =
    method.teacher_classes``."""
    from vlprompt.config import apply_overrides, config_from_dict, read_yaml
    from vlprompt.engine.trainer import train

    mc = cfg.method.config
    if mc.teacher_prompt or not mc.teacher_config:
        return cfg
    raw = read_yaml(mc.teacher_config)
    if not isinstance(raw, dict) or not isinstance(raw.get("method"), dict):
        raise ConfigError(f"method.teacher_config '{mc.teacher_config}' must be an experiment config with a method "
                          "section (the teacher's method, backbone, optim ...)")
    if raw["method"].get("name") == cfg.method.name:
        raise ConfigError(f"method.teacher_config '{mc.teacher_config}' trains another PromptKD student; the "
                          "teacher must be a prompt learner trained with labels (e.g. promptsrc, kgcoop)")
    root = Path(cfg.train.output_dir) / TEACHER_DIR
    data = {**cfg.as_dict()["data"], **(raw.get("data") or {})}
    data.update(dataset=cfg.data.dataset, root=cfg.data.root, options=cfg.data.options,
                subsample_classes=mc.teacher_classes)
    if "fewshot_file" not in (raw.get("data") or {}):
        data["fewshot_file"] = None  # the student's (e.g. pseudo-labels) is not the teacher's split
    raw = {**raw, "data": data, "train": {**cfg.as_dict()["train"], **(raw.get("train") or {})}}
    tcfg = config_from_dict(apply_overrides(raw, [f"train.seed={cfg.train.seed}", f"train.output_dir={root}"]))
    tcfg.train.output_dir = str(root)
    if not tcfg.method.capabilities.trainable or tcfg.method.capabilities.image_conditional:
        raise ConfigError(f"method.teacher_config '{mc.teacher_config}': method '{tcfg.method.name}' cannot teach "
                          "PromptKD (it must learn fixed class text features: promptsrc, ivlp, kgcoop, coop ...)")
    train(tcfg, resume=True)
    out = copy.deepcopy(cfg)
    out.method.config.teacher_prompt = str(root / "prompt.safetensors")
    return out


def load_teacher(student: PromptMethod) -> PromptMethod:
    """The teacher of ``student`` (a :class:`~vlprompt.methods.promptkd.model.PromptKD`) for its class names, in
    eval mode, on its device, with gradients off (module docstring: the three cases)."""
    from vlprompt.backbones.build import build_backbone
    from vlprompt.config import BackboneConfig
    from vlprompt.engine.checkpoint import load_prompt, model_string, read_prompt
    from vlprompt.methods.zeroshot import zeroshot_classifier

    cfg = student.config
    device = student.backbone.device
    if cfg.teacher_prompt:
        path = Path(cfg.teacher_prompt)
        if not path.is_file():
            raise ConfigError(f"method.teacher_prompt '{path}' is not a file (the teacher's prompt file)")
        _, meta = read_prompt(path)
        bb = meta.get("backbone", {})
        pretrained = cfg.teacher_pretrained or bb.get("pretrained")
        spec = BackboneConfig(model_string(bb), pretrained)
        own = student.backbone.info
        same = (spec.model == model_string(own.as_dict()) and spec.pretrained == own.pretrained)
        backbone = student.backbone if same else build_backbone(spec, device=device)
        teacher = load_prompt(path, backbone, student.classnames, allow_new_classes=True, device=device,
                              any_weights=cfg.teacher_pretrained is not None)
    else:
        teacher = zeroshot_classifier(student.backbone, student.classnames, list(student.context.templates))
    check_teacher(teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()


def check_teacher(teacher: PromptMethod) -> None:
    """Refuse a teacher whose class text features cannot be stored once (:class:`ConfigError`)."""
    name = teacher.method_name
    caps = teacher.capabilities
    if caps.image_conditional or caps.adapts_at_test_time:
        raise ConfigError(f"a '{name}' prompt cannot teach PromptKD: its class text features depend on the image, "
                          "so they cannot be stored once (use a method with fixed text features: promptsrc, ivlp, "
                          "maple, kgcoop, coop ...)")
