"""C-TPT: Calibrated Test-Time Prompt Tuning (Yoon, Yoon, Tee, Hasegawa-Johnson, Li, Yoo; ICLR 2024).

TPT (:mod:`vlprompt.methods.tpt.model`) whose loss also rewards spread-out class text features, which the paper
links to lower calibration error: with the normalised text features ``t_c [n_cls, E]`` of the current context,

    ATFD(ctx) = mean_c || t_c - mean_c' t_c' ||_2              (clip/custom_clip.py l.319-330)
    L(ctx)    = H(mean_{v in S} softmax(z_v)) - lambda * ATFD   (tpt_classification.py l.124-136, 155-168)

hee-suk-yoon/C-TPT computes ATFD inside the same forward as the logits (``l2_norm_mean_training``), for
TPT+CoCoOp too (``clip/cocoop.py`` l.211-221); ``--run_type tpt_ctpt`` without ``--two_step`` (both scripts)
takes one AdamW step on the sum, as here.
"""

from __future__ import annotations

from torch import Tensor

from vlprompt.methods.tpt.model import TPT


def average_text_feature_dispersion(text_features: Tensor) -> Tensor:
    """ATFD of normalised text features ``[n_cls, E]`` -> scalar: the mean L2 distance to their centroid."""
    return (text_features - text_features.mean(dim=0)).norm(dim=-1).mean()


class CTPT(TPT):
    """TPT with the loss ``avg_entropy - lambda_term * ATFD`` (the rest is TPT's: views, selection, reset, start)."""

    def test_time_loss(self, selected_logits: Tensor, text_features: Tensor) -> Tensor:
        ent = super().test_time_loss(selected_logits, text_features)
        return ent - self.config.lambda_term * average_text_feature_dispersion(text_features)
