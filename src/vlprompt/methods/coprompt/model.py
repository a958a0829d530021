"""CoPrompt: consistency-guided prompt learning (Roy & Etemad, ICLR 2024).

MaPLe's coupled deep prompts (:mod:`vlprompt.methods.maple`), an adapter on each tower's output and two
consistency terms against the frozen encoders, as ShuvenduRoy/CoPrompt@a2a6c12 ``trainers/coprompt.py`` computes
them (``CustomCLIP.forward`` l.304-368, ``Adapter`` l.267-279, ``gpt_clip_classifier`` l.375-401)::

    A(x)   = ReLU(W_2 ReLU(W_1 x))                    # W_1 [E/r, E], W_2 [E, E/r], no biases (r = 4)
    f      = normalise(a_i A(f') + (1 - a_i) f')       # f' = prompted image feature of view 1   [B, E]
    t      = normalise(a_t A(t') + (1 - a_t) t')       # t' = prompted class text features        [n_cls, E]
    logits = logit_scale * f t^T                      # train and test                          [B, n_cls]
    f~     = normalise(f0(view 2))                     # frozen image tower, a second augmented view
    t~_c   = normalise(g0(s_{c, k}))                   # frozen text tower, sentence k of class c's descriptions
    loss   = CE(logits, y) + W * [(1 - mean_c cos(t_c, t~_c)) + (1 - mean_b cos(f_b, f~_b))]

(a_i = 0.1, a_t = 0.2; ``distill: mse`` replaces each ``1 - mean cos`` by the mean squared difference, l.361-364).
Each training step draws ONE index ``k`` uniformly and takes sentence ``k`` of every class (l.337-339:
``ori_embedding[random.randint(0, S - 1)]`` over the ``[S, n_cls, E]`` stack of every class's ``S`` sentences,
encoded raw, without a template). The authors' stack needs the same ``S`` for every class; with unequal counts
class ``c`` takes sentence ``k mod S_c`` with ``k`` drawn in ``0 .. max_c S_c - 1`` (identical when they are equal).
The index of step ``i`` comes from a generator seeded by (the run's seed, ``i``); ``i`` is the persistent buffer
``draws``, so a resumed run and every torchrun rank draw what the uninterrupted single process draws.

The two views come from :meth:`training_transform` (Dassl's RandAugment twice, :mod:`.augment`): batches
``[B, 2, 3, H, W]``; in train mode :meth:`encode_images` returns ``[B, 2E]``, the adapted prompted feature of view
1 and the frozen feature of view 2 side by side (of the same image when given ``[B, 3, H, W]``, e.g. with
``data.augment: false``); in eval mode the adapted prompted ``[B, E]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import LossTerms, MethodContext, PacksTrainFeatures
from vlprompt.methods.coprompt.augment import randaugment_views
from vlprompt.methods.coprompt.config import CoPromptConfig
from vlprompt.methods.maple.model import MaPLe

#: CLIP's normalisation, for a backbone that does not say (open_clip's OPENAI_DATASET_MEAN / STD)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Adapter(nn.Module):
    """``ReLU(W_2 ReLU(W_1 x))``: ``[..., E] -> [..., E]`` (trainers/coprompt.py l.267-279)."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.fc = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


@torch.no_grad()
def sentence_bank(backbone: Backbone, classnames: list[str], context: MethodContext,
                  chunk: int = 256) -> tuple[Tensor, Tensor]:
    """The frozen text features of every description sentence ``[S_total, E]`` (normalised, each sentence as
    written: coprompt.py l.383-394) and the row table ``[max_c S_c, n_cls]``: row ``k`` holds, per class, the
    index of its sentence ``k mod S_c``. ConfigError without descriptions for a class."""
    rows: list[list[int]] = []
    texts: list[str] = []
    for name in classnames:
        sentences = context.sentences(name)
        if not sentences:
            have = "no class descriptions" if not context.descriptions else f"no description of class '{name}'"
            raise ConfigError(
                f"method coprompt needs class descriptions and the run has {have}: give option "
                "data.descriptions_file, a JSON file {class name: [sentence, ...]} such as CoPrompt's "
                "gpt_file/<dataset>_prompt.json (or put it at <data.root>/descriptions/<dataset>.json)")
        rows.append(list(range(len(texts), len(texts) + len(sentences))))
        texts += list(sentences)
    feats = []
    for start in range(0, len(texts), chunk):
        ids = backbone.tokenize(texts[start: start + chunk], what="the class description")
        feats.append(F.normalize(backbone.encode_text(ids).float(), dim=-1))
    longest = max(len(r) for r in rows)
    table = torch.tensor([[r[k % len(r)] for r in rows] for k in range(longest)], dtype=torch.long)
    return torch.cat(feats), table


