"""Method registry: one declaration per method, ``build_method(name, backbone, classnames, **options)``.

A method is registered once, with its name, its config dataclass (fields = the options, named as in the
papers' code), its :class:`~vlprompt.methods.base.PromptMethod` subclass and its :class:`Capabilities`
(a constant, or a function of the config when a capability depends on an option)::

    register_method("coop", CoOpConfig, CoOp, capabilities=lambda cfg: Capabilities(class_specific=cfg.csc))

    @register_method("toy", ToyConfig)          # the same, as a class decorator
    class Toy(PromptMethod): ...

Registration gives the class its identity (``Toy.method_name == "toy"``; an unregistered class has none),
refuses a malformed name and a name or a class registered twice, and records the capabilities that every
built method carries as ``method.capabilities`` (``get_method(name).capabilities_for(config)`` before one
is built).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError, ModelError
from vlprompt.core.plugins import load_extensions
from vlprompt.methods.base import REGISTRATION_ATTR, MethodContext, PromptMethod
from vlprompt.methods.capabilities import Capabilities

__all__ = ["Capabilities", "MethodEntry", "build_method", "get_method", "list_methods", "make_method_config",
           "register_method"]

#: A method's name: lower case letters, digits and underscores, starting with a letter (it is a config
#: value, a folder name in sweeps and a column of the report).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")

M = TypeVar("M", bound=type[PromptMethod])
#: The capabilities of a method registered without any: trained by SGD on labels, nothing else.
PLAIN = Capabilities()


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its name, config dataclass, model class and declared capabilities.

    ``declared`` is a :class:`Capabilities`, or a function of a config (an instance of ``config_cls``)
    returning one; :meth:`capabilities_for` is the one answer either way. ``prepare`` (optional) is what
    :meth:`prepare_run` calls before a training run of the method starts.
    """

    name: str
    config_cls: type
    model_cls: type[PromptMethod]
    declared: Capabilities | Callable[[Any], Capabilities] = Capabilities()
    prepare: Callable[[Any, bool], Any] | str | None = None

    def prepare_run(self, cfg: Any, resume: bool) -> Any:
        """The experiment config a training run of this method trains with: ``prepare(cfg, resume)`` when the
        method registered one (e.g. PromptKD trains its teacher first into ``<run>/teacher/`` and points the
        student at it; a ``"module:function"`` string is imported here, so a method can name a function of a
        higher layer), else ``cfg`` itself. Called by the trainer once the run folder is known."""
        fn = self.prepare
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return cfg if fn is None else fn(cfg, resume)

    @property
    def summary(self) -> str:
        """One line on what the method is: the first line of its class's docstring (``vlprompt methods``)."""
        doc = (self.model_cls.__doc__ or "").strip().splitlines()
        return doc[0].strip() if doc else ""

    def capabilities_for(self, config: Any = None) -> Capabilities:
        """The capabilities of this method built with ``config`` (None: the config's defaults)."""
        if isinstance(self.declared, Capabilities):
            return self.declared
        caps = self.declared(self.config_cls() if config is None else config)
        if not isinstance(caps, Capabilities):
            raise TypeError(f"the capabilities function of method '{self.name}' returned {caps!r}, not Capabilities")
        return caps


_METHODS: dict[str, MethodEntry] = {}


@overload
def register_method(name: str, config_cls: type, model_cls: None = None, *,
                    capabilities: Capabilities | Callable[[Any], Capabilities] = ...,
                    prepare: Callable[[Any, bool], Any] | str | None = ...) -> Callable[[M], M]: ...


@overload
def register_method(name: str, config_cls: type, model_cls: type[PromptMethod], *,
                    capabilities: Capabilities | Callable[[Any], Capabilities] = ...,
                    prepare: Callable[[Any, bool], Any] | str | None = ...) -> None: ...


