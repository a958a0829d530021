"""NegLabel (Jiang et al., "Negative Label Guided OOD Detection with Pretrained Vision-Language Models", ICLR 2024).

Training-free. The ID classifier is zero-shot CLIP over ``pos_templates`` (``[C, E]``). Negative labels are mined
once from a word corpus (:mod:`vlprompt.methods.neglabel.corpus`) as XueJiang16/NegLabel@3253db6 does in
``CLIPScalableClassifier.__init__`` (mmcls/models/classifiers/multi_modal.py l.48-160):

1. words: nouns and adjectives of the corpus files, deduplicated over all files (l.62-94);
2. their prompts (``noun_templates``, ``adj_templates``) encoded in passes of ``emb_batchsize`` and normalised
   (l.100-113) -> ``[N, E]``;
3. each word's ``pencentile`` quantile of its cosine similarity to the ``C`` ID labels (l.140-146) -> ``[N]``;
4. nouns and adjectives separately, the ``int(n * neg_topk)`` lowest kept, nouns first (l.147-160) -> ``[M, E]``.

The score (mmcls/models/ood/clip_ood.py l.25-68, ``ScalableClassifier``): with logits ``100 * cos`` (multi_modal.py
l.191-193) the ``M`` negatives, trimmed to a multiple of ``ngroup`` and randomly permuted (seed ``group_seed``), form
``ngroup`` groups; the score is the mean over groups of the softmax mass (temperature ``t``) on the ``C`` ID labels
of ``[ID labels, group]`` (:func:`~vlprompt.methods.neglabel.mining.grouped_score`). One matrix product per batch:
image features ``[B, E]`` against ``[C + M, E]``.

Mining runs when a NegLabel score (or :meth:`NegLabel.negative_labels`) is first asked for, not at build time (the
zero-shot ID classifier needs no corpus), and is cached on disk per (backbone and its weights, ID classes, corpus,
options): see :func:`vlprompt.core.tensor_cache.cache_root`.

Deviations (docs/methods.md "NegLabel"): fp32 everywhere (the authors' CLIP runs in fp16 on the GPU); the grouping
permutation is drawn from the CPU generator (theirs from the CUDA one, so the groups differ for the same seed); the
corpus files are read in sorted name order (theirs in ``os.listdir`` order, which decides which file keeps a word
present in two files); ``ngroup: 1`` takes the softmax (NegLabel's clip_ood.py l.66 sums unnormalised logits there;
CSP's l.70-72 and the paper take the softmax).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError
from vlprompt.core.tensor_cache import cache_key, cache_root, load_entry, save_entry
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.neglabel.config import NegLabelConfig
from vlprompt.methods.neglabel.corpus import WordCorpus, load_corpus, split_words
from vlprompt.methods.neglabel.mining import (
    encode_words,
    group_permutation,
    grouped_score,
    lowest,
    percentile_similarity,
)

#: The logit scale of the authors' scores (multi_modal.py l.184, l.191-192: ``100.0 * image @ text.T``).
SCORE_SCALE = 100.0
#: Bump when what a cache entry holds or how it is computed changes.
_CACHE_FORMAT = 2  # 2: entries are core.tensor_io files (its checksum)


@dataclass(frozen=True)
class NegativeLabels:
    """Mined negative labels.

    Attributes:
        features: ``[M, E]`` normalised text features, nouns first then adjectives, each least ID-like first.
        words: the ``M`` words (without their prompt templates; CSP's adjectives as their phrases).
        n_nouns: how many of them are nouns (the authors' ``adj_start_idx``).
        candidates: ``(nouns, adjectives)`` in the corpus after deduplication.
        seconds: time spent mining (0 when read from the cache); from_cache: read from the disk cache.
    """

    features: Tensor
    words: tuple[str, ...]
    n_nouns: int
    candidates: tuple[int, int]
    seconds: float
    from_cache: bool


class NegLabel(PromptMethod):
    """Zero-shot CLIP with NegLabel's negative labels and OOD score ``"neglabel"`` (capability ``ood_scores``)."""

    classifier: Tensor  # buffers (register_buffer)

    def __init__(self, backbone: Backbone, classnames: list[str], config: NegLabelConfig,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        names = [c.replace("_", " ") for c in self.classnames]
        self.register_buffer("classifier", encode_words(backbone, names, config.pos_templates,
                                                        chunk=config.emb_batchsize), persistent=False)
        self._negatives: NegativeLabels | None = None
        self._grouped: tuple[Tensor, int] | None = None  # [C + M', E] scoring matrix, dropped count

    # ------------------------------------------------------------------ ID classifier
    def text_features(self) -> Tensor:
        return self.classifier

    # ------------------------------------------------------------------ hooks CSP overrides
    def _words(self, corpus: WordCorpus) -> tuple[list[str], list[str]]:
        """Nouns and adjectives of the corpus (multi_modal.py l.62-94)."""
        return split_words(corpus, self.config.txt_exclude)

    def _adjective_phrases(self, adjectives: list[str]) -> list[str]:
        """What fills the adjective templates: the adjectives themselves (CSP wraps them)."""
        return adjectives

    def _max_similarity(self) -> float | None:
        """CSP's cut of near-duplicates of ID labels (none in NegLabel)."""
        return None

    def _options_key(self) -> dict[str, Any]:
        """Every option the mined labels depend on (the cache key)."""
        c = self.config
        return {"txt_exclude": list(c.txt_exclude), "pos": list(c.pos_templates), "noun": list(c.noun_templates),
                "adj": list(c.adj_templates), "neg_topk": c.neg_topk, "pencentile": c.pencentile}

    # ------------------------------------------------------------------ mining
    def corpus(self) -> WordCorpus:
        """The word corpus of option ``corpus`` (read once per process)."""
        return load_corpus(self.config.corpus)

    def _cache_file(self, corpus: WordCorpus) -> Any:
        c = self.config
        if not c.cache:
            return None
        pos = self.classifier.detach().float().cpu()
        probe = hashlib.sha256(torch.round(pos * 1e4).to(torch.int32).numpy().tobytes()).hexdigest()[:16]
        key = cache_key({"format": _CACHE_FORMAT, "method": self.method_name, "backbone": self.backbone.info.as_dict(),
                         "dtype": str(self.backbone.dtype), "weights_probe": probe, "classes": self.classnames,
                         "corpus": corpus.digest, "options": self._options_key()})
        return cache_root("negative_labels", c.cache_dir) / f"{self.method_name}-{key}.safetensors"

    def negative_labels(self) -> NegativeLabels:
        """The mined negative labels (mined at the first call; read from the disk cache when present)."""
        if self._negatives is None:
            self._negatives = self._mine()
            self._grouped = None
        return self._negatives

    def _mine(self) -> NegativeLabels:
        c = self.config
        corpus = self.corpus()
        nouns, adjs = self._words(corpus)
        adjs = self._adjective_phrases(adjs)  # what the adjective templates are filled with
        path = self._cache_file(corpus)
        device = self.classifier.device
        entry = load_entry(path) if path is not None else None
        if entry is not None:
            tensors, meta = entry
            n_ids, a_ids = tensors["noun_index"].tolist(), tensors["adj_index"].tolist()
            if meta.get("candidates") == [len(nouns), len(adjs)] and max(n_ids + [-1]) < len(nouns) \
                    and max(a_ids + [-1]) < len(adjs):
                words = tuple([nouns[i] for i in n_ids] + [adjs[i] for i in a_ids])
                return NegativeLabels(tensors["features"].to(device), words, len(n_ids), (len(nouns), len(adjs)), 0.0,
                                      True)
        start = time.perf_counter()
        progress = c.progress
        noun_feats = encode_words(self.backbone, nouns, c.noun_templates, chunk=c.emb_batchsize, progress=progress,
                                  desc=f"{self.method_name}: encoding {len(nouns):,} nouns")
        adj_feats = encode_words(self.backbone, adjs, c.adj_templates, chunk=c.emb_batchsize,
                                 progress=progress, desc=f"{self.method_name}: encoding {len(adjs):,} adjectives")
        feats = torch.cat([noun_feats, adj_feats])  # [N, E], nouns first (multi_modal.py l.102)
        sim = percentile_similarity(feats, self.classifier, c.pencentile, chunk=c.emb_batchsize,
                                    max_similarity=self._max_similarity())
        ni = lowest(sim[: len(nouns)], c.neg_topk)
        ai = lowest(sim[len(nouns):], c.neg_topk)
        if len(ni) + len(ai) == 0:
            raise ConfigError(f"option method.neg_topk ({c.neg_topk}) keeps no negative label of the corpus' "
                              f"{len(nouns)} nouns and {len(adjs)} adjectives ({corpus.source}); raise it or use a "
                              "larger corpus")
        selected = torch.cat([noun_feats[ni], adj_feats[ai]])  # [M, E]
        seconds = time.perf_counter() - start
        if path is not None:
            save_entry(path, {"features": selected, "noun_index": ni.cpu(), "adj_index": ai.cpu()},
                       {"candidates": [len(nouns), len(adjs)], "corpus": corpus.record(), "seconds": seconds})
        words = tuple([nouns[i] for i in ni.tolist()] + [adjs[i] for i in ai.tolist()])
        return NegativeLabels(selected, words, len(ni), (len(nouns), len(adjs)), seconds, False)

    def _scoring_matrix(self) -> tuple[Tensor, int]:
        """``[C + M', E]``: the ID labels, then the negatives in group order (``M' = M - drop``), and ``drop``."""
        if self._grouped is None:
            neg = self.negative_labels()
            order, drop = group_permutation(neg.features.shape[0], self.config.ngroup, self.config.group_seed)
            feats = neg.features[order.to(neg.features.device)]
            self._grouped = (torch.cat([self.classifier.float(), feats.float()]), drop)
        return self._grouped

    # ------------------------------------------------------------------ OOD
    def ood_score(self, features: Tensor, kind: str, *, temperature: float = 1.0) -> Tensor:
        """``"neglabel"`` (this method's score; ``temperature`` is MCM's and unused here: NegLabel's is option
        ``t``): ``[B]`` from image features ``[B, E]`` (the global one of packed ``[B, 1 + P, E]``); other kinds:
        the generic scores over the ID classifier."""
        if kind not in self.capabilities.ood_scores:
            return super().ood_score(features, kind, temperature=temperature)
        matrix, drop = self._scoring_matrix()
        glob = features[:, 0] if features.dim() == 3 else features
        img = torch.nn.functional.normalize(glob.float(), dim=-1)
        logits = SCORE_SCALE * img @ matrix.to(img.device).t()  # [B, C + M']
        c = self.n_cls
        if matrix.shape[0] == c:
            raise ConfigError(f"method.ngroup ({self.config.ngroup}) is larger than the {drop} negative labels mined; "
                              "lower it")
        return grouped_score(logits[:, :c], logits[:, c:], self.config.ngroup, self.config.t,
                             self.config.group_fuse_num)

    def ood_record(self) -> dict[str, Any]:
        """The corpus (source, version, SHA-256 of its words) and what was mined: counts, grouping and its seed."""
        corpus = self.corpus()
        neg = self.negative_labels()
        _, drop = self._scoring_matrix()
        return {"corpus": corpus.record(),
                "negative_labels": {"count": len(neg.words), "nouns": neg.n_nouns,
                                    "adjectives": len(neg.words) - neg.n_nouns,
                                    "candidates": {"nouns": neg.candidates[0], "adjectives": neg.candidates[1]},
                                    "sha256": hashlib.sha256("\n".join(neg.words).encode()).hexdigest(),
                                    "mining_seconds": round(neg.seconds, 3), "from_cache": neg.from_cache},
                "grouping": {"ngroup": self.config.ngroup, "seed": self.config.group_seed, "dropped": drop,
                             "generator": "torch CPU randperm"}}
