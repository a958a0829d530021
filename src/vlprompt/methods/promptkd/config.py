"""PromptKD options (Li et al., CVPR 2024), named after the authors' ``TRAINER.PROMPTKD`` keys.

Defaults from zhengli97/PromptKD at ec244f7: configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml
(N_CTX_VISION 4 l.38, PROMPT_DEPTH_VISION 9 l.42, TEACHER_NAME ViT-L/14 l.44) and
scripts/promptkd/base2new_train.sh (TEMPERATURE 1.0 l.27, KD_WEIGHT 1000 l.28; 200 for fgvc_aircraft,
oxford_flowers and dtd per the comment at l.15-16). The student's language prompts of the authors' config
(N_CTX_TEXT, PROMPT_DEPTH_TEXT, CTX_INIT) are built into their student CLIP but never used: the student's text
side is the teacher's stored text features (trainers/promptkd.py ``CustomCLIP.forward`` l.250-257), so they are
not options here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_choice, check_float, check_int

PROJECTORS = ("two_layer", "linear")


@dataclass
class PromptKDConfig:
    """The student's deep vision prompts and projector, the distillation loss, and where the teacher comes from."""

    n_ctx_vision: int = field(default=4, metadata={
        "help": "student vision prompt tokens per layer (N_CTX_VISION 4, vit_b16_c2_ep20_batch8_4+4ctx.yaml l.38); "
                "0 = the student's frozen image tower (any backbone, e.g. a ResNet) with the projector only"})
    prompt_depth_vision: int = field(default=9, metadata={
        "help": "J: student vision prompts at blocks 0..J-1, clamped to the tower's depth (PROMPT_DEPTH_VISION 9, "
                "l.42)"})
    init_std: float = field(default=0.02, metadata={
        "help": "std of the vision prompts' initialisation (clip/model.py l.220, l.374: normal_(std=0.02))"})
    projector: str = field(default="two_layer", metadata={
        "help": "student feature -> teacher feature map: two_layer = Feature_Trans_Module_two_layer (1x1 conv, "
                "BatchNorm, ReLU, 1x1 conv, width E_teacher; trainers/promptkd.py l.22-36, l.243); linear = one "
                "linear map without batch statistics (not the authors')"})
    temperature: float = field(default=1.0, metadata={
        "help": "T of the KD loss (TRAINER.PROMPTKD.TEMPERATURE 1.0, base2new_train.sh l.27)"})
    kd_weight: float = field(default=1000.0, metadata={
        "help": "weight of the KD loss (KD_WEIGHT 1000, base2new_train.sh l.28; 200 for fgvc_aircraft, "
                "oxford_flowers, dtd, l.15-16)"})
    teacher_prompt: str | None = field(default=None, metadata={
        "help": "the teacher: a vlprompt prompt file (any method whose classifier is fixed text features, on any "
                "backbone; the file records both). Its text features are computed once and stored in the "
                "student's prompt file"})
    teacher_config: str | None = field(default=None, metadata={
        "help": "without teacher_prompt: an experiment config (YAML) trained first into <run>/teacher/ on the "
                "run's dataset and seed (resumable), whose prompt becomes the teacher"})
    teacher_classes: str = field(default="base", metadata={
        "help": "the classes the teacher_config run trains on (its data.subsample_classes): base, as the "
                "authors' PromptSRC teachers of the base-to-new runs (README l.93-98), or all"})
    teacher_pretrained: str | None = field(default=None, metadata={
        "help": "load the teacher's backbone with these weights (a pretrained tag or a file) instead of the ones "
                "its prompt file records"})

    def __post_init__(self) -> None:
        check_int(self.n_ctx_vision, "method.n_ctx_vision", minimum=0)
        check_int(self.prompt_depth_vision, "method.prompt_depth_vision", minimum=0)
        check_float(self.init_std, "method.init_std", minimum=0.0, strict=True)
        check_choice(self.projector, "method.projector", PROJECTORS)
        check_float(self.temperature, "method.temperature", minimum=0.0, strict=True)
        check_float(self.kd_weight, "method.kd_weight", minimum=0.0)
        check_choice(self.teacher_classes, "method.teacher_classes", ("base", "all"))
        for key in ("teacher_prompt", "teacher_config", "teacher_pretrained"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"option method.{key} must be a path (text) or null, got {value!r}")

    @property
    def learns_vision(self) -> bool:
        return self.n_ctx_vision > 0 and self.prompt_depth_vision > 0
