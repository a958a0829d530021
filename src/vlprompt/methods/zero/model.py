"""Zero: test-time adaptation with "zero" temperature (Farina, Franchi, Iacca, Mancini, Ricci; NeurIPS 2024).

FarinaMatteo/zero ``ttas/zero.py`` lines 59-98 (``Zero.zero``), with ``confidence_filter`` of ``ttas/base.py``
lines 56-62 and ``greedy_break`` of ``utils/tools.py`` lines 205-218. For one test image with views
``[V, 3, H, W]`` (``views[0]`` the original; the authors' 63 random resized crops + flips of
``data/augs.py`` lines 36-67 and the original, 64 in all):

1. ``l = z_img @ z_txt^T`` ``[V, n_cls]``: cosine similarities of the views' normalised image features with
   the class text features, computed once (zero.py l.64-75);
2. ``p = softmax(l / temp)`` with CLIP's temperature ``temp = 1 / logit_scale`` (l.76, custom_clip.py
   l.98-100); the views' entropies ``H = -sum p log p``; the ``int(V * gamma)`` views of lowest entropy are
   the confident ones (base.py l.56-62; every view competes, the original included);
3. the zero-temperature marginal: ``p_bar = sum_confident softmax(l / eps)`` with ``eps`` the machine epsilon
   of the logits' dtype (zero.py l.80-81): one vote per confident view for its arg-max class;
4. ties of the largest ``p_bar`` (exact equality, l.84-88) are broken greedily (l.90-95, tools.py l.212-218):
   going through the other views from the most confident on, the first whose arg-max is a tied class wins;
   the winner gets one more vote (``p_bar[winner] += 1``). The returned ``p_bar`` (the vote counts) is
   the prediction (zero.py l.98; ``run.py`` l.150 takes its top-k).

Here ``logits = log(p_bar / sum p_bar)``: softmax gives back the vote shares, the probabilities ECE reads (the
repository computes no ECE); classes without a vote get ``log(float32 tiny) = -87.3`` (finite, probability
~1e-38). Nothing is learned, nothing is reset (no state crosses images); a test image costs ``V`` image
forwards, no text pass (the class text features are computed once for the stream) and no backward.

Where vlprompt differs from the repository's code, and why:

* fp32 instead of the authors' fp16 autocast (run.py l.136): in fp16 the "zero" temperature is fp16's epsilon
  (9.8e-4), a soft vote between views whose two best classes are within ~1e-3 in cosine; in fp32 it is 1.2e-7,
  a hard vote (the method as the paper writes it);
* entropy ``-sum xlogy(p, p)``: a probability that underflows to exactly 0 (logit gap > ~103, never with
  CLIP's scale of 100 and cosines in [-1, 1] of real features) counts 0 instead of the authors' NaN;
* the last resort of the tie break, reached only when none of the other views votes for a tied class:
  the authors' ``break_sample_tie`` (tools.py l.205-209) masks ``logit[~ties]`` with ``ties`` an integer
  tensor, so ``~`` is the bitwise complement and the classes masked are ``n_cls - 1 - t`` (not the
  non-tied ones); here the intended rule is used: the tied class of largest cosine in the first other view
  (the most confident view when no other view is left, where the authors' code raises ``IndexError``);
* the confident views are ordered by a stable sort (the authors' ``argsort`` is not stable): only views of
  exactly equal entropy can differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import Adapted
from vlprompt.methods.view_features import ViewFeatureMethod


def zero_votes(cosine: Tensor, logit_scale: Tensor | float, gamma: float) -> Tensor:
    """Zero's marginal ``p_bar [n_cls]``: the confident views' zero-temperature votes, ties broken.

    Args:
        cosine: ``[V, n_cls]`` cosine similarities of the views (row 0 the original) with the class prompts.
        logit_scale: CLIP's scale (``exp`` of the learned log scale), the inverse softmax temperature.
        gamma: the fraction of views kept as confident, ``int(V * gamma)`` of them.
    """
    n_views = cosine.shape[0]
    keep = int(n_views * gamma)
    if keep < 1:
        raise ConfigError(f"Zero keeps int(V * gamma) = int({n_views} * {gamma}) = 0 confident views: give more "
                          "test-time views or a larger method.gamma")
    temp = 1.0 / logit_scale  # custom_clip.py l.98-100
    probs = (cosine / temp).softmax(1)
    entropy = -torch.special.xlogy(probs, probs).sum(1)  # base.py l.57
    order = torch.argsort(entropy, stable=True)  # most confident first (base.py l.58-59)
    zero_temp = torch.finfo(cosine.dtype).eps  # zero.py l.80
    p_bar = (cosine[order[:keep]] / zero_temp).softmax(1).sum(0)  # zero.py l.81
    ties = (p_bar == p_bar.max()).nonzero().flatten()  # zero.py l.84-88
    if ties.numel() > 1:
        tied = set(ties.tolist())
        rest = cosine[order[keep:]]  # the other views, most confident first (zero.py l.92-94)
        winner = next((c for c in rest.argmax(1).tolist() if c in tied), None)  # tools.py l.214-217
        if winner is None:
            reference = rest[0] if rest.shape[0] else cosine[order[0]]
            winner = int(ties[reference[ties].argmax()])
        p_bar = p_bar.clone()
        p_bar[winner] += 1  # zero.py l.95
    return p_bar


class Zero(ViewFeatureMethod):
    """The zero-temperature marginal over the confident views (see the module docstring); no backpropagation."""

    def adapt_and_predict(self, views: Tensor) -> Adapted:
        """``views [V, 3, H, W] -> Adapted(log(p_bar / sum p_bar) [n_cls], cost)``."""
        with torch.no_grad():
            feats = self.view_features(views)  # [V, E]
            txt, text_passes = self.class_features(feats)  # [n_cls, E]
            votes = zero_votes(feats @ txt.t(), self.backbone.logit_scale.to(feats.device).float(), self.config.gamma)
            logits = (votes / votes.sum()).clamp_min(torch.finfo(torch.float32).tiny).log()
        return Adapted(logits, {"image_forward": int(views.shape[0]), "text_forward": text_passes, "backward": 0})
