"""DePT's channel-adjusted transfer (CAT) head: per-channel transforms of the image and the text features and a
linear classifier over the transformed features (Koorye/DePT@d4ff416, ``trainers/elp_maple.py`` l.18-40 ``FiLM``,
``trainers/elp_coop.py`` l.27-48 and l.103-124).

    FiLM(x) = s * x + b                          # s, b: [E], initialised to 1 and 0
    head(f) = W FiLM_img(f) + c                  # W: [n_cls, E], c: [n_cls] (nn.Linear's initialisation)

The linear classifier belongs to the classes it was trained for; the head records them (``classes``: one 64-bit key
per class name, :func:`class_keys`) so that a method built for other classes knows the head does not apply to them
(the authors build it only for the base classes, l.38-48, and predict new classes with the host alone, l.77-84).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def class_keys(classnames: Sequence[str]) -> Tensor:
    """``[n_cls]`` int64: one key per class name (the first 8 bytes of its BLAKE2b digest; 0 is never a key)."""
    keys = [int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
            for name in classnames]
    return torch.tensor([k if k != 0 else 1 for k in keys], dtype=torch.long)


class FiLM(nn.Module):
    """``x -> scale * x + bias`` per channel over ``[..., E]`` (``trainers/elp_maple.py`` l.18-40: scale 1, bias 0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale.to(x.dtype) * x + self.bias.to(x.dtype)


class CATHead(nn.Module):
    """FiLM of the image and the text features (``film``) and a linear classifier ``E -> n_cls`` (``linear``).

    Attributes:
        classes: ``[n_cls]`` keys of the classes the classifier's rows belong to (persistent: saved with the prompt);
            all 0 when it belongs to none of the method's classes.
    """

    classes: Tensor  # buffers (register_buffer)

    def __init__(self, dim: int, classnames: Sequence[str], *, film: bool = True) -> None:
        super().__init__()
        self.film_img = FiLM(dim) if film else None
        self.film_text = FiLM(dim) if film else None
        self.linear = nn.Linear(dim, len(classnames))
        self.register_buffer("classes", class_keys(classnames))

    def image(self, features: Tensor) -> Tensor:
        """Transformed image features ``[B, E]`` (FiLM_img, or as they are)."""
        return features if self.film_img is None else self.film_img(features)

    def text(self, features: Tensor) -> Tensor:
        """Transformed text features ``[..., E]`` (FiLM_text, or as they are)."""
        return features if self.film_text is None else self.film_text(features)

    def forward(self, features: Tensor) -> Tensor:
        """Class scores ``[N, n_cls]`` of already transformed features ``[N, E]``."""
        return self.linear(features)

    def serves(self, keys: Tensor) -> bool:
        """Whether the classifier's rows are the classes ``keys`` ``[n_cls]``, in that order."""
        return self.classes.shape == keys.shape and bool(torch.equal(self.classes, keys.to(self.classes.device)))

    def state_for(self, state: dict[str, Tensor], prefix: str, keys: Tensor) -> dict[str, Tensor]:
        """``state`` (a saved learned state) with this head's tensors (under ``prefix``) fitted to the classes ``keys``:

        the saved classifier unchanged when it was trained for these classes; its rows of these classes when all of
        them are among its own (a subset, e.g. ImageNet-A / -R of an ImageNet head: the authors keep those rows,
        ``trainers/elp_coop.py`` l.265-287); else this head's current classifier, marked as belonging to no class
        (the host alone predicts, as the authors' new-class path). FiLM tensors are class-free and kept as saved.
        """
        saved = state.get(prefix + "classes")
        weight, bias = state.get(prefix + "linear.weight"), state.get(prefix + "linear.bias")
        if saved is None or weight is None or bias is None or torch.equal(saved.cpu(), keys.cpu()):
            return state  # the same classes (or a damaged file: the shape check names it)
        row_of = {int(k): i for i, k in enumerate(saved.tolist()) if k != 0}
        rows = [row_of.get(int(k)) for k in keys.tolist()]
        out = dict(state)
        if all(r is not None for r in rows):
            index = torch.tensor(rows, dtype=torch.long)
            out[prefix + "linear.weight"], out[prefix + "linear.bias"] = weight[index], bias[index]
            out[prefix + "classes"] = keys.cpu().clone()
        else:
            out[prefix + "linear.weight"] = self.linear.weight.detach().cpu().clone()
            out[prefix + "linear.bias"] = self.linear.bias.detach().cpu().clone()
            out[prefix + "classes"] = torch.zeros_like(keys.cpu())
        return out
