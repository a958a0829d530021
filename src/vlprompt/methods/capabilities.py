"""What a method needs and does (:class:`Capabilities`), declared once where the method is registered.

The engine, tasks, report and checkpoints read a built method's ``method.capabilities`` (or, before a
method is built, ``get_method(name).capabilities_for(config)``), never the method's name or class
attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlprompt.backbones.local import GLOBAL_LOCAL, GLOBAL_LOCAL_UNPROJECTED


@dataclass(frozen=True)
class Capabilities:
    """What a method needs and does; engine, tasks and report read these instead of testing method names.

    Attributes:
        training: ``"sgd"`` (learned by the trainer's gradient loop), ``"fit"`` (fitted in closed form on
            the few-shot features by :meth:`~vlprompt.methods.base.PromptMethod.fit`: linear probe,
            Tip-Adapter), ``"fit+sgd"`` (fitted, then trained by the loop: Tip-Adapter-F) or ``"none"``
            (training-free, e.g. zero-shot CLIP).
        supervision: ``"labels"`` (ground-truth few-shot labels) or ``"none"`` (no labels: training-free,
            or unsupervised such as UPL, which learns from its own pseudo-labels).
        image_conditional: text features depend on the image (CoCoOp): they cannot be computed once
            for an evaluation.
        local_features: ``encode_images`` returns patch-level (local) image features besides the global
            one, packed ``[B, 1 + P, E]`` (LoCoOp); the backbone must provide them.
        unprojected_features: with ``local_features``, those features are taken before the image tower's output
            projection, ``[B, 1 + P, W]`` (:func:`~vlprompt.backbones.local.packed_unprojected_global_local`), for a
            method that learns a map there and projects them itself (GalLoP's local projection); a cache kind of
            their own.
        modifies_encoders: image features depend on learned tensors (LoRA, deep vision prompts): they are
            never cached (memory or disk), and training encodes its images at every step.
        class_specific: what it learns belongs to the training classes (a linear probe's weights,
            Tip-Adapter's cache, CoOp's class-specific context): it predicts only those classes, so
            base-to-new and cross-dataset evaluation on other class names are refused.
        owns_gradient_step: the method turns its loss terms' gradients into the update itself
            (:meth:`~vlprompt.methods.base.PromptMethod.combine_gradients`; ProGrad).
        adaptation: how the method adapts at test time, one unlabeled test image (its augmented views) at a
            time, through :meth:`~vlprompt.methods.base.PromptMethod.adapt_and_predict`: ``"none"`` (it does
            not: evaluated in batches), ``"episodic"`` (state reset to its initial value before every test
            image by :meth:`~vlprompt.methods.base.PromptMethod.reset_adaptation`: TPT, C-TPT, Zero, MTA;
            the predictions do not depend on the stream's order) or ``"online"`` (state carried across the
            stream: caches such as TDA; the order is part of the run).
        ood_scores: the OOD scores the method defines itself (NegLabel's ``"neglabel"``, GalLoP's ``"gallop"``),
            computed by its :meth:`~vlprompt.methods.base.PromptMethod.ood_score`; ``vlprompt ood`` uses them by
            default (otherwise MCM and GL-MCM). Empty (default): only the generic scores of
            :data:`vlprompt.core.ood.SCORES`.
        ood_local_scores: those of ``ood_scores`` that read patch (local) features, so that OOD evaluation
            asks :meth:`~vlprompt.methods.base.PromptMethod.ood_features` for them (``local=True``).
        transductive: learns from the unlabeled training images of every class it will be tested on (PromptKD's
            setting: the target domain's images, no labels); the base-to-new protocol then trains it once on all
            classes (``data.subsample_classes=all``) and tests that prompt on the base and on the new classes.
            Needs ``supervision="none"``.
    """

    training: Literal["sgd", "fit", "fit+sgd", "none"] = "sgd"
    supervision: Literal["labels", "none"] = "labels"
    image_conditional: bool = False
    local_features: bool = False
    unprojected_features: bool = False
    modifies_encoders: bool = False
    class_specific: bool = False
    owns_gradient_step: bool = False
    adaptation: Literal["none", "episodic", "online"] = "none"
    ood_scores: tuple[str, ...] = ()
    ood_local_scores: tuple[str, ...] = ()
    transductive: bool = False

    def __post_init__(self) -> None:
        if self.training not in ("sgd", "fit", "fit+sgd", "none"):
            raise ValueError(f"capability training must be sgd, fit, fit+sgd or none, got {self.training!r}")
        if self.supervision not in ("labels", "none"):
            raise ValueError(f"capability supervision must be labels or none, got {self.supervision!r}")
        for flag in ("image_conditional", "local_features", "unprojected_features", "modifies_encoders",
                     "class_specific", "owns_gradient_step", "transductive"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"capability {flag} must be true or false, got {getattr(self, flag)!r}")
        if self.adaptation not in ("none", "episodic", "online"):
            raise ValueError(f"capability adaptation must be none, episodic or online, got {self.adaptation!r}")
        for what in ("ood_scores", "ood_local_scores"):
            names = getattr(self, what)
            if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"capability {what} must be a tuple of score names, got {names!r}")
        if not set(self.ood_local_scores) <= set(self.ood_scores):
            raise ValueError(f"capability ood_local_scores {self.ood_local_scores} must be among ood_scores "
                             f"{self.ood_scores}")
        if self.unprojected_features and not self.local_features:
            raise ValueError("capability unprojected_features needs local_features (the packed global + local layout)")
        if self.transductive and self.supervision != "none":
            raise ValueError("capability transductive needs supervision 'none' (it sees every class's images)")
        if self.owns_gradient_step and not self.uses_sgd:
            raise ValueError("owns_gradient_step needs a method trained by SGD")

    @property
    def fitted(self) -> bool:
        """Has a closed-form ``fit`` step (before any SGD)."""
        return self.training in ("fit", "fit+sgd")

    @property
    def uses_sgd(self) -> bool:
        """Trained by the trainer's gradient loop (learned parameters, optimiser, epochs)."""
        return self.training in ("sgd", "fit+sgd")

    @property
    def trainable(self) -> bool:
        """Whether a run learns anything (a training-free method is evaluated directly)."""
        return self.training != "none"

    @property
    def adapts_at_test_time(self) -> bool:
        """Runs the test stream through ``adapt_and_predict`` (``adaptation`` episodic or online)."""
        return self.adaptation != "none"

    @property
    def unsupervised(self) -> bool:
        """Learns without ground-truth labels (UPL)."""
        return self.trainable and self.supervision == "none"

    @property
    def feature_kind(self) -> str:
        """What ``encode_images`` returns, the key of the engine's feature caches: ``"global"`` (``[B, E]``)
        or ``"global+local"`` (``[B, 1 + P, E]``, with ``local_features``), ``"global+local|unprojected"`` (``[B, 1 +
        P, W]``, with ``unprojected_features`` too)."""
        if not self.local_features:
            return "global"
        return GLOBAL_LOCAL_UNPROJECTED if self.unprojected_features else GLOBAL_LOCAL
