"""Training-free test-time methods over the views' image features (Zero, MTA): what they share.

Zero (FarinaMatteo/zero) and MTA (MaxZanella/MTA) learn nothing and back-propagate nothing: every test image
goes through the image tower once, as its ``V`` views ``[V, 3, H, W]`` (``views[0]`` the original), and the
method combines the views' L2-normalised features ``[V, E]`` with fixed class text features ``[n_cls, E]``.
Both authors compute the text features of the hand-crafted prompt once and keep them (zero ``ttas/zero.py``
lines 64-69 cache ``z_txt``; MTA's text pass has no parameter that changes between images), so here they are a
buffer computed once per class list, and a test image costs ``V`` image forwards, no text pass and no backward.

A method of this family may start from a prompt file (``start_from``): a CoOp-family prompt (CoOp, KgCoOp,
ProGrad, LoCoOp: ``logit_scale * cos(f, text_features())``) replaces the class text features by the source's
``text_features()`` (computed once; MTA's authors start from a CoOp context the same way, ``main.py`` lines
114-120); a CoCoOp prompt (image-conditional) gives, for each test image, the source's text features for the
original view's feature ``views[0]`` (one text pass per image; a vlprompt generalisation, in neither
repository); a prompt whose image tower is prompted too (MaPLe, IVLP, VPT-deep, PromptSRC, CLIP-LoRA: capability
``modifies_encoders``) gives its text features once and encodes the views (Zero+MaPLe, FarinaMatteo/zero
``clip/maple.py``). Sources whose logits are not CLIP's cosine classifier over ``text_features()`` (adapters,
probes, class-specific prompts) are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import (
    MethodContext,
    PromptMethod,
    check_start_source,
    cosine_over_text_features,
    template_text_features,
)
from vlprompt.methods.cocoop.model import CoCoOp


class ViewFeatureMethod(PromptMethod):
    """Base of a training-free test-time method on the views' features against fixed class text features.

    ``config.templates`` (None: the method context's, i.e. ``data.templates``) and ``config.class_chunk`` make
    the classifier ``[n_cls, E]`` (:func:`~vlprompt.methods.base.template_text_features`), a non-persistent
    buffer: nothing is learned or saved. ``forward`` (batch evaluation) is the plain prediction of that
    classifier; the method itself runs in :meth:`adapt_and_predict`, which subclasses implement with
    :meth:`view_features` and :meth:`class_features`.
    """

    classifier: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: Any,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        templates = list(config.templates) if config.templates else list(self.context.templates)
        #: the templates of the classifier (the option, else the method context's)
        self.templates = templates
        self.register_buffer("classifier", template_text_features(backbone, self.classnames, templates,
                                                                  config.class_chunk), persistent=False)
        # an image-conditional source (CoCoOp), kept out of the module tree: its tensors are not this method's
        self._conditional: tuple[CoCoOp, ...] = ()
        # a source whose prompts change the image tower (MaPLe, IVLP, VPT-deep, PromptSRC, CLIP-LoRA): the views
        # are encoded by it (Zero's clip/maple.py runs Zero on MaPLe's prompted towers)
        self._encoder: tuple[PromptMethod, ...] = ()

    def text_features(self) -> Tensor:
        return self.classifier

    def forward_features(self, image_features: Tensor) -> Tensor:
        """``[B, E] -> [B, n_cls]``: the classifier's logits, or the CoCoOp source's when it is the start."""
        if self._conditional:
            with torch.no_grad():
                return self._conditional[0].forward_features(image_features)
        return super().forward_features(image_features)

    def test_time_views(self, dataset_views: str) -> str:
        """Random resized crops + flips on every dataset: FarinaMatteo/zero data/augs.py lines 36-53 and 62-67
        (``MultiViewCropAndFlip`` for Zero), MaxZanella/MTA main.py lines 172-173 (AugMix only with ``--tpt``)."""
        return "crop"

    def start_from(self, source: PromptMethod) -> None:
        """Start from a CoOp-family prompt (its ``text_features()``, computed once) or a CoCoOp prompt (its text
        features for each test image's original view); anything else is refused (``ValueError``)."""
        caps = source.capabilities
        plain = cosine_over_text_features(source)
        if not isinstance(source, CoCoOp) and (not plain or caps.class_specific or caps.image_conditional):
            raise ValueError(f"method '{self.method_name}' cannot start from a '{source.method_name}' prompt file: "
                             "it starts from prompts whose logits are CLIP's cosine classifier over class text "
                             "features (coop, kgcoop, prograd, locoop, maple, ivlp, vpt_deep, deep_language, "
                             "promptsrc, clip_lora) or from cocoop")
        check_start_source(self, source)
        self._encoder = (source.eval(),) if caps.modifies_encoders else ()
        if isinstance(source, CoCoOp):
            self._conditional = (source.eval(),)
            return
        with torch.no_grad():
            feats = F.normalize(source.eval().text_features().detach().float(), dim=-1)
        self._conditional = ()
        self.classifier = feats.to(self.classifier.device, self.classifier.dtype)

    def view_features(self, views: Tensor) -> Tensor:
        """The views' L2-normalised image features: ``[V, 3, H, W] -> [V, E]`` (one batched image pass; through the
        starting prompt's image tower when it changes the encoder)."""
        if self._encoder:
            with torch.no_grad():
                return F.normalize(self._encoder[0].encode_images(views).float(), dim=-1)
        return F.normalize(self.encode_images(views).float(), dim=-1)

    def class_features(self, view_features: Tensor) -> tuple[Tensor, int]:
        """The class text features ``[n_cls, E]`` for this image and the text passes they took: the classifier
        (0: computed once for the stream), or a CoCoOp source's for the original view ``view_features[0]`` (1)."""
        if not self._conditional:
            return self.classifier.float(), 0
        source = self._conditional[0]
        txt = source.text_features_for(view_features[:1].to(source.backbone.device))[0]
        return F.normalize(txt.float(), dim=-1).to(view_features.device), 1

    def scaled(self, cosine: Tensor) -> Tensor:
        """``logit_scale * cos (+ logit_bias)``: CLIP's logits from cosine similarities ``[..., n_cls]``."""
        out = self.backbone.logit_scale.to(cosine.device) * cosine
        bias = self.backbone.logit_bias
        return out if bias is None else out + bias.to(cosine.device)
