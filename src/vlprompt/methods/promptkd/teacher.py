"""PromptKD's teacher: where it comes from, and a teacher trained first inside the student's run.

The authors pre-train a PromptSRC ViT-L/14 teacher on the labeled base classes (zhengli97/PromptKD README
l.93-98, configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml) and load it from a file
(trainers/promptkd.py l.314-336). Here the teacher is, in this order:

1. ``method.teacher_prompt``: any vlprompt prompt file whose classifier is fixed text features (PromptSRC,
   IVLP, MaPLe, CoOp, KgCoOp, ...), on whatever backbone it records (``method.teacher_pretrained`` replaces the
   recorded weights);
2. ``method.teacher_config``: an experiment config trained first into ``<run>/teacher/`` (resumable) on the
   student run's dataset, data root and seed, on the classes ``method.teacher_classes``; its prompt file is then
   case 1 (:func:`vlprompt.engine.teacher.prepare_teacher`, called by the trainer before the student's run starts,
   so the student's saved config names the file);
3. neither: zero-shot CLIP of the student's own backbone with the dataset's templates (a self-distillation
   baseline and what the tiny contract runs use, not the paper's setting).

Prompt files are read by the engine layer: :mod:`vlprompt.engine.teacher` registers the loader of case 1 here
(:func:`register_prompt_loader`) when it is imported (the trainer imports it through the method's registered
``prepare``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import PromptMethod

#: ``loader(student) -> teacher`` for ``method.teacher_prompt`` (set by :mod:`vlprompt.engine.teacher`).
_PROMPT_LOADER: list[Callable[[PromptMethod], PromptMethod]] = []


def register_prompt_loader(loader: Callable[[PromptMethod], PromptMethod]) -> None:
    """Set the function that loads a teacher prompt file for a student (the engine's)."""
    _PROMPT_LOADER[:] = [loader]


def load_teacher(student: PromptMethod) -> PromptMethod:
    """The teacher of ``student`` (a :class:`~vlprompt.methods.promptkd.model.PromptKD`) for its class names, in
    eval mode, on its device, with gradients off (module docstring: the three cases)."""
    from vlprompt.methods.zeroshot import zeroshot_classifier

    cfg = student.config
    if cfg.teacher_prompt:
        if not _PROMPT_LOADER:  # prompt files are the engine's: its module registers the loader when imported
            importlib.import_module("vlprompt.engine.teacher")
        teacher = _PROMPT_LOADER[0](student)
    elif cfg.teacher_config:
        raise ConfigError("method.teacher_config is trained by the trainer before the student is built (vlprompt "
                          "train / protocol / sweep); to build the student yourself give method.teacher_prompt")
    else:
        teacher = zeroshot_classifier(student.backbone, student.classnames, list(student.context.templates))
    check_teacher(teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(student.backbone.device).eval()


def check_teacher(teacher: PromptMethod) -> None:
    """Refuse a teacher whose class text features cannot be stored once (:class:`ConfigError`)."""
    name = teacher.method_name
    caps = teacher.capabilities
    if caps.image_conditional or caps.adapts_at_test_time:
        raise ConfigError(f"a '{name}' prompt cannot teach PromptKD: its class text features depend on the image, "
                          "so they cannot be stored once (use a method with fixed text features: promptsrc, ivlp, "
                          "maple, kgcoop, coop ...)")
