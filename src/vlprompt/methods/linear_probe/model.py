"""Linear-probe CLIP as CoOp's baseline (``lpclip/linear_probe.py`` of KaiyangZhou/CoOp).

L2-regularised multinomial logistic regression (scikit-learn ``LogisticRegression(solver="lbfgs",
max_iter=1000, penalty="l2", C)``, l.57) on the raw frozen image features of the few-shot training
images (test transform; ``feat_extractor.py`` l.131, l.155). The inverse regularisation strength ``C``
is chosen on the validation split as lpclip does (l.53-118): validation accuracy on the grid
``1e6, 1e4, ..., 1e-6``; around the best value ``c`` the interval ``[c / 10, 10 c]`` is bisected
``search_steps`` times in log10 space, each step keeping the better end (the left one on ties) and
halving towards it. The fitted classifier is stored as ``weight [C, E]`` and ``bias [C]``::

    logits = f W^T + b          (scikit-learn's decision function; f unnormalised)

scikit-learn is needed only to fit (``pip install -e '.[probe]'`` in the vlprompt
clone); prediction is plain torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import FitData, MethodContext, PromptMethod
from vlprompt.methods.linear_probe.config import LinearProbeConfig

#: lpclip's initial grid of C (``linear_probe.py`` l.54)
C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def _sklearn_logistic_regression() -> Any:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise ConfigError("method linear_probe fits with scikit-learn, which is not installed: "
                          "pip install -e '.[probe]' in the vlprompt clone (or pip install scikit-learn)") from exc
    return LogisticRegression


def search_c(fit_predict: Any, train: tuple[Any, Any], val: tuple[Any, Any], steps: int) -> tuple[float, Any]:
    """lpclip's search of C: ``(C, fitted classifier)`` maximising validation accuracy.

    ``fit_predict(C)`` returns a fitted classifier with ``predict``; accuracies compare exactly as in
    ``linear_probe.py`` (the grid's first maximum; then ``acc_left < acc_right`` picks the right end).
    """
    xv, yv = val

    def acc(clf: Any) -> float:
        return float((clf.predict(xv) == yv).sum()) / len(yv)

    grid = [acc(fit_predict(c)) for c in C_GRID]
    c_peak = C_GRID[max(range(len(grid)), key=lambda i: (grid[i], -i))]
    left, right = 0.1 * c_peak, 10.0 * c_peak
    chosen, clf = c_peak, None
    for _ in range(steps):
        clf_left, clf_right = fit_predict(left), fit_predict(right)
        if acc(clf_left) < acc(clf_right):
            chosen, clf = right, clf_right
            left, right = 0.5 * (math.log10(right) + math.log10(left)), math.log10(right)
        else:
            chosen, clf = left, clf_left
            right, left = 0.5 * (math.log10(right) + math.log10(left)), math.log10(left)
        left, right = 10.0 ** left, 10.0 ** right
    if clf is None:  # no bisection step: the grid's best
        clf = fit_predict(c_peak)
    return chosen, clf


class LinearProbe(PromptMethod):
    """``logits = f W^T + b`` with ``W [n_cls, E]``, ``b [n_cls]`` fitted by :meth:`fit` (class-specific)."""

    weight: Tensor  # buffers (register_buffer)
    bias: Tensor
    C: Tensor

    def __init__(self, backbone: Backbone, classnames: list[str], config: LinearProbeConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        dev = backbone.device
        self.register_buffer("weight", torch.zeros(self.n_cls, backbone.embed_dim, device=dev))
        self.register_buffer("bias", torch.zeros(self.n_cls, device=dev))
        self.register_buffer("C", torch.tensor(float(config.C or 0.0), device=dev))

    def text_features(self) -> Tensor:
        """The fitted weight ``[n_cls, E]`` (what :meth:`logits` multiplies with)."""
        return self.weight

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        return image_features.float() @ text_features.float().t() + self.bias.float()

    def fit(self, data: FitData) -> dict[str, Any]:
        import numpy as np

        regression = _sklearn_logistic_regression()
        xt, yt = (t.detach().cpu().double().numpy() for t in data.features("train"))
        present = np.unique(yt)
        if len(present) < 2:
            raise ConfigError("linear_probe needs training images of at least two classes")

        def fit_predict(c: float) -> Any:
            return regression(solver="lbfgs", max_iter=self.config.max_iter, C=c).fit(xt, yt)  # L2: the default

        info: dict[str, Any] = {}
        if self.config.C is not None:
            c, clf = float(self.config.C), fit_predict(float(self.config.C))
        else:
            xv, yv = (t.detach().cpu().double().numpy() for t in data.features("val"))
            if len(yv) == 0:
                raise ConfigError("linear_probe searches C on the validation split, which is empty here; "
                                  "set method.C to a fixed value")
            c, clf = search_c(fit_predict, (xt, yt), (xv, yv), self.config.search_steps)
            info["val_accuracy"] = 100.0 * float((clf.predict(xv) == yv).sum()) / len(yv)
        coef, intercept = torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_)
        if coef.shape[0] == 1:  # binary: decision z for classes[1]; softmax([-z/2, z/2]) = sigmoid(z)
            coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
        weight = torch.zeros_like(self.weight, dtype=torch.float64)
        bias = torch.full_like(self.bias, -1e4, dtype=torch.float64)  # classes without training images
        classes = torch.from_numpy(clf.classes_.astype("int64"))
        weight[classes], bias[classes] = coef, intercept
        self.weight.copy_(weight.to(self.weight))
        self.bias.copy_(bias.to(self.bias))
        self.C.fill_(c)
        return {"C": c, **info}
