"""DePT: Decoupled Prompt Tuning (Zhang, Wu, Gao, Shen, Song; CVPR 2024), as a plug-in on a host prompt method.

One implementation for every host (Koorye/DePT@d4ff416 ``trainers/elp_coop.py``, ``elp_cocoop.py``, ``elp_kgcoop.py``,
``elp_maple.py`` differ only in how the host computes its features): :class:`DePTMixin` adds the channel-adjusted
transfer head (:class:`~vlprompt.methods.dept.head.CATHead`) to a host :class:`PromptMethod` and
:func:`dept_variant` builds ``dept_<host>``'s config and model classes from the host's. With ``f [B, E]`` the host's
image features and ``t [n_cls, E]`` (CoCoOp: ``[B, n_cls, E]``) its text features, both *before* L2 normalisation
(the host's ``raw_text_features`` / ``raw_text_features_for``), and ``lambda`` = ``lp_weight``:

    training (elp_coop.py l.57-67, l.103-133):
        z_host = host logits (logit_scale * cos(f, t))                               # [B, n_cls]
        z_head = head(cat[FiLM_t(t)[y], FiLM_i(f)])                                  # [2B, n_cls], labels cat[y, y]
        L = (1 - lambda) CE(z_host, y) + lambda CE(z_head, cat[y, y]) + the host's other terms (KgCoOp's W * L_kg,
            unscaled: elp_kgcoop.py l.116-129)
    prediction on the classes the head was trained for (l.69-75):
        (1 - lambda) z_host + lambda head(FiLM_i(f))     (test_time_fusion; else the head alone)
    prediction on other classes (new classes, other datasets; l.77-84): z_host alone.

The head's parameters train at ``lr_exp`` times the run's rate after the warm-up (:meth:`lr_scales`; the authors'
``build_optimizer``, trainers/optim.py l.37-83 with train.py l.71-73). Gradients of the head's loss reach the host's
prompts through ``t`` (and ``f`` where the host prompts the image tower: MaPLe), as in the authors' code (no detach).
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import LossTerms, MethodContext, PromptMethod, registration_of
from vlprompt.methods.capabilities import Capabilities
from vlprompt.methods.dept.config import DePTOptions
from vlprompt.methods.dept.head import CATHead, class_keys
from vlprompt.methods.registry import register_method

#: where the head's tensors live in the learned state
HEAD = "dept_head."


class DePTMixin(PromptMethod):
    """The DePT head on a host method (the class after this one in the MRO; see :func:`dept_variant`).

    The host must compute its text features through ``raw_text_features()`` (``[n_cls, E]``) or, image-conditional,
    ``raw_text_features_for(image_features)`` (``[B, n_cls, E]``), and its training loss must name its cross-entropy
    ``"ce"``. Its logits come from :meth:`logits` (or, image-conditional, :meth:`forward_features`), where the fusion
    happens.
    """

    dept_class_keys: Tensor  # buffers (register_buffer)

    config: DePTOptions

    def __init__(self, backbone: Backbone, classnames: list[str], config: Any,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        self.dept_head = CATHead(backbone.embed_dim, self.classnames, film=config.film).to(backbone.device)
        self.register_buffer("dept_class_keys", class_keys(self.classnames).to(backbone.device), persistent=False)
        self._dept_text: list[Tensor] | None = None  # collects the host's raw text features during training_loss

    # ---------------------------------------------------------------- the host's raw text features, collected
    def _seen(self, text: Tensor) -> Tensor:
        if self._dept_text is not None:
            self._dept_text.append(text)
        return text

    def raw_text_features(self) -> Tensor:
        """The host's ``[n_cls, E]`` (collected for the head's loss during :meth:`training_loss`)."""
        return self._seen(cast(Any, super()).raw_text_features())

    def raw_text_features_for(self, image_features: Tensor) -> Tensor:
        """The image-conditional host's ``[B, n_cls, E]`` (collected as :meth:`raw_text_features`)."""
        return self._seen(cast(Any, super()).raw_text_features_for(image_features))

    # ---------------------------------------------------------------- training
    def lr_scales(self) -> dict[str, float]:
        """The head's parameters at ``lr_exp`` x the run's rate (OPTIM.LR_EXP), the host's as they are."""
        own = dict(super().lr_scales())
        own.update({name: float(self.config.lr_exp) for name, _ in self.learned_parameters() if name.startswith(HEAD)})
        return own

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """The host's terms with its ``"ce"`` weighted by ``1 - lambda``, plus ``"head"``: ``lambda`` x the head's
        cross-entropy over the ``2B`` transformed features (text of each label, then the images), elp_coop.py
        l.113-133."""
        self._dept_text = []
        try:
            out = super().training_loss(features, labels)
            collected = self._dept_text
        finally:
            self._dept_text = None
        if len(collected) != 1 or "ce" not in out.terms:
            raise TypeError(f"DePT's host {type(self).__mro__[2].__name__} must compute its text features once per "
                            "step through raw_text_features(_for) and name its cross-entropy 'ce'")
        text = collected[0]
        n = labels.shape[0]
        # image-conditional: each image's own prompts (elp_cocoop.py l.113-114)
        text_of_label = text[torch.arange(n, device=labels.device), labels] if text.dim() == 3 else text[labels]
        head = self.dept_head
        inputs = torch.cat([head.text(text_of_label), head.image(features.to(text_of_label.dtype))])
        head_ce = F.cross_entropy(head(inputs).float(), torch.cat([labels, labels]), reduction="sum")
        w = float(self.config.lp_weight)
        terms = dict(out.terms)
        ce_sum, ce_count = terms["ce"]
        terms["ce"] = ((1.0 - w) * ce_sum, ce_count)
        terms["head"] = (w * head_ce, 2 * n)
        return LossTerms(terms, out.logits)

    # ---------------------------------------------------------------- prediction
    def head_active(self) -> bool:
        """Whether the head was trained for this method's classes (else the host alone predicts)."""
        return self.dept_head.serves(self.dept_class_keys)

    def fuse(self, host_logits: Tensor, image_features: Tensor) -> Tensor:
        """``[B, n_cls]`` prediction from the host's logits and the image features ``[B, E]`` (module doc)."""
        if self._dept_text is not None or not self.head_active():  # inside training_loss, or other classes
            return host_logits
        head = self.dept_head
        head_logits = head(head.image(image_features.to(head.linear.weight.dtype))).float()
        if not self.config.test_time_fusion:
            return head_logits
        w = float(self.config.lp_weight)
        return (1.0 - w) * host_logits.float() + w * head_logits

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """The host's ``logit_scale * cos`` fused with the head (:meth:`fuse`): ``[B, E] x [n_cls, E] -> [B, n_cls]``.
        """
        return self.fuse(super().logits(image_features, text_features), image_features)

    def forward_features(self, image_features: Tensor) -> Tensor:
        """The host's logits; an image-conditional host (which does not go through :meth:`logits`) fused here."""
        out = super().forward_features(image_features)
        return self.fuse(out, image_features) if self.capabilities.image_conditional else out

    def load_learned_state(self, state: dict[str, Tensor]) -> None:
        """As the host, with the head fitted to this method's classes (:meth:`CATHead.state_for`)."""
        super().load_learned_state(self.dept_head.state_for(state, HEAD, self.dept_class_keys))


