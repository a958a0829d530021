"""Base class of every prompt method: CLIP's cosine-similarity classifier over class prompts.

A method owns a frozen backbone (see :mod:`vlprompt.backbones.openclip`), a list of class names
and a small set of learned tensors. Logits follow CLIP (Radford et al., 2021, Eq. in Fig. 3):

    logits[b, c] = logit_scale * cos(f_b, t_c)        # [B, n_cls]

where f_b is the image feature and t_c the text feature of class c's prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.methods.capabilities import Capabilities


@dataclass(frozen=True)
class MethodContext:
    """What a method may know besides its class names (given at build time, saved in prompt files).

    Attributes:
        templates: the dataset's hand-crafted prompt template(s), one ``{}`` each (zero-shot classifier
            of KgCoOp's penalty, ProGrad's teacher, CLIP-Adapter / Tip-Adapter's text classifier, CLIP-LoRA's
            prompts); several are ensembled (mean of normalised text features).
        dataset: the dataset's name ('' when unknown), for messages.
        descriptions: the class descriptions of the run (option data.descriptions_file,
            :mod:`vlprompt.data.descriptions`): ``((class name, (sentence, ...)), ...)`` in class order, ``()``
            when there are none; given as such pairs or a mapping. Encode them with
            :func:`description_text_features`; :meth:`sentences` looks one class up.
    """

    templates: tuple[str, ...] = ("a photo of a {}.",)
    dataset: str = ""
    descriptions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        templates = (self.templates,) if isinstance(self.templates, str) else tuple(self.templates)
        if not templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates):
            raise ValueError(f"a method context needs templates with exactly one '{{}}', got {self.templates!r}")
        object.__setattr__(self, "templates", templates)
        raw = self.descriptions.items() if isinstance(self.descriptions, Mapping) else self.descriptions
        pairs = []
        for item in raw:
            if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
                raise ValueError(f"a method context's descriptions are (class name, sentences) pairs, got {item!r:.80}")
            name, sentences = item
            sentences = (sentences,) if isinstance(sentences, str) else tuple(sentences)
            if not isinstance(name, str) or not sentences or any(not isinstance(t, str) for t in sentences):
                raise ValueError(f"the descriptions of class {name!r} must be a non-empty list of sentences")
            pairs.append((name, sentences))
        object.__setattr__(self, "descriptions", tuple(pairs))

    def sentences(self, classname: str) -> tuple[str, ...] | None:
        """The description sentences of ``classname`` (None when the context has none for it)."""
        return dict(self.descriptions).get(classname)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"templates": list(self.templates), "dataset": self.dataset}
        if self.descriptions:  # only then: files of runs without descriptions are unchanged
            out["descriptions"] = {name: list(sentences) for name, sentences in self.descriptions}
        return out


class LossTerms(NamedTuple):
    """One training step's named loss terms and logits.

    ``terms[name] = (sum over this process's items, number of items)``: the optimised loss is
    ``sum_name sum / count`` with the counts of the *global* batch, so the trainer reduces every term
    across torchrun ranks itself (one all-reduce) and the result is exact for per-sample means (CE),
    means over a data-dependent subset (LoCoOp's selected patches) and per-batch values (a value ``v``
    given as ``(v * n, n)``). ``logits [B, n_cls]`` feed the accuracy log.
    """

    terms: dict[str, tuple[Tensor, int]]
    logits: Tensor

    def total(self) -> Tensor:
        """The loss of this batch alone (single process): ``sum_name sum / count`` (empty terms skipped)."""
        parts = [s / int(c) for s, c in self.terms.values() if int(c) > 0]
        return sum(parts[1:], parts[0]) if parts else self.logits.sum() * 0.0


class Adapted(NamedTuple):
    """What :meth:`PromptMethod.adapt_and_predict` returns for one test image.

    ``logits [n_cls]``: the prediction for the original image (``views[0]``) after adaptation.
    ``cost``: what adapting and predicting this image took, in passes (summed by the engine into the
    result's cost per image): ``"image_forward"`` images through the image tower, ``"text_forward"``
    passes of the text tower over all class prompts, ``"backward"`` backward passes.
    """

    logits: Tensor
    cost: dict[str, int]


#: The cost keys of :class:`Adapted` (every test-time result reports each, per image).
ADAPTATION_COST_KEYS = ("image_forward", "text_forward", "backward")


class FitData(Protocol):
    """What the engine hands to :meth:`PromptMethod.fit` (features of the few-shot splits, cached).

    ``features(split)``: frozen features ``[N, ...]`` of ``"train"`` / ``"val"`` (test transform, what
    :meth:`PromptMethod.encode_images` returns) and labels ``[N]``.
    ``augmented_features(views, crop_scale)``: ``views`` randomly augmented passes over the training set
    (random resized crop with ``crop_scale``, flip): ``[views, N, ...]`` and labels ``[N]``; seeded by the
    run's seed, so a resumed or data-parallel run gets the same.
    ``log(message)``: the run's log.
    """

    def features(self, split: str) -> tuple[Tensor, Tensor]: ...

    def augmented_features(self, views: int,
                           crop_scale: tuple[float, float] = (0.08, 1.0)) -> tuple[Tensor, Tensor]: ...

    def log(self, message: str) -> None: ...


@torch.no_grad()
def template_text_features(backbone: Backbone, classnames: list[str], templates: Sequence[str],
                           chunk: int = 256) -> Tensor:
    """Zero-shot classifier ``[n_cls, E]``: ``normalise(mean_t normalise(g(template_t(c))))`` (CLIP Sec. 3.1.4)."""
    names = [c.replace("_", " ") for c in classnames]
    feats = []
    for start in range(0, len(names), chunk):
        part = names[start : start + chunk]
        acc = None
        for template in templates:
            ids = backbone.tokenize([template.format(n) for n in part], what="the prompt")
            f = F.normalize(backbone.encode_text(ids).float(), dim=-1)
            acc = f if acc is None else acc + f
        assert acc is not None, "no templates"
        feats.append(F.normalize(acc / len(templates), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def description_text_features(backbone: Backbone, classnames: list[str], descriptions: Sequence[Sequence[str]],
                              templates: Sequence[str] = (), chunk: int = 256) -> Tensor:
    """CuPL's classifier ``[n_cls, E]``: per class, ``normalise(mean_s normalise(g(s)))`` over the sentences ``s`` =
    ``templates`` filled with the class name (``_`` read as a space), then the class's ``descriptions`` (CuPL
    ``classify_imagenet.py`` l.47-58: ``use_both`` puts the templates and the sentences in one list and takes one
    mean over it; without templates it is the mean of the sentences, as CoPrompt's ``gpt_clip_classifier``,
    ``trainers/coprompt.py`` l.386-392, before its own averaging). ``chunk`` texts are encoded per pass.
    """
    if len(descriptions) != len(classnames):
        raise ValueError(f"descriptions for {len(descriptions)} classes, expected {len(classnames)}")
    texts: list[str] = []
    owner: list[int] = []
    for i, (name, sentences) in enumerate(zip(classnames, descriptions, strict=True)):
        row = [t.format(name.replace("_", " ")) for t in templates] + list(sentences)
        if not row:
            raise ValueError(f"class '{name}' has no sentence and no template")
        texts += row
        owner += [i] * len(row)
    sums = None
    for start in range(0, len(texts), chunk):
        ids = backbone.tokenize(texts[start : start + chunk], what="the class description")
        f = F.normalize(backbone.encode_text(ids).float(), dim=-1)
        if sums is None:
            sums = f.new_zeros(len(classnames), f.shape[-1])
        sums.index_add_(0, torch.tensor(owner[start : start + chunk], device=f.device), f)
    assert sums is not None
    return F.normalize(sums, dim=-1)  # the mean's direction: normalise(sum / n) == normalise(sum)


#: The class attribute in which :func:`~vlprompt.methods.registry.register_method` records a method class's
#: registration (its name and capabilities); read from the class itself, never inherited.
REGISTRATION_ATTR = "__vlprompt_registration__"


class Registration(Protocol):
    """What registering a method class recorded (a :class:`~vlprompt.methods.registry.MethodEntry`)."""

    name: str

    def capabilities_for(self, config: Any = None) -> Capabilities: ...


def registration_of(cls: type) -> Registration:
    """The registration of method class ``cls`` itself (a subclass does not inherit its parent's)."""
    entry = cls.__dict__.get(REGISTRATION_ATTR)
    if entry is None:
        raise TypeError(f"method class {cls.__qualname__} is not registered: register it with "
                        f"register_method('<name>', <ConfigClass>, {cls.__name__}) (docs/methods.md, "
                        "'The method contract')")
    return entry


class _RegisteredName:
    """``method_name``: the name the class was registered under (``TypeError`` for an unregistered class)."""

    def __get__(self, obj: Any, owner: type) -> str:
        return registration_of(owner).name


class PromptMethod(nn.Module):
    """A classifier ``images -> logits [B, n_cls]`` built on a frozen CLIP backbone.

    Subclasses implement :meth:`text_features` (image-conditional prompts such as CoCoOp override
    :meth:`forward_features` and declare the capability ``image_conditional`` where they are registered).
    A method's name and capabilities come from its registration
    (:func:`~vlprompt.methods.registry.register_method`): ``method_name`` is the registered name and
    ``self.capabilities`` the :class:`Capabilities` of this instance's config, which is what the engine,
    tasks and report read.

    The engine calls the hooks below at fixed points; each has a default, so a method overrides only
    what it needs: :meth:`fit` (before any epoch, capability ``training`` "fit" / "fit+sgd"),
    :meth:`training_loss` (every step), :meth:`combine_gradients` (every step, with ``owns_gradient_step``),
    :meth:`on_epoch_end` (after every epoch) and :meth:`after_training` (after the last epoch, "fit+sgd");
    at test time (capability ``adaptation``), :meth:`reset_adaptation`, :meth:`adapt_and_predict`,
    :meth:`start_from` and :meth:`test_time_views`.
    """

    #: The registered name (set by registration; reading it on an unregistered class raises ``TypeError``).
    method_name = _RegisteredName()

    def __init__(self, backbone: Backbone, classnames: list[str], config: Any,
                 context: MethodContext | None = None) -> None:
        super().__init__()
        if not classnames:
            raise ValueError("a method needs at least one class name")
        self.backbone = backbone
        self.classnames = list(classnames)
        self.config = config
        self.context = context if context is not None else MethodContext()
        #: What this method needs and does with this config (declared at registration).
        self.capabilities: Capabilities = registration_of(type(self)).capabilities_for(config)

    @property
    def n_cls(self) -> int:
        return len(self.classnames)

    # -------------------------------------------------------------- learned state
    def learned_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything the method learns; never the backbone's."""
        for name, p in self.named_parameters():
            if p.requires_grad and not name.startswith("backbone."):
                yield name, p

    def fitted_buffers(self) -> Iterator[tuple[str, Tensor]]:
        """(name, buffer) of the state a ``fit`` step computes (persistent buffers outside the backbone:
        Tip-Adapter's cache, the linear probe's weights); frozen helpers are non-persistent buffers."""
        persistent = {f"{prefix}{'.' if prefix else ''}{n}" for prefix, mod in self.named_modules()
                      for n in mod._buffers if n not in mod._non_persistent_buffers_set}
        for name, b in self.named_buffers():
            if name in persistent and not name.startswith("backbone."):
                yield name, b

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers of learned parameters, by the names :meth:`learned_parameters` gives (the others
        train at the run's rate, 1.0): the trainer puts each multiplier's parameters in their own optimiser group,
        whose rate is the schedule's times the multiplier after the warm-up epochs (during the warm-up every group
        takes the constant warm-up rate, as Dassl's ``ConstantWarmupScheduler``). E.g. DePT's head trains at 6.5x
        (Koorye/DePT ``trainers/optim.py`` l.37-83 with ``OPTIM.LR_EXP``). Default: none (``{}``)."""
        return {}

    def _state_tensors(self) -> dict[str, Tensor]:
        return {**dict(self.learned_parameters()), **dict(self.fitted_buffers())}

    def learned_state(self) -> dict[str, Tensor]:
        """The tensors a prompt file / checkpoint stores (detached CPU copies): learned parameters and
        fitted buffers."""
        return {name: t.detach().cpu().contiguous() for name, t in self._state_tensors().items()}

    def load_learned_state(self, state: dict[str, Tensor]) -> None:
        """Load tensors saved by :meth:`learned_state`; names must match, and shapes too, except for a
        tensor that is empty until fitted (Tip-Adapter's cache), which takes the saved shape."""
        own = self._state_tensors()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"learned state mismatch: missing {missing}, unexpected {unexpected}")
        for name, t in own.items():
            saved = state[name]
            if tuple(saved.shape) != tuple(t.shape):
                if t.numel() != 0 or saved.dim() != t.dim():
                    raise ValueError(
                        f"learned tensor '{name}' has shape {tuple(saved.shape)}, expected {tuple(t.shape)}"
                    )
                self._replace_tensor(name, saved.to(t.device, t.dtype))
                continue
            with torch.no_grad():
                t.copy_(saved.to(t.device, t.dtype))

    def _replace_tensor(self, name: str, value: Tensor) -> None:
        """Give the (empty, not yet fitted) parameter or buffer ``name`` a new tensor of another shape."""
        owner_name, _, attr = name.rpartition(".")
        owner = self.get_submodule(owner_name) if owner_name else self
        if attr in owner._parameters:
            old = cast(nn.Parameter, owner._parameters[attr])  # a learned tensor, never a None parameter
            setattr(owner, attr, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
        else:
            setattr(owner, attr, value.clone())

    # -------------------------------------------------------------- contract hooks
    def fit(self, data: FitData) -> dict[str, Any]:
        """Fit the method's state in closed form before any SGD (capability ``training`` "fit" or
        "fit+sgd"): e.g. Tip-Adapter's cache, the linear probe. Returns values to log / record."""
        return {}

    def after_training(self, data: FitData) -> dict[str, Any]:
        """Called once after the SGD epochs (e.g. Tip-Adapter-F's search of alpha / beta); returns values to log."""
        return {}

    def on_epoch_end(self, epoch: int, max_epoch: int) -> None:
        """Called after every training epoch ``epoch`` (0-based) of ``max_epoch``, before its checkpoint is
        written (e.g. PromptSRC's Gaussian prompt aggregation). State it keeps must be in the learned state
        (parameters or persistent buffers) for a resumed run to equal an uninterrupted one. Default: nothing."""

    def combine_gradients(self, grads: dict[str, list[Tensor | None]]) -> list[Tensor | None]:
        """The update direction of the learned parameters from each loss term's gradient.

        Only called for methods registered with ``owns_gradient_step`` (ProGrad): ``grads[term][i]`` is the
        gradient of term ``term``'s mean over the global batch (summed over torchrun ranks) w.r.t. the i-th
        learned parameter (None when it has none); the result becomes ``p.grad`` and the trainer's optimiser
        steps as usual. The default (every other method) is the gradient of the sum of the terms.
        """
        out: list[Tensor | None] = []
        for parts in zip(*grads.values()):
            present = [g for g in parts if g is not None]
            out.append(sum(present[1:], present[0]) if present else None)
        return out

    def training_transform(self, default: Any) -> Any:
        """The transform of the training images when the run augments them (``data.augment``, images encoded every
        step): ``default`` is CoOp's (:meth:`~vlprompt.backbones.base.Backbone.train_transform`: random resized
        crop, flip). A method that trains on several augmented views of each image returns a transform giving
        ``[V, 3, H, W]`` per image; the loop then hands its batches ``[B, V, 3, H, W]`` to :meth:`training_loss` as
        they are (CoPrompt: two RandAugment views). Default: ``default``."""
        return default

    def reset_adaptation(self) -> None:
        """Restore the test-time state to its initial value (capability ``adaptation``). The engine calls it
        before every test image for ``"episodic"`` methods (TPT's per-image prompt reset) and once before
        the stream for ``"online"`` ones. Default: nothing (no test-time state)."""

    def adaptation_state(self) -> dict[str, Tensor]:
        """The test-time state an ``"online"`` method carries across the stream (its caches, prototypes, counters),
        as named tensors of any shape (a cache of variable size at its current size): what a mid-stream
        checkpoint saves (:mod:`vlprompt.engine.test_time`), so that a killed stream resumes and ends with the same
        predictions. Default: none (``{}``)."""
        return {}

    def load_adaptation_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`adaptation_state` returned (resuming a stream mid-way; the tensors may be on the
        CPU). Default: only the empty state (``ValueError`` otherwise)."""
        if state:
            raise ValueError(f"method '{self.method_name}' keeps no test-time state, got {sorted(state)}")

    def adaptation_size(self) -> int:
        """How many entries the test-time state holds now (the features an online cache keeps), reported as the
        cache size next to accuracy. Default: 0."""
        return 0

    def test_time_views(self, dataset_views: str) -> str:
        """Which augmented views this method adapts on, given the dataset's registered kind
        (``DatasetInfo.test_time_views``): ``"augmix"`` or ``"crop"``. Default: the dataset's (TPT's rule, AugMix
        for all but the ImageNet sets); Zero and MTA use crops on every dataset (their authors' code)."""
        return dataset_views

    def test_time_view_count(self, dataset_views: str) -> int | None:
        """How many views (the original included) this method adapts on for a dataset of the registered kind
        ``dataset_views`` when the run does not say (``--views``): ``None`` means the protocol's default (64, TPT's);
        e.g. TDA adapts on the original image alone except on the ImageNet sets (kdiAAA/TDA utils.py). Default:
        ``None``."""
        return None

    def start_from(self, source: PromptMethod) -> None:
        """Take ``source`` (a trained method loaded from a prompt file for this method's class names: CoOp,
        CoCoOp, ...) as the starting point of test-time adaptation (TPT+CoOp, TPT+CoCoOp; ``vlprompt protocol
        tta --prompt FILE``). The initial state :meth:`reset_adaptation` restores becomes the source's.
        Default: refused (``ValueError`` naming both methods)."""
        raise ValueError(f"method '{self.method_name}' cannot start from a '{source.method_name}' prompt file")

    def adapt_and_predict(self, views: Tensor) -> Adapted:
        """Adapt to one unlabeled test image and predict it (capability ``adaptation`` episodic / online).

        ``views [V, 3, H, W]``: ``views[0]`` is the original image (test transform), ``views[1:]`` its
        augmented views (:mod:`vlprompt.data.test_time_views`). Returns the logits ``[n_cls]`` of the
        original image and the cost (:class:`Adapted`). Gradients are enabled when the engine calls it;
        a method that tunes tensors must leave ``requires_grad`` and its learned state as it found them
        apart from what :meth:`reset_adaptation` restores. Default (no adaptation): the plain prediction
        of ``views[0]`` (the engine's stream runner instead computes fixed text features once for such a
        method, :func:`vlprompt.engine.test_time.adapt_stream`).
        """
        with torch.no_grad():
            logits = self(views[:1])[0]
        return Adapted(logits, {"image_forward": 1, "text_forward": 1, "backward": 0})

    # -------------------------------------------------------------- OOD detection
    def ood_features(self, images: Tensor, *, local: bool = False) -> Tensor:
        """Image features the OOD scores read: ``[B, E]``, or with ``local`` ``[B, 1 + P, E]`` (the global feature
        first, then ``P`` patch features, :func:`~vlprompt.backbones.local.packed_global_local`).

        Default: the frozen image tower's features (cached by the engine), or, for a method that prompts the image
        tower (capability ``modifies_encoders``: IVLP, MaPLe, PromptSRC, CLIP-LoRA), :meth:`encode_images` in eval
        mode (global features only: ``ValueError`` with ``local``, the prompted tower gives no patch features).
        """
        if self.capabilities.modifies_encoders:
            if local:
                raise ValueError(f"method '{self.method_name}' prompts the image tower, which gives no patch features "
                                 "for the local OOD scores (GL-MCM): choose global scores such as mcm")
            return self.encode_images(images)
        from vlprompt.backbones.local import packed_global_local

        return packed_global_local(self.backbone, images) if local else self.backbone.encode_image(images)

    @torch.no_grad()
    def ood_text_features(self) -> Tensor:
        """The fixed, L2-normalised class text features ``[n_cls, E]`` the generic OOD scores compare images with (a
        prompt ensemble ``[T, n_cls, E]`` is averaged and re-normalised)."""
        text = self.text_features().float()
        if text.dim() != 2:
            text = F.normalize(text.mean(dim=0), dim=-1)
        return text

    def ood_score(self, features: Tensor, kind: str, *, temperature: float = 1.0) -> Tensor:
        """ID-ness scores ``[B]`` (higher = more in-distribution) of score ``kind`` for ``features`` from
        :meth:`ood_features` (packed ``[B, 1 + P, E]`` when the score reads patch features).

        Default: the generic scores of :func:`vlprompt.core.ood.ood_scores` (MCM, GL-MCM, max-logit, energy) over
        :meth:`ood_text_features`. A method declaring its own scores (capability ``ood_scores``) computes those and
        hands the others to this default.
        """
        from vlprompt.core.ood import ood_scores

        glob, loc = (features[:, 0], features[:, 1:]) if features.dim() == 3 else (features, None)
        return ood_scores(glob, self.ood_text_features().to(glob.device), kind=kind, temperature=temperature,
                          logit_scale=float(self.backbone.logit_scale), local_features=loc)

    def ood_logits(self, features: Tensor) -> Tensor:
        """The method's prediction ``[B, n_cls]`` from :meth:`ood_features`' output (the ID accuracy an OOD result
        reports). Default: :meth:`logits` of the global feature against :meth:`ood_text_features`; a method whose
        prediction reads more (GalLoP's global + local ensemble) overrides it."""
        glob = features[:, 0] if features.dim() == 3 else features
        return self.logits(glob, self.ood_text_features().to(glob.device))

    def ood_record(self) -> dict[str, Any]:
        """What an OOD result should record about this method beyond its options (e.g. NegLabel's word corpus: its
        source and version, the number of negative labels mined). Default: nothing."""
        return {}

    # -------------------------------------------------------------- forward
    def train(self, mode: bool = True) -> PromptMethod:
        super().train(mode)
        cast(nn.Module, self.backbone).train(False)  # frozen encoders stay in eval mode
        return self

    def text_features(self) -> Tensor:
        """L2-normalised text features of every class prompt: ``[n_cls, E]``."""
        raise NotImplementedError

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``logit_scale * cos``: image features ``[B, E]`` x text features ``[n_cls, E]`` -> ``[B, n_cls]``."""
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        out = self.backbone.logit_scale.to(img.device) * img @ txt.t()
        bias = self.backbone.logit_bias
        return out if bias is None else out + bias.to(img.device)

    def forward_features(self, image_features: Tensor) -> Tensor:
        """Logits ``[B, n_cls]`` from image features ``[B, E]`` (training path: text re-encoded)."""
        return self.logits(image_features, self.text_features())

    def encode_images(self, images: Tensor) -> Tensor:
        """Frozen image features ``[B, E]``."""
        return self.backbone.encode_image(images)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, n_cls]`` for a batch of preprocessed images ``[B, 3, H, W]``."""
        return self.forward_features(self.encode_images(images))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy (CoOp, Eq. 3 of Zhou et al., IJCV 2022)."""
        return F.cross_entropy(logits, labels)

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Named loss terms ``{"ce": (sum of cross-entropies, B)}`` and logits ``[B, n_cls]`` of one step on
        (possibly cached) image features (see :class:`LossTerms`)."""
        logits = self.forward_features(features)
        return LossTerms({"ce": (F.cross_entropy(logits.float(), labels, reduction="sum"), labels.shape[0])}, logits)


def cosine_over_text_features(method: PromptMethod) -> bool:
    """Whether ``method``'s logits are CLIP's cosine classifier over its ``text_features()`` (it overrides neither
    ``forward_features`` nor ``logits``): a test-time method can then start from those text features."""
    cls = type(method)
    return cls.forward_features is PromptMethod.forward_features and cls.logits is PromptMethod.logits


def check_start_source(method: PromptMethod, source: PromptMethod) -> None:
    """``ValueError`` unless ``source`` (the method a test-time method starts from) was built for ``method``'s class
    names on the same backbone (by name): a prompt file loaded for this method's classes."""
    if list(source.classnames) != method.classnames:
        raise ValueError(f"method '{method.method_name}' cannot start from a '{source.method_name}' prompt built for "
                         f"other class names ({len(source.classnames)} classes, {len(method.classnames)} here): load "
                         "the prompt file for this method's class names")
    if source.backbone.name != method.backbone.name:
        raise ValueError(f"method '{method.method_name}' on {method.backbone.name} cannot start from a "
                         f"'{source.method_name}' prompt on {source.backbone.name}")


class PacksTrainFeatures:
    """Mixin (before the method class) for methods whose train-mode :meth:`~PromptMethod.encode_images` returns the
    predicting features ``[B, F]`` with an extra part ``[B, X]`` beside them (one image pass per step, as the trainer
    makes): PromptSRC and CoPrompt the frozen image feature (X = E), PromptKD the teacher's logits (X = n_cls).
    :meth:`logits` reads the first part of either; :meth:`split_packed` gives both (the extra part None for eval-mode
    features)."""

    def packed_widths(self) -> tuple[int, int]:
        """``(F, X)``; default ``(E, E)`` with E the backbone's embedding width."""
        e = self.backbone.embed_dim  # type: ignore[attr-defined]
        return e, e

    def split_packed(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """``[B, F + X] -> ([B, F], [B, X])``; ``[B, F] -> ([B, F], None)``."""
        f, x = self.packed_widths()
        if features.shape[-1] == f + x:
            return features[..., :f], features[..., f:]
        return features, None

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """The method's logits of the predicting part (the extra part of packed features is ignored)."""
        return super().logits(self.split_packed(image_features)[0], text_features)  # type: ignore[misc]
