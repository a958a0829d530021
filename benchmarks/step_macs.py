"""Multiply-add bounds of the training-step ratios, from the real token counts of the class names.

The published CoOp / CoCoOp step (``published_step.py``) runs every prompt at 77 tokens; vlprompt's exact
shared-prefix pass runs each group's prefix (SOS + context) once and each class only its *real* suffix rows
(its name's tokens, the period and EOT: no padding after EOT), and the last block only at the EOT rows
(keys / values still on all rows). Both are bound by matrix products, so the ratio of the multiply-adds each
executes is the ratio to expect at equal matmul efficiency: the **bound** written next to every measured ratio.

What is counted (all matrix products of the towers; layer norms, GELU, softmax and residual additions are not
multiply-adds of a product and are left out):

* text tower, per layer and row: ``12 W^2`` (QKV 3, output projection 1, MLP 8); attention ``2 W`` per
  (query, key) pair (``QK^T`` and ``PV``); the final projection ``W E`` per EOT row. The published attention runs
  the full 77 x 77 square (``nn.MultiheadAttention`` with an additive ``-inf`` mask computes every pair);
  vlprompt's is counted causal (each row only the keys before it: the least an exact pass needs). Backward: the
  frozen weights get no gradient, so each product's backward is its input gradient (as many multiply-adds as its
  forward), and attention's backward is 2.5x its forward (torch's count for the fused kernels: the scores are
  recomputed, then ``dP``, ``dV``, ``dQ``, ``dK``).
* image tower: forward only (frozen, no gradient in either path), counted by ``torch.utils.flop_counter`` on one
  image (every architecture; the CPU SDPA kernels registered with torch's SDPA formulas) times the batch.

``tests/test_bench_macs.py`` checks the published text count against ``torch.utils.flop_counter`` on a run of
the published text encoder (forward + backward), and vlprompt's count against the token counts by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.flop_counter as flop_counter

#: attention backward / forward multiply-adds (torch's ``sdpa_backward_flop``: 5 batched products vs 2)
ATTN_BACKWARD = 2.5


@dataclass(frozen=True)
class TextShape:
    """The text tower's width ``W``, depth, output width ``E`` and context length (77 for CLIP)."""

    width: int
    layers: int
    embed: int
    context: int


def text_shape(backbone: Any) -> TextShape:
    """The :class:`TextShape` of an open_clip vlprompt backbone (``backbone.model``)."""
    oc = backbone.model
    text = oc.text if hasattr(oc, "text") else oc
    proj = text.text_projection
    width = int(text.transformer.width)
    embed = int(proj.shape[1]) if isinstance(proj, torch.Tensor) else int(proj.out_features)
    return TextShape(width, int(text.transformer.layers), embed, int(text.positional_embedding.shape[0]))


def suffix_lengths(backbone: Any, names: Sequence[str], prefix_words: str) -> tuple[int, list[int]]:
    """``(P, [s_c])``: prefix rows (SOS + context) and each class's real suffix rows (name, period, EOT) of the
    prompts ``"{prefix_words} {name}."`` as CoOp's ``PromptLearner`` builds them (``_`` read as a space)."""
    sot, eot = backbone.sot_token_id, backbone.eot_token_id
    p = 1 + len(backbone.encode_tokens(prefix_words))
    lengths = []
    for name in names:
        ids = [sot, *backbone.encode_tokens(f"{prefix_words} {name.replace('_', ' ')}."), eot]
        lengths.append(len(ids) - p)
    return p, lengths


def _block_macs(shape: TextShape, rows: float, pairs: float) -> float:
    """Forward + backward multiply-adds of ``rows`` rows through the linear layers of one block and ``pairs``
    (query, key) pairs of attention."""
    w = shape.width
    return 2 * 12 * w * w * rows + (1 + ATTN_BACKWARD) * 2 * w * pairs


def published_text_macs(shape: TextShape, prompts: int) -> float:
    """Multiply-adds of the published text pass (forward + backward): ``prompts`` prompts at ``shape.context``
    tokens through every layer, the full attention square, the projection at each EOT row."""
    length = shape.context
    per_prompt = shape.layers * _block_macs(shape, length, length * length) + 2 * shape.width * shape.embed
    return prompts * per_prompt