def register_method(name: str, config_cls: type, model_cls: type[PromptMethod] | None = None, *,
                    capabilities: Capabilities | Callable[[Any], Capabilities] = PLAIN,
                    prepare: Callable[[Any, bool], Any] | str | None = None) -> Any:
    """Register ``model_cls`` (built from ``config_cls(**options)``) under ``name``; without ``model_cls``,
    return a class decorator that does.

    Args:
        name: the method's name (``method.name`` in configs); lower case, ``[a-z][a-z0-9_]*``.
        config_cls: a dataclass whose fields are the method's options (every field with a default).
        model_cls: the :class:`PromptMethod` subclass; registration sets its ``method_name``.
        capabilities: a :class:`Capabilities`, or a function of a ``config_cls`` instance returning one
            (when a capability depends on an option).
        prepare: optional ``prepare(cfg, resume) -> cfg`` (or ``"module:function"``), called by the trainer before
            a training run of the method (:meth:`MethodEntry.prepare_run`).

    Raises:
        ConfigError: a malformed name, a name already registered for another class, or a class already
            registered under another name (re-registering the same class under the same name, as a module
            imported again does, replaces the entry).
    """
    if model_cls is None:
        def decorator(cls: M) -> M:
            _register(name, config_cls, cls, capabilities, prepare)
            return cls

        return decorator
    _register(name, config_cls, model_cls, capabilities, prepare)
    return None


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same class defined again (its module imported anew)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register(name: str, config_cls: type, model_cls: type[PromptMethod],
              capabilities: Capabilities | Callable[[Any], Capabilities],
              prepare: Callable[[Any, bool], Any] | str | None = None) -> None:
    where = f"register_method({name!r}, ...)"
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{where}: a method name is lower case letters, digits and underscores starting with a "
                          f"letter (e.g. 'my_method'), got {name!r}")
    if not (isinstance(model_cls, type) and issubclass(model_cls, PromptMethod)):
        raise ConfigError(f"{where}: the model class must be a subclass of PromptMethod, got {model_cls!r}")
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise ConfigError(f"{where}: the config class must be a dataclass, got {config_cls!r}")
    if not (isinstance(capabilities, Capabilities) or callable(capabilities)):
        raise ConfigError(f"{where}: capabilities must be a Capabilities or a function of the config returning "
                          f"one, got {capabilities!r}")
    taken = _METHODS.get(name)
    if taken is not None and not _same_class(taken.model_cls, model_cls):
        raise ConfigError(f"{where}: the name '{name}' is already registered for "
                          f"{taken.model_cls.__module__}.{taken.model_cls.__qualname__}; choose another name")
    own = model_cls.__dict__.get(REGISTRATION_ATTR)
    if own is not None and own.name != name:
        raise ConfigError(f"{where}: {model_cls.__qualname__} is already registered as '{own.name}'; a class has "
                          "one name (register a subclass for a variant)")
    if prepare is not None and not callable(prepare) and not (isinstance(prepare, str) and ":" in prepare):
        raise ConfigError(f"{where}: prepare must be a function (cfg, resume) -> cfg or 'module:function', got "
                          f"{prepare!r}")
    entry = MethodEntry(name, config_cls, model_cls, capabilities, prepare)
    _METHODS[name] = entry
    setattr(model_cls, REGISTRATION_ATTR, entry)


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
    hand-crafted template(s) (default: ``"a photo of a {}."``). The method carries its capabilities
    with this config as ``method.capabilities``.
    """
    entry = get_method(name)
    if config is None:
        config = make_method_config(name, options)
    elif options:
        raise ConfigError("pass either a config object or keyword options to build_method, not both")
    if entry.capabilities_for(config).local_features:
        why = backbone.local_features_unsupported()
        if why is not None:
            raise ModelError(f"method '{name}' needs local (patch) image features, which backbone "
                             f"'{backbone.name}' does not provide: {why}.")
    return entry.model_cls(backbone, classnames, config, context)