class CoPrompt(PacksTrainFeatures, MaPLe):
    """MaPLe prompts + output adapters, trained with CE and consistency to the frozen encoders."""

    sentence_features: Tensor  # buffers (register_buffer)
    sentence_rows: Tensor
    draws: Tensor

    def __init__(self, backbone: Backbone, classnames: list[str], config: CoPromptConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        dim, dev = backbone.embed_dim, backbone.device
        self.adapter_image = Adapter(dim, config.adapter_reduction).to(dev)  # built in this order, l.299-300
        self.adapter_text = Adapter(dim, config.adapter_reduction).to(dev)
        feats, table = sentence_bank(backbone, self.classnames, self.context)
        self.register_buffer("sentence_features", feats, persistent=False)  # [S_total, E]
        self.register_buffer("sentence_rows", table.to(feats.device), persistent=False)  # [S, n_cls]
        #: training steps drawn so far (saved: a resumed run continues the sequence of drawn sentences)
        self.register_buffer("draws", torch.zeros((), dtype=torch.long, device=dev))
        self.draw_seed = torch.initial_seed()  # the run's seed (set by the trainer just before building)

    # ------------------------------------------------------------------ features
    def adapt(self, x: Tensor, adapter: Adapter, ratio: float) -> Tensor:
        """``ratio * A(x) + (1 - ratio) * x`` (coprompt.py l.321-329), same shape as ``x``."""
        x = x.float()
        return ratio * adapter(x) + (1 - ratio) * x

    def text_features(self) -> Tensor:
        """``[n_cls, E]`` normalised adapted text features of the deep language prompts."""
        raw = self.text_prompt.encode(self.backbone, list(self.compound_prompts_text))
        return F.normalize(self.adapt(raw, self.adapter_text, self.config.text_adapter_ratio), dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """Eval: ``[B, 3, H, W] -> [B, E]`` adapted prompted features. Train: ``[B, 2E]``, the adapted prompted
        feature of view 1 and the frozen one of view 2 (``images [B, 2, 3, H, W]``; one view: the same image)."""
        first = images[:, 0] if images.dim() == 5 else images
        prompted = self.adapt(super().encode_images(first), self.adapter_image, self.config.image_adapter_ratio)
        if not self.training:
            return prompted
        second = images[:, 1] if images.dim() == 5 else images
        with torch.no_grad():
            frozen = self.backbone.encode_image(second).float()
        return torch.cat([prompted, frozen], dim=-1)

    def training_transform(self, default: Any) -> Any:
        """Two independent views (resize, Dassl's RandAugment(2, 10), normalise): ``[2, 3, H, W]`` per image."""
        cfg = getattr(self.backbone, "preprocess_cfg", None) or {}
        return randaugment_views(int(self.backbone.image_size), cfg.get("mean", _CLIP_MEAN),
                                 cfg.get("std", _CLIP_STD))

    # ------------------------------------------------------------------ loss
    def draw_sentence(self) -> int:
        """The sentence index ``k`` of this training step (uniform over ``0 .. S - 1``; advances ``draws``)."""
        step = int(self.draws)
        g = torch.Generator().manual_seed((self.draw_seed * 1_000_003 + step) % (2 ** 63))
        with torch.no_grad():
            self.draws.add_(1)
        return int(torch.randint(self.sentence_rows.shape[0], (1,), generator=g))

    def frozen_text(self, k: int) -> Tensor:
        """``[n_cls, E]`` frozen features of each class's sentence ``k`` (``k mod S_c``)."""
        return self.sentence_features[self.sentence_rows[k]]

    def training_loss(self, features: Tensor, labels: Tensor) -> LossTerms:
        """Named loss terms and logits ``[B, n_cls]`` from packed ``[B, 2E]`` features (or the two-view images
        ``[B, 2, 3, H, W]`` the training loop hands over as they are).

        ``ce``: cross-entropy; ``consistency_text``: ``W (1 - mean_c cos(t_c, t~_c))`` (a per-batch value, given as
        ``(v * B, B)``); ``consistency_image``: ``W (1 - cos(f_b, f~_b))`` summed over images. Their sum is the
        authors' ``loss + lambd * loss_distill`` (coprompt.py l.350-366).
        """
        if features.dim() == 5:
            features = self.encode_images(features)
        prompted, frozen = self.split_packed(features)
        if frozen is None:
            raise ValueError("CoPrompt trains on packed prompted + frozen image features (encode_images in train mode)")
        cfg = self.config
        b = labels.shape[0]
        img = F.normalize(prompted.float(), dim=-1)
        txt = self.text_features()
        logits = self.backbone.logit_scale.to(img.device) * img @ txt.t()
        target_txt = self.frozen_text(self.draw_sentence()).to(txt.device)
        target_img = F.normalize(frozen.float(), dim=-1)
        if cfg.distill == "cosine":  # l.352-360, CosineSimilarity(dim=1, eps=1e-07)
            l_text = 1.0 - F.cosine_similarity(txt, target_txt, dim=1, eps=1e-7).mean()
            l_image = (1.0 - F.cosine_similarity(img, target_img, dim=1, eps=1e-7)).sum()
        else:  # l.361-364: F.mse_loss, the mean over every element
            l_text = F.mse_loss(txt, target_txt)
            l_image = (img - target_img).pow(2).mean(dim=-1).sum()
        ce = F.cross_entropy(logits, labels, reduction="sum")
        return LossTerms({"ce": (ce, b), "consistency_text": (cfg.w * l_text * b, b),
                          "consistency_image": (cfg.w * l_image, b)}, logits)