def vlprompt_text_macs(shape: TextShape, prefix: int, suffix: Sequence[int], groups: int = 1) -> float:
    """Multiply-adds of the exact shared-prefix pass (forward + backward): ``groups`` prefixes of ``prefix`` rows
    (1 for CoOp, one per image for CoCoOp) and, per group, each class's ``suffix[c]`` real rows; causal attention;
    layer 0's suffix QKV rows shared by the groups (they do not depend on the prefix); the last block's keys /
    values on all rows, its query, output projection and MLP only at the EOT rows."""
    w, n, total_s = shape.width, len(suffix), sum(suffix)
    rows = groups * (prefix + total_s)
    prefix_pairs = prefix * (prefix + 1) / 2
    suffix_pairs = sum(s * prefix + s * (s + 1) / 2 for s in suffix)
    pairs = groups * (prefix_pairs + suffix_pairs)
    macs = (shape.layers - 1) * _block_macs(shape, rows, pairs)
    macs -= 2 * 3 * w * w * (groups - 1) * total_s  # layer 0: the suffix QKV rows once for all groups
    eot_rows = groups * n
    last_pairs = groups * sum(prefix + s for s in suffix)
    macs += 2 * (2 * w * w * rows + 10 * w * w * eot_rows) + (1 + ATTN_BACKWARD) * 2 * w * last_pairs
    return macs + eot_rows * 2 * w * shape.embed


def _register_cpu_attention_flops() -> None:
    """Count the CPU SDPA kernels with torch's SDPA formulas (torch registers only the CUDA ones)."""
    aten = torch.ops.aten
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", flop_counter.sdpa_flop),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", flop_counter.sdpa_backward_flop)):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op, get_raw=True)(formula)


def image_macs_per_image(backbone: Any) -> float:
    """Forward multiply-adds of one image through the image tower (``torch.utils.flop_counter``). The input
    requires a gradient so that ``nn.MultiheadAttention`` takes its composite path, whose products the counter
    sees (its fused inference kernel is one opaque op); the products are the same."""
    _register_cpu_attention_flops()
    size = int(backbone.image_size)
    visual = backbone.model.visual
    dtype = next(visual.parameters()).dtype
    x = torch.zeros(1, 3, size, size, dtype=dtype, device=backbone.device, requires_grad=True)
    counter = flop_counter.FlopCounterMode(display=False)
    with counter, torch.enable_grad():
        visual(x)
    return counter.get_total_flops() / 2


@dataclass(frozen=True)
class StepMacs:
    """Multiply-adds of one step of each path and their ratio (the bound)."""

    published_text: float
    vlprompt_text: float
    vlprompt_text_padded: float  # the same pass with every suffix padded to the longest (the pass before packing)
    image: float  # the image tower on the batch (0 when vlprompt's step reads cached features)
    published_image: float

    @property
    def published(self) -> float:
        return self.published_text + self.published_image

    @property
    def vlprompt(self) -> float:
        return self.vlprompt_text + self.image

    @property
    def bound(self) -> float:
        return self.published / self.vlprompt

    @property
    def bound_padded(self) -> float:
        return self.published / (self.vlprompt_text_padded + self.image)

    def row(self) -> dict[str, float]:
        """The JSON fields of a result row (G-MACs and bounds)."""
        return {"published_gmacs": self.published / 1e9, "vlprompt_gmacs": self.vlprompt / 1e9,
                "published_text_gmacs": self.published_text / 1e9, "vlprompt_text_gmacs": self.vlprompt_text / 1e9,
                "vlprompt_text_padded_gmacs": self.vlprompt_text_padded / 1e9,
                "image_gmacs": self.published_image / 1e9, "macs_bound": self.bound,
                "macs_bound_padded": self.bound_padded,
                "image_share_published": self.published_image / self.published,
                "image_share_vlprompt": self.image / self.vlprompt}

    def text(self) -> str:
        """One line: the bound and its parts."""
        return (f"multiply-add bound {self.bound:.1f}x ({self.published / 1e9:.4g} vs {self.vlprompt / 1e9:.4g} "
                f"GMAC; text {self.published_text / 1e9:.4g} vs {self.vlprompt_text / 1e9:.4g}, padded "
                f"{self.vlprompt_text_padded / 1e9:.4g} -> bound {self.bound_padded:.1f}x; image tower "
                f"{self.published_image / 1e9:.4g} vs {self.image / 1e9:.4g})")


def step_macs(backbone: Any, names: Sequence[str], *, prefix_words: str, groups: int, images: int,
              image_every_step: bool, image_macs: float | None = None) -> StepMacs:
    """The :class:`StepMacs` of one step over ``names``: CoOp (``groups`` 1, ``images`` the batch) or CoCoOp
    (``groups`` = ``images``, one prompt set per image); the published step always runs the image tower on the
    batch, vlprompt's only when ``image_every_step`` (on-the-fly augmentation) and else reads cached features."""
    shape = text_shape(backbone)
    p, lengths = suffix_lengths(backbone, names, prefix_words)
    per_image = image_macs_per_image(backbone) if image_macs is None else image_macs
    tower = images * per_image
    return StepMacs(
        published_text=published_text_macs(shape, groups * len(names)),
        vlprompt_text=vlprompt_text_macs(shape, p, lengths, groups),
        vlprompt_text_padded=vlprompt_text_macs(shape, p, [max(lengths)] * len(lengths), groups),
        image=tower if image_every_step else 0.0, published_image=tower)
