"""Method registry: ``build_method(name, backbone, classnames, **options)``.

Each method registers a config dataclass (fields = the options, named as in the papers' code)
and a :class:`~vlprompt.methods.base.PromptMethod` subclass.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError, ModelError
from vlprompt.core.plugins import load_extensions
from vlprompt.methods.base import MethodContext, PromptMethod


@dataclass(frozen=True)
class Capabilities:
    """What a method needs and does, declared where it is registered; engine, tasks and report read
    these instead of testing method names.

    Attributes:
        training: ``"sgd"`` (learned by the trainer's gradient loop), ``"fit"`` (fitted in closed form on
            the few-shot features by :meth:`~vlprompt.methods.base.PromptMethod.fit`: linear probe,
            Tip-Adapter), ``"fit+sgd"`` (fitted, then trained by the loop: Tip-Adapter-F) or ``"none"``
            (training-free, e.g. zero-shot CLIP).
        supervision: ``"labels"`` (ground-truth few-shot labels) or ``"none"`` (no labels: training-free,
            or unsupervised such as UPL, which learns from its own pseudo-labels).
        image_conditional: text features depend on the image (CoCoOp): they cannot be computed once
            for an evaluation.
        local_features: needs patch-level (local) image features besides the global one (LoCoOp).
        modifies_encoders: changes the encoders themselves (LoRA, deep prompts): image features cannot
            be cached and the shared-prefix text shortcut does not apply.
        class_specific: what it learns belongs to the training classes (a linear probe's weights,
            Tip-Adapter's cache): it predicts only those classes, so base-to-new and cross-dataset
            evaluation on other class names are refused.
        owns_gradient_step: the method turns its loss terms' gradients into the update itself
            (:meth:`~vlprompt.methods.base.PromptMethod.combine_gradients`; ProGrad).
    """

    training: Literal["sgd", "fit", "fit+sgd", "none"] = "sgd"
    supervision: Literal["labels", "none"] = "labels"
    image_conditional: bool = False
    local_features: bool = False
    modifies_encoders: bool = False
    class_specific: bool = False
    owns_gradient_step: bool = False

    def __post_init__(self) -> None:
        if self.training not in ("sgd", "fit", "fit+sgd", "none"):
            raise ValueError(f"capability training must be sgd, fit, fit+sgd or none, got {self.training!r}")
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
    def unsupervised(self) -> bool:
        """Learns without ground-truth labels (UPL)."""
        return self.trainable and self.supervision == "none"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type
    model_cls: type[PromptMethod]
    capabilities: Capabilities = Capabilities()

    @property
    def trainable(self) -> bool:
        return self.capabilities.trainable


_METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, config_cls: type, model_cls: type[PromptMethod], *,
                    capabilities: Capabilities | None = None, **flags: Any) -> None:
    """Register ``model_cls`` (built from ``config_cls(**options)``) under ``name``.

    Capabilities are given as a :class:`Capabilities` or as its fields (``training="none"``, ...);
    ``image_conditional``, ``local_features`` and ``modifies_encoders`` default to what ``model_cls`` declares.
    """
    if capabilities is None:
        flags.setdefault("image_conditional", bool(model_cls.image_conditional))
        flags.setdefault("local_features", model_cls.feature_kind != "global")
        flags.setdefault("modifies_encoders", bool(model_cls.modifies_encoders))
        capabilities = Capabilities(**flags)
    elif flags:
        raise TypeError("pass either capabilities or its fields to register_method, not both")
    _METHODS[name] = MethodEntry(name, config_cls, model_cls, capabilities)


def _ensure_builtin() -> None:
    """Register the built-in methods (:data:`vlprompt.core.plugins.BUILTINS`) and the plugins' methods."""
    load_extensions("methods")


def list_methods() -> list[str]:
    _ensure_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> MethodEntry:
    """The registry entry of ``name``; :class:`ConfigError` with close matches if unknown."""
    _ensure_builtin()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown method '{name}' (option method.name).{hint} Known: {', '.join(sorted(_METHODS))}.")
    return _METHODS[name]


def make_method_config(name: str, options: dict[str, Any]) -> Any:
    """Build and validate the config dataclass of method ``name`` from keyword options."""
    entry = get_method(name)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=2)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown option 'method.{key}' for method '{name}'.{hint} Valid options: {', '.join(sorted(fields))}."
            )
    return entry.config_cls(**options)


def build_method(
    name: str, backbone: Backbone, classnames: list[str], config: Any = None, *,
    context: MethodContext | None = None, **options: Any
) -> PromptMethod:
    """Build method ``name`` for ``classnames`` on ``backbone``.

    Options are the config dataclass's fields (e.g. ``n_ctx=16, csc=False`` for CoOp); pass
    either a ready ``config`` object or keyword options, not both. ``context`` gives the dataset's
    hand-crafted template(s) (default: ``"a photo of a {}."``).
    """
    entry = get_method(name)
    if entry.capabilities.local_features:
        why = backbone.local_features_unsupported()
        if why is not None:
            raise ModelError(f"method '{name}' needs local (patch) image features, which backbone "
                             f"'{backbone.name}' does not provide: {why}.")
    if config is None:
        config = make_method_config(name, options)
    elif options:
        raise ConfigError("pass either a config object or keyword options to build_method, not both")
    return entry.model_cls(backbone, classnames, config, context)
