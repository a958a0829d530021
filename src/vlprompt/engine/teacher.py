"""PromptKD's teacher from prompt files (:mod:`vlprompt.methods.promptkd.teacher`): loaded for a student, or trained
first inside the student's run.

* :func:`load_teacher_prompt`: ``method.teacher_prompt`` rebuilt for the student's class names on the backbone the
  file records (the student's own when it is the same; ``method.teacher_pretrained`` replaces the recorded weights).
  Registered with the method when this module is imported.
* :func:`prepare_teacher`: PromptKD's registered ``prepare``
  (:meth:`~vlprompt.methods.registry.MethodEntry.prepare_run`, called by :func:`vlprompt.engine.trainer.train`):
  with ``method.teacher_config`` and no ``teacher_prompt``, the teacher config is trained into ``<run>/teacher/``
  (finished: reused; interrupted: resumed) and the student's config names its prompt file.
"""

from __future__ import annotations

import copy
from pathlib import Path

from vlprompt.backbones.build import build_backbone
from vlprompt.config import BackboneConfig, ExperimentConfig, apply_overrides, config_from_dict, read_yaml
from vlprompt.core.errors import ConfigError
from vlprompt.engine.checkpoint import load_prompt, model_string, read_prompt
from vlprompt.methods.base import PromptMethod
from vlprompt.methods.promptkd.teacher import register_prompt_loader

#: The teacher's run folder inside the student's run.
TEACHER_DIR = "teacher"


def load_teacher_prompt(student: PromptMethod) -> PromptMethod:
    """``student.config.teacher_prompt`` built for the student's class names on its recorded backbone."""
    cfg = student.config
    path = Path(cfg.teacher_prompt)
    if not path.is_file():
        raise ConfigError(f"method.teacher_prompt '{path}' is not a file (the teacher's prompt file)")
    _, meta = read_prompt(path)
    bb = meta.get("backbone", {})
    spec = BackboneConfig(model_string(bb), cfg.teacher_pretrained or bb.get("pretrained"))
    own = student.backbone.info
    same = spec.model == model_string(own.as_dict()) and spec.pretrained == own.pretrained
    backbone = student.backbone if same else build_backbone(spec, device=student.backbone.device)
    return load_prompt(path, backbone, student.classnames, allow_new_classes=True, device=student.backbone.device,
                       any_weights=cfg.teacher_pretrained is not None)


def prepare_teacher(cfg: ExperimentConfig, resume: bool) -> ExperimentConfig:
    """The student's config with ``method.teacher_prompt`` = the prompt of ``method.teacher_config`` trained into
    ``<run>/teacher/``; ``cfg`` itself when a teacher prompt is given or there is no teacher config. The teacher run
    takes the student run's dataset, root, dataset options, seed and train options, its own method, backbone,
    optimiser and other data options, and ``data.subsample_classes = method.teacher_classes``. ``resume`` is not
    read: a finished teacher is always reused (it is part of the student's run)."""
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
    own_data = raw.get("data") or {}
    data = {**cfg.as_dict()["data"], **own_data}
    data.update(dataset=cfg.data.dataset, root=cfg.data.root, options=cfg.data.options,
                subsample_classes=mc.teacher_classes)
    if "fewshot_file" not in own_data:
        data["fewshot_file"] = None  # the student's (e.g. pseudo-labels) is not the teacher's split
    raw = {**raw, "data": data, "train": {**cfg.as_dict()["train"], **(raw.get("train") or {})}}
    tcfg = config_from_dict(apply_overrides(raw, [f"train.seed={cfg.train.seed}"]))
    tcfg.train.output_dir = str(root)
    caps = tcfg.method.capabilities
    if not caps.trainable or caps.image_conditional or caps.adapts_at_test_time:
        raise ConfigError(f"method.teacher_config '{mc.teacher_config}': method '{tcfg.method.name}' cannot teach "
                          "PromptKD (it must learn fixed class text features: promptsrc, ivlp, kgcoop, coop ...)")
    train(tcfg, resume=True)
    out = copy.deepcopy(cfg)
    out.method.config.teacher_prompt = str(root / "prompt.safetensors")
    return out


register_prompt_loader(load_teacher_prompt)
