"""ProGrad: Prompt-aligned Gradient (Zhu, Niu, Han, Wu, Zhang; ICCV 2023).

CoOp's prompt trained with two losses on the same batch (``ProGrad.public/trainers/prograd.py``
l.280-293): the cross-entropy ``L_ce`` and the distillation loss towards zero-shot CLIP (the frozen
hand-crafted prompt of the build context, ``logit_scale * cos``)::

    L_kl = T^2 * mean_b sum_c -softmax(z_zs / T)_bc * log_softmax(z / T)_bc

Only ``L_ce``'s gradient is followed, made to not conflict with ``L_kl``'s (Eq. 5 of the paper;
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` l.311-349), per learned tensor::

    G = g_ce                                          if g_ce . g_kl >= 0
    G = g_ce - lambda * (g_ce . g_kl_hat) g_kl_hat    otherwise, g_kl_hat = g_kl / ||g_kl||

The trainer hands both (globally reduced) gradients to :meth:`ProGrad.combine_gradients`, so the
projection is exact under torchrun as well. Defaults: ``lambda`` 1.0 (LOSS.LAMBDA, ``train.py``
l.115 / ``scripts/prograd.sh`` l.15), ``T`` 1.0 (LOSS.T in ``configs/trainers/ProGrad/*.yaml``),
16 context tokens (``scripts/base2new_train_prograd.sh`` l.12).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import LossTerms, MethodContext, template_text_features
from vlprompt.methods.coop.model import CoOp
from vlprompt.methods.prograd.config import ProGradConfig


def prograd_kl_sum(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * sum_b sum_c -softmax(teacher/T) * log_softmax(student/T)`` over a batch (0-dim)."""
    t = temperature
    target = F.softmax(teacher.float() / t, dim=-1)
    return -(target * F.log_softmax(student.float() / t, dim=-1)).sum() * t * t


def project_gradient(g_ce: Tensor, g_kl: Tensor, lambda_value: float) -> Tensor:
    """ProGrad's rule for one tensor: ``g_ce`` minus ``lambda`` x its component along ``g_kl`` when they conflict."""
    norm = torch.linalg.vector_norm(g_kl)
    if norm == 0:
        return g_ce
    unit = g_kl / norm
    dot = torch.dot(g_ce.flatten(), unit.flatten())
    return g_ce - lambda_value * dot * unit if dot < 0 else g_ce


class ProGrad(CoOp):
    """CoOp whose update follows the cross-entropy gradient projected off the zero-shot distillation's."""

    zeroshot_text_features: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: ProGradConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        zs = template_text_features(backbone, self.classnames, self.context.templates)
        self.register_buffer("zeroshot_text_features", zs, persistent=False)

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        logits = self.forward_features(features)
        with torch.no_grad():
            teacher = self.logits(features, self.zeroshot_text_features)
        n = labels.shape[0]
        return LossTerms({"ce": (F.cross_entropy(logits.float(), labels, reduction="sum"), n),
                          "kl": (prograd_kl_sum(logits, teacher, self.config.temperature), n)}, logits)

    def combine_gradients(self, grads: dict[str, list[Tensor | None]]) -> list[Tensor | None]:
        """Per learned tensor: ``g_ce`` projected when it conflicts with ``g_kl`` (see the module doc)."""
        out: list[Tensor | None] = []
        for g_ce, g_kl in zip(grads["ce"], grads["kl"]):
            if g_ce is None or g_kl is None:
                out.append(g_ce)
            else:
                out.append(project_gradient(g_ce, g_kl, self.config.lambda_value))
        return out
