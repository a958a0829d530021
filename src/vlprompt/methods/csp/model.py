"""CSP (Chen, Gao and Xu, "Conjugated Semantic Pool Improves OOD Detection with Pre-trained Vision-Language Models",
NeurIPS 2024): NegLabel (:class:`~vlprompt.methods.neglabel.model.NegLabel`, whose mining and score it reuses by
subclassing) with a different candidate pool, as MengyuanChen21/NeurIPS2024-CSP@3a7bdab
mmcls/models/classifiers/multi_modal.py does:

* ID labels and nouns: the mean of the raw text features of 8 prompts, then normalised (l.54-70, l.107-108,
  l.137, l.141);
* adjectives become the conjugated semantic pool: each adjective is wrapped in one superclass phrase drawn by
  Python's ``random.choice`` from ``csp_templates`` ("<adj> environment", "<adj> creature", ..., seeded
  ``random.seed(seed)`` once, l.88, l.111), and the phrase's feature is the mean over 4 ``adj_templates``
  (l.112-113, l.138);
* ``_`` in corpus words becomes a space (l.98); the shipped configs leave out noun.person, noun.quantity,
  noun.group and adj.pert (custom_config/clip-ViT-B16.py l.23-25);
* a word whose largest cosine similarity to an ID label exceeds 0.95 is never selected (l.166-167).

The selection (95th percentile, 15 % of nouns and of adjectives) and the grouped score (mmcls/models/ood/
clip_ood.py, identical to NegLabel's) are NegLabel's. The draw of phrases follows the corpus order, so it equals the
authors' for the same corpus files in the same order (vlprompt reads them in sorted name order).
"""

from __future__ import annotations

import random
from typing import Any

from vlprompt.methods.csp.config import CSPConfig
from vlprompt.methods.neglabel.corpus import WordCorpus, split_words
from vlprompt.methods.neglabel.model import NegLabel


class CSP(NegLabel):
    """NegLabel over the conjugated semantic pool; OOD score ``"csp"`` (NegLabel's grouped score)."""

    config: CSPConfig

    def _words(self, corpus: WordCorpus) -> tuple[list[str], list[str]]:
        return split_words(corpus, self.config.txt_exclude, underscores=True)

    def _adjective_phrases(self, adjectives: list[str]) -> list[str]:
        rng = random.Random(self.config.seed)  # the stream of random.seed(seed); one choice per adjective, in order
        return [rng.choice(self.config.csp_templates).format(a) for a in adjectives]

    def _max_similarity(self) -> float | None:
        return self.config.max_similarity

    def _options_key(self) -> dict[str, Any]:
        c = self.config
        return {**super()._options_key(), "csp": list(c.csp_templates), "seed": c.seed,
                "max_similarity": c.max_similarity}
