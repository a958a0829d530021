"""NegLabel options, named as in the authors' configs (XueJiang16/NegLabel@3253db6 custom_config/clip.py and the
``CLIPScalableClassifier`` / ``ScalableClassifier`` arguments in mmcls/models/classifiers/multi_modal.py and
mmcls/models/ood/clip_ood.py); every default is theirs (file:line in each field's help)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_bool, check_float, check_int
from vlprompt.methods.neglabel.corpus import check_corpus_spec


def check_templates(value: object, option: str) -> list[str]:
    """A non-empty list of templates with exactly one ``{}`` each (a single string is one template)."""
    templates = [value] if isinstance(value, str) else value
    if not isinstance(templates, list) or not templates:
        raise ConfigError(f"option {option} must be a non-empty list of templates with one '{{}}', got {value!r}")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(f"option {option}: template {t!r} must contain exactly one '{{}}'")
    return list(templates)


@dataclass
class NegLabelConfig:
    """NegLabel (Jiang et al., ICLR 2024): negative labels mined from a word corpus; training-free."""

    corpus: str = field(default="wordnet", metadata={
        "help": "word corpus: wordnet (WordNet 3.0 as the authors' txtfiles/: all noun and adjective files but "
                "noun.animal and noun.food; needs pip install -e '.[ood]' in the vlprompt clone), wordnet_complete, "
                "a registered "
                "corpus (world), a folder of noun.*.txt / adj.*.txt files or a word-list file (custom_config/clip.py "
                "l.10 wordnet_database='./txtfiles/')"})
    txt_exclude: list[str] = field(default_factory=list, metadata={
        "help": "word files of the corpus left out, e.g. noun.person (multi_modal.py l.63-66; clip.py: none)"})
    pos_templates: list[str] = field(default_factory=lambda: ["the nice {}"], metadata={
        "help": "ID label prompt(s), raw features averaged (clip.py l.14 prompt_idx_pos=85 -> class_names.py l.142 "
                "'the nice {}'; multi_modal.py l.54)"})
    noun_templates: list[str] = field(default_factory=lambda: ["the nice {}"], metadata={
        "help": "noun prompt(s) (clip.py l.15 prompt_idx_neg=85 -> class_names.py l.142; multi_modal.py l.73)"})
    adj_templates: list[str] = field(default_factory=lambda: ["This is a {} photo"], metadata={
        "help": "adjective prompt(s) (multi_modal.py l.72)"})
    neg_topk: float = field(default=0.15, metadata={
        "help": "fraction of nouns and of adjectives kept as negative labels, the least ID-like (clip.py l.12; "
                "multi_modal.py l.156-157)"})
    pencentile: float = field(default=0.95, metadata={
        "help": "quantile over ID classes of a word's similarity that ranks it (sic, the authors' name; clip.py "
                "l.18; multi_modal.py l.144)"})
    ngroup: int = field(default=100, metadata={
        "help": "groups of negatives the score averages over (clip.py l.5; clip_ood.py l.25-48)"})
    t: float = field(default=1.0, metadata={
        "help": "softmax temperature on 100 * cos (clip.py l.4: t = 1, i.e. 0.01 on cosines; clip_ood.py l.41)"})
    group_fuse_num: int | None = field(default=None, metadata={
        "help": "average only the first group_fuse_num - 1 groups (clip_ood.py l.46-47; clip.py: unset)"})
    group_seed: int = field(default=0, metadata={
        "help": "seed of the random grouping of negatives (clip_ood.py l.31 SEED=0; drawn on the CPU here)"})
    emb_batchsize: int = field(default=1000, metadata={
        "help": "prompts per text pass when encoding the corpus (clip.py l.13)"})
    cache: bool = field(default=True, metadata={
        "help": "keep mined negative labels on disk (per backbone, ID classes, corpus and options)"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "folder of that cache (null: $VLPROMPT_CACHE_DIR/negative_labels, else "
                "~/.cache/vlprompt/negative_labels)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar while encoding the corpus"})

    def __post_init__(self) -> None:
        check_corpus_spec(self.corpus)
        if isinstance(self.txt_exclude, str):  # the authors write one comma-separated string
            self.txt_exclude = [s.strip() for s in self.txt_exclude.split(",") if s.strip()]
        if not isinstance(self.txt_exclude, list) or not all(isinstance(s, str) and s for s in self.txt_exclude):
            raise ConfigError(f"option method.txt_exclude must be a list of word file names, got {self.txt_exclude!r}")
        self.pos_templates = check_templates(self.pos_templates, "method.pos_templates")
        self.noun_templates = check_templates(self.noun_templates, "method.noun_templates")
        self.adj_templates = check_templates(self.adj_templates, "method.adj_templates")
        check_float(self.neg_topk, "method.neg_topk", minimum=0.0, strict=True)
        if self.neg_topk > 1:
            raise ConfigError(f"option method.neg_topk is a fraction of the corpus in (0, 1], got {self.neg_topk}")
        check_float(self.pencentile, "method.pencentile", minimum=0.0)
        if self.pencentile > 1:
            raise ConfigError(f"option method.pencentile is a quantile in [0, 1], got {self.pencentile}")
        check_int(self.ngroup, "method.ngroup", minimum=1)
        check_float(self.t, "method.t", minimum=0.0, strict=True)
        if self.group_fuse_num is not None:
            check_int(self.group_fuse_num, "method.group_fuse_num", minimum=2)
            if self.group_fuse_num - 1 > self.ngroup:
                raise ConfigError(f"option method.group_fuse_num - 1 ({self.group_fuse_num - 1}) must be at most "
                                  f"method.ngroup ({self.ngroup})")
        check_int(self.group_seed, "method.group_seed", minimum=0)
        check_int(self.emb_batchsize, "method.emb_batchsize", minimum=1)
        check_bool(self.cache, "method.cache")
        check_bool(self.progress, "method.progress")
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir):
            raise ConfigError(f"option method.cache_dir must be a folder path or null, got {self.cache_dir!r}")
