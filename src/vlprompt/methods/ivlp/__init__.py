"""IVLP, VPT-deep and deep language prompting (Khattak et al., CVPR 2023; Jia et al., ECCV 2022)."""

from vlprompt.methods.ivlp.config import DeepLanguageConfig, IVLPConfig, VPTDeepConfig
from vlprompt.methods.ivlp.model import IVLP, DeepLanguage, VPTDeep
from vlprompt.methods.registry import register_method

register_method("ivlp", IVLPConfig, IVLP, modifies_encoders=True)
register_method("vpt_deep", VPTDeepConfig, VPTDeep, modifies_encoders=True)
register_method("deep_language", DeepLanguageConfig, DeepLanguage, modifies_encoders=True)

__all__ = ["IVLP", "DeepLanguage", "DeepLanguageConfig", "IVLPConfig", "VPTDeep", "VPTDeepConfig"]
