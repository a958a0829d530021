"""NegLabel (Jiang et al., ICLR 2024): training-free OOD detection with negative labels mined from WordNet."""

from vlprompt.methods.neglabel.config import NegLabelConfig
from vlprompt.methods.neglabel.corpus import WordCorpus, load_corpus, register_word_corpus
from vlprompt.methods.neglabel.model import NegativeLabels, NegLabel
from vlprompt.methods.registry import Capabilities, register_method

register_method("neglabel", NegLabelConfig, NegLabel,
                capabilities=Capabilities(training="none", supervision="none", ood_scores=("neglabel",)))

__all__ = ["NegLabel", "NegLabelConfig", "NegativeLabels", "WordCorpus", "load_corpus", "register_word_corpus"]
