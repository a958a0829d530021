"""PromptKD: unsupervised prompt distillation for vision-language models (Li et al., CVPR 2024).

What the authors' code computes (zhengli97/PromptKD at ec244f7, ``trainers/promptkd.py``):

* The teacher (``CustomCLIP_teacher``, l.260-286): a prompted CLIP (their PromptSRC ViT-L/14) gives, for the
  class names of the run, normalised text features ``T [C, E_t]`` (computed once, pre-stored: the paper's
  shared class vectors) and per image ``z_t = s_t * normalise(f_t(x)) T^T`` ``[B, C]`` (no gradient, l.390-391).
* The student (``CustomCLIP``, l.233-257): the student's image tower with IVLP deep vision prompts (``N_CTX_VISION``
  tokens at blocks 0..``PROMPT_DEPTH_VISION``-1, clip/model.py l.191-256, l.359-421), then the projector
  ``Feature_Trans_Module_two_layer(E_s, E_t)`` (l.22-36, l.243: 1x1 conv E_s -> E_t, BatchNorm, ReLU, 1x1 conv
  E_t -> E_t, on ``[B, E_s, 1, 1]``), normalised: ``u = normalise(P(f_s(x)))`` ``[B, E_t]``. Its logits are
  ``z_s = s_s * u T^T`` with the *student's* logit scale and the teacher's stored text features (l.251, l.408).
  The student's text tower is never run.
* The loss (l.408-416), labels unused::

      L = kd_weight * T^2 / (B C) * sum_b sum_c p_t[b, c] (log p_t[b, c] - log p_s[b, c])
      p_t = softmax(z_t / T), p_s = softmax(z_s / T)            # KL(teacher || student), summed, / numel

* Data (datasets/*.py, e.g. oxford_pets.py l.53-58; base2new_train.sh ``DATASET.NUM_SHOTS 0``): the student
  trains on the train images of *all* classes (base and new), unlabeled; base accuracy is measured on the base
  test images against the base rows of ``T``, new accuracy on the new test images against the new rows
  (``test`` l.500-504). vlprompt declares the capability ``transductive`` for this: the base-to-new protocol
  trains PromptKD once on all classes and tests the prompt on each half.

The student's prompt file stores ``T`` for the run's class names (``teacher_text``) and those names
(``teacher_names``, UTF-8), so it predicts without the teacher, for any subset of those classes (base, new).

In train mode :meth:`encode_images` returns ``[B, E_t + C]``: the projected student feature and the teacher's
logits side by side (one call per step, as the trainer makes); in eval mode the projected ``[B, E_t]``. A teacher
of another image size sees the student's images resized to its own (:func:`teacher_view`).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import encode_image_deep
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import LossTerms, MethodContext, PacksTrainFeatures, PromptMethod
from vlprompt.methods.ivlp.model import deep_vision_prompts
from vlprompt.methods.promptkd.config import PromptKDConfig


def teacher_dim(config: PromptKDConfig, backbone: Backbone) -> int:
    """E_t, the teacher's feature width: from the teacher's prompt file when it is there, the student's own
    backbone for the zero-shot teacher, else 0 (unknown until a saved student's tensors are loaded)."""
    if config.teacher_prompt:
        from pathlib import Path

        from vlprompt.core.tensor_io import read_safetensors

        if not Path(config.teacher_prompt).is_file():
            return 0
        meta = read_safetensors(config.teacher_prompt, what="teacher prompt file")[1]
        return int((meta.get("backbone") or {}).get("embed_dim", 0))
    if config.teacher_config:
        return 0
    return int(backbone.embed_dim)


def make_projector(kind: str, e_in: int, e_out: int) -> nn.Sequential:
    """``[B, E_s] -> [B, E_t]``: ``two_layer`` = Linear, BatchNorm1d, ReLU, Linear of width E_t (the authors' 1x1
    convolutions on ``[B, E, 1, 1]`` are these linear maps, with PyTorch's same default initialisation);
    ``linear`` = one Linear. ``e_out = 0``: empty until a saved student is loaded."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zero-element init when E_t is not known yet
        if kind == "linear":
            return nn.Sequential(nn.Linear(e_in, e_out))
        return nn.Sequential(nn.Linear(e_in, e_out), nn.BatchNorm1d(e_out), nn.ReLU(inplace=True),
                             nn.Linear(e_out, e_out))


def teacher_view(images: Tensor, teacher_backbone: Backbone) -> Tensor:
    """The student's preprocessed images as the teacher sees them: as they are when both towers take one image size
    (the authors' ViT-L/14 and ViT-B/16 at 224, promptkd.py l.391), else resized bicubically to the teacher's (not
    in the authors' code; the normalisation is the student's)."""
    size = int(teacher_backbone.image_size)
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False).to(images.dtype)


def kd_loss_sum(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * sum_{b,c} KL(softmax(z_t / T) || softmax(z_s / T))`` summed over the batch (promptkd.py l.410-414;
    the authors then divide by ``B * C``)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.softmax(teacher_logits.float() / t, dim=1),
                    reduction="sum") * (t * t)


class PromptKD(PacksTrainFeatures, PromptMethod):
    """Student: deep vision prompts (``vision_ctx`` + ``vision_deep``) and a projector to the teacher's feature
    space, classified against the teacher's stored text features."""

    teacher_text: Tensor  # buffers (register_buffer)
    teacher_names: Tensor

    def __init__(self, backbone: Backbone, classnames: list[str], config: PromptKDConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        dev = backbone.device
        self.vision_ctx: nn.Parameter | None = None
        if config.learns_vision:
            self.vision_ctx, self.vision_deep = deep_vision_prompts(backbone, config.n_ctx_vision,
                                                                    config.prompt_depth_vision, config.init_std)
        e_t = teacher_dim(config, backbone)
        self.projector = make_projector(config.projector, backbone.embed_dim, e_t).to(dev)
        # the teacher's stored class text features and their class names: empty until computed or loaded
        self.register_buffer("teacher_text", torch.zeros(0, e_t, device=dev))
        self.register_buffer("teacher_names", torch.zeros(0, dtype=torch.uint8, device=dev))
        self._teacher: list[PromptMethod] = []  # a plain list: the teacher stays out of the module tree

    # ------------------------------------------------------------------ teacher
    def teacher(self) -> PromptMethod:
        """The teacher (loaded on first use; training only): :func:`~vlprompt.methods.promptkd.teacher.load_teacher`."""
        if not self._teacher:
            from vlprompt.methods.promptkd.teacher import load_teacher

            self._teacher.append(load_teacher(self))
        return self._teacher[0]

    def set_teacher(self, teacher: PromptMethod) -> None:
        """Use ``teacher`` (a method built for this student's class names) instead of the configured one."""
        from vlprompt.methods.promptkd.teacher import check_teacher

        check_teacher(teacher)
        self._teacher[:] = [teacher.eval()]
        self.teacher_text = self.teacher_text[:0]  # recomputed from this teacher

    @torch.no_grad()
    def store_teacher_text(self) -> None:
        """Compute the teacher's normalised text features ``[C, E_t]`` of this student's classes once and keep them
        (with the class names) in the learned state: the prompt file then predicts without the teacher."""
        text = self.teacher().text_features().float()
        if text.dim() != 2 or text.shape[0] != self.n_cls:
            raise ConfigError(f"a '{self.teacher().method_name}' prompt cannot teach PromptKD: its text features have "
                              f"shape {tuple(text.shape)}, not one row per class [{self.n_cls}, E]")
        text = F.normalize(text, dim=-1)
        if self.projector[0].out_features != text.shape[1]:
            raise ConfigError(f"the teacher's text features have width {text.shape[1]}, the student's projector maps "
                              f"to {self.projector[0].out_features}: build the student with its teacher")
        names = "\n".join(self.classnames).encode("utf-8")
        self.teacher_text = text.to(self.teacher_text.device)
        self.teacher_names = torch.tensor(list(names), dtype=torch.uint8, device=self.teacher_text.device)

    def stored_classnames(self) -> list[str]:
        """The class names whose teacher text features the student holds."""
        if not self.teacher_names.numel():
            return []
        return bytes(self.teacher_names.cpu().tolist()).decode("utf-8").split("\n")

    def learned_state(self) -> dict[str, Tensor]:
        if self.teacher_text.numel() == 0:
            self.store_teacher_text()
        return super().learned_state()

    # ------------------------------------------------------------------ forward
    def text_features(self) -> Tensor:
        """``[n_cls, E_t]``: the stored teacher text features of this method's classes (computed from the teacher
        first when the student holds none)."""
        if self.teacher_text.numel() == 0:
            self.store_teacher_text()
        stored = self.stored_classnames()
        if stored == self.classnames:
            return self.teacher_text
        index = {name: i for i, name in enumerate(stored)}
        missing = [c for c in self.classnames if c not in index]
        if missing:
            raise ConfigError(f"this PromptKD student holds its teacher's text features for {len(stored)} classes, "
                              f"not for '{missing[0]}' ({len(missing)} missing): it predicts the classes it was "
                              "distilled on (train it on the unlabeled images of the target classes, as the authors' "
                              "base-to-new and cross-dataset runs do)")
        rows = torch.tensor([index[c] for c in self.classnames], device=self.teacher_text.device)
        return self.teacher_text.index_select(0, rows)

    def student_features(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, E_t]``: the (prompted) student image feature through the projector (unnormalised)."""
        if self.vision_ctx is None:
            feats = self.backbone.encode_image(images)
        else:
            feats = encode_image_deep(self.backbone, images, self.vision_ctx, list(self.vision_deep))
        return self.projector(feats.float())

    def encode_images(self, images: Tensor) -> Tensor:
        """Eval: ``[B, E_t]``. Train: ``[B, E_t + C]``, the student's projected feature and the teacher's logits."""
        student = self.student_features(images)
        if not self.training:
            return student
        with torch.no_grad():
            teacher = self.teacher()
            text = self.text_features()
            seen = teacher.encode_images(teacher_view(images, teacher.backbone))
            teacher_logits = teacher.logits(seen, text).float()
        return torch.cat([student, teacher_logits], dim=-1)

    def packed_widths(self) -> tuple[int, int]:
        """Train-mode features: the projected student feature ``[B, E_t]`` and the teacher's logits ``[B, C]``;
        :meth:`logits` (``s_s * normalise(u) T^T``, the student backbone's logit scale, promptkd.py l.251, l.408)
        reads the first."""
        return cast(nn.Linear, self.projector[0]).out_features, self.n_cls

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Term ``kd``: ``kd_weight * T^2 * sum_b KL(p_t || p_s) / C`` over the batch, counted by images (the
        authors' ``L_ukd`` times ``KD_WEIGHT``, promptkd.py l.410-416); ``labels`` are not read (unsupervised)."""
        student, teacher_logits = self.split_packed(features)
        if teacher_logits is None:
            raise ValueError("PromptKD trains on packed student features + teacher logits "
                             "(encode_images in train mode)")
        logits = self.logits(student, self.text_features())
        kd = kd_loss_sum(logits, teacher_logits, self.config.temperature) * (self.config.kd_weight / self.n_cls)
        return LossTerms({"kd": (kd, features.shape[0])}, logits)
