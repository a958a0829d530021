"""CSP options: NegLabel's plus the conjugated semantic pool's, with the defaults of MengyuanChen21/NeurIPS2024-CSP
@3a7bdab custom_config/clip-ViT-B16.py and mmcls/models/classifiers/{multi_modal.py, class_names.py} (file:line in
each field's help)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.validate import check_float, check_int
from vlprompt.methods.neglabel.config import NegLabelConfig, check_templates

#: class_names.py l.1074-1083 (``preset_noun_prompt_templates``): the ID and noun prompts, raw features averaged.
NOUN_TEMPLATES = ["a close-up photo of the nice {}.", "a photo with the nice {}.", "a good photo with the nice {}.",
                  "a photo of the nice {}.", "{}", "the {}", "the good {}", "the nice {}"]
#: class_names.py l.1109-1110 (``preset_noun_prompt_templates_for_sketch``, used for imagenet_sketch, multi_modal.py
#: l.54-55).
SKETCH_NOUN_TEMPLATES = ["a sketch of a {}", "a sketch of the {}", *NOUN_TEMPLATES]
#: class_names.py l.1085-1100 (``csp_templates``): the conjugated semantic pool's superclass phrases.
CSP_TEMPLATES = ["{} environment", "{} space", "{} object", "{} scene", "{} place", "{} item", "{} area", "{} view",
                 "{} thing", "{} pattern", "{} structure", "{} landscape", "{} vista", "{} creature"]
#: class_names.py l.1102-1107 (``preset_adj_prompt_templates``): prompts of the adjective phrases, averaged.
ADJ_TEMPLATES = ["{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}"]
#: clip-ViT-B16.py l.23-25 (``txt_exclude``).
EXCLUDE = ["noun.person", "noun.quantity", "noun.group", "adj.pert"]


@dataclass
class CSPConfig(NegLabelConfig):
    """CSP (Chen et al., NeurIPS 2024): NegLabel whose adjectives become "<adjective> <superclass>" phrases."""

    txt_exclude: list[str] = field(default_factory=lambda: list(EXCLUDE), metadata={
        "help": "word files left out (clip-ViT-B16.py l.23-25)"})
    pos_templates: list[str] = field(default_factory=lambda: list(NOUN_TEMPLATES), metadata={
        "help": "ID label prompts, raw features averaged (multi_modal.py l.54-70; class_names.py l.1074-1083)"})
    noun_templates: list[str] = field(default_factory=lambda: list(NOUN_TEMPLATES), metadata={
        "help": "noun prompts, raw features averaged per word (multi_modal.py l.83, l.107-108, l.137)"})
    adj_templates: list[str] = field(default_factory=lambda: list(ADJ_TEMPLATES), metadata={
        "help": "prompts of each adjective phrase, averaged (multi_modal.py l.112-113, l.138; class_names.py "
                "l.1102-1107)"})
    csp_templates: list[str] = field(default_factory=lambda: list(CSP_TEMPLATES), metadata={
        "help": "superclass phrases, one drawn per adjective (multi_modal.py l.82, l.111; class_names.py "
                "l.1085-1100)"})
    seed: int = field(default=0, metadata={
        "help": "seed of Python's random.choice of each adjective's phrase (clip-ViT-B16.py l.35; multi_modal.py "
                "l.88)"})
    max_similarity: float | None = field(default=0.95, metadata={
        "help": "a word whose largest cosine to an ID label exceeds this is never selected (multi_modal.py "
                "l.166-167); null: off"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.csp_templates = check_templates(self.csp_templates, "method.csp_templates")
        check_int(self.seed, "method.seed", minimum=0)
        if self.max_similarity is not None:
            check_float(self.max_similarity, "method.max_similarity")