def dept_variant(name: str, host_config: type, host_model: type[PromptMethod]) -> tuple[type, type[PromptMethod]]:
    """Register ``name`` = DePT on the host (its config and model classes): the config is the host's dataclass plus
    :class:`DePTOptions`, the model :class:`DePTMixin` before the host, the capabilities the host's with this config.
    Returns ``(config class, model class)``, named ``DePT<Host>Config`` / ``DePT<Host>`` in this module."""
    title = f"DePT{host_model.__name__}"
    module = __name__.rpartition(".")[0]  # vlprompt.methods.dept, where the classes are bound
    config_cls = dataclasses.make_dataclass(f"{title}Config", [], bases=(DePTOptions, host_config))
    config_cls.__module__ = module
    config_cls.__doc__ = f"{host_config.__doc__} With DePT's head (Zhang et al., CVPR 2024)."
    model_cls = cast(type[PromptMethod], type(title, (DePTMixin, host_model), {
        "__module__": module, "__qualname__": title,
        "__doc__": f"DePT on {host_model.__name__}: {host_model.__doc__}"}))
    host = registration_of(host_model)

    def capabilities(cfg: Any) -> Capabilities:
        return host.capabilities_for(cfg)

    register_method(name, config_cls, model_cls, capabilities=capabilities)
    return config_cls, model_cls
