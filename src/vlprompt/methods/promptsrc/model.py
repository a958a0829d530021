"""PromptSRC: self-regulating prompts (Khattak, Wasim, Naseer, Khan, Yang, Khan; ICCV 2023).

IVLP deep prompts (:mod:`vlprompt.methods.ivlp`) trained with cross-entropy plus three terms that keep
the prompted model close to the frozen one (muzairkhattak/PromptSRC, trainers/promptsrc.py
``CustomCLIP.forward`` lines 185-211 and ``PromptSRC.forward_backward`` lines 297-313)::

    t~_c  = normalise(mean_k g0(template_k(c)))          # frozen text, 60 templates (textual diversity)
    f~_b  = normalise(f0(x_b))                           # frozen image feature
    z~    = logit_scale * f~ t~^T                         # frozen logits   [B, n_cls]
    loss  = CE(z, y) + w_t * L1(t, t~) + w_i * L1(f, f~) + sum KL(softmax z~ || softmax z) / (B * n_cls)

(t, f: normalised prompted features; z: prompted logits; L1 = mean absolute difference). After each
epoch e (1-based) the prompts are accumulated with Gaussian weights ``w_e = N(e; gpa_mean, gpa_std)``
normalised over the run's epochs, and the aggregate replaces the prompts after the last epoch
(Gaussian prompt aggregation, lines 262-335). The frozen teacher features are averaged *before*
normalisation, as in the reference (lines 116-128, 199-200).

In train mode :meth:`encode_images` returns ``[B, 2E]``: the prompted and the frozen image feature side
by side (one call per step, as the trainer makes); in eval mode the prompted ``[B, E]``. :meth:`logits`
reads the prompted half of either.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import LossTerms, MethodContext, PacksTrainFeatures
from vlprompt.methods.ivlp.model import IVLP
from vlprompt.methods.promptsrc.config import PromptSRCConfig


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """Gaussian density at epochs 1..N, normalised to sum 1 (promptsrc.py lines 265-270, 358-360)."""
    dens = [math.exp(-0.5 * ((a - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for a in range(1, epochs + 1)]
    total = sum(dens)
    if total == 0.0:  # every epoch far in the tail: fall back to log-densities (same ratios)
        logs = [-0.5 * ((a - mean) / std) ** 2 for a in range(1, epochs + 1)]
        top = max(logs)
        dens = [math.exp(v - top) for v in logs]
        total = sum(dens)
    return [d / total for d in dens]


def teacher_templates(n: int) -> list[str]:
    """The first ``n`` of CLIP's 80 ImageNet templates; PromptSRC's trainers/imagenet_templates.py holds the
    first 60 of them."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES[:n]]


class PromptSRC(PacksTrainFeatures, IVLP):
    """IVLP + self-regulating consistency terms + Gaussian prompt aggregation."""

    teacher_text: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: PromptSRCConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        names = [n.replace("_", " ") for n in self.classnames]
        with torch.no_grad():
            acc = None
            templates = teacher_templates(config.n_templates)
            for template in templates:
                feats = backbone.encode_text(backbone.tokenize([template.replace("{}", n) for n in names])).float()
                acc = feats if acc is None else acc + feats
            assert acc is not None, "no teacher templates"
            teacher = F.normalize(acc / len(templates), dim=-1)
        self.register_buffer("teacher_text", teacher, persistent=False)  # [n_cls, E]
        self._gpa: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ features
    def encode_images(self, images: Tensor) -> Tensor:
        prompted = super().encode_images(images)
        if not self.training:
            return prompted
        frozen = self.backbone.encode_image(images).to(prompted.dtype)
        return torch.cat([prompted, frozen], dim=-1)  # [B, 2E]

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Named loss terms and logits ``[B, n_cls]`` from packed ``[B, 2E]`` prompted + frozen image features.

        ``ce``: cross-entropy; ``scl_text``: L1 of prompted vs frozen class text features (a per-batch value,
        given as ``(v * B, B)``); ``scl_image``: L1 of prompted vs frozen image features (mean over the feature
        dimension, summed over images); ``scl_logits``: KL(frozen || prompted) summed over classes / n_cls.
        Their sum equals the authors' ``loss_ce + L_SCL_text + L_SCL_image + L_SCL_logits`` of one batch.
        """
        prompted, frozen = self.split_packed(features)
        if frozen is None:
            raise ValueError("PromptSRC trains on packed prompted + frozen image features "
                             "(encode_images in train mode)")
        cfg = self.config
        b = labels.shape[0]
        scale = self.backbone.logit_scale.to(prompted.device)
        img = F.normalize(prompted.float(), dim=-1)
        txt = self.text_features()
        logits = scale * img @ txt.t()
        with torch.no_grad():
            zs_img = F.normalize(frozen.float(), dim=-1)
            zs_logits = scale * zs_img @ self.teacher_text.t()
        ce = F.cross_entropy(logits, labels, reduction="sum")
        l_text = F.l1_loss(txt, self.teacher_text, reduction="mean") * cfg.text_loss_weight
        l_image = F.l1_loss(img, zs_img, reduction="none").mean(dim=-1).sum() * cfg.image_loss_weight
        l_kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum",
                        log_target=True) / logits.shape[1]
        return LossTerms({"ce": (ce, b), "scl_text": (l_text * b, b), "scl_image": (l_image, b),
                          "scl_logits": (l_kl, b)}, logits)

    # ------------------------------------------------------------------ Gaussian prompt aggregation
    def on_epoch_end(self, epoch: int, max_epoch: int) -> None:
        """Add ``w_{epoch+1} * prompts`` to the aggregate; after the last epoch the aggregate becomes the prompts."""
        w = gpa_weights(max_epoch, self.config.gpa_mean, self.config.gpa_std)[epoch]
        current = {k: p.detach().float() for k, p in self.learned_parameters()}
        if self._gpa is None:
            self._gpa = {k: w * v for k, v in current.items()}
        else:
            self._gpa = {k: self._gpa[k] + w * v for k, v in current.items()}
        if epoch + 1 == max_epoch:
            with torch.no_grad():
                for k, p in self.learned_parameters():
                    p.copy_(self._gpa[k].to(p.dtype))

    def learned_state(self) -> dict[str, Tensor]:
        """Prompts, plus the running aggregate (``gpa.<name>``) so that a resumed run continues it exactly."""
        state = super().learned_state()
        if self._gpa is not None:
            state.update({f"gpa.{k}": v.detach().cpu().contiguous() for k, v in self._gpa.items()})
        return state

    def load_learned_state(self, state: dict[str, Tensor]) -> None:
        gpa = {k[len("gpa."):]: v for k, v in state.items() if k.startswith("gpa.")}
        super().load_learned_state({k: v for k, v in state.items() if not k.startswith("gpa.")})
        own = dict(self.learned_parameters())
        self._gpa = {k: v.to(own[k].device).float() for k, v in gpa.items() if k in own} or None
