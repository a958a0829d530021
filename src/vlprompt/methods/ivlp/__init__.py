"""IVLP, VPT-deep and deep language prompting (Khattak et al., CVPR 2023; Jia et al., ECCV 2022)."""

from vlprompt.methods.ivlp.config import DeepLanguageConfig, IVLPConfig, VPTDeepConfig
from vlprompt.methods.ivlp.model import IVLP, DeepLanguage, VPTDeep
from vlprompt.methods.registry import Capabilities, register_method


def _capabilities(cfg: IVLPConfig) -> Capabilities:
    """Image features depend on learned tensors only when vision prompts are learned (not deep_language's)."""
    return Capabilities(modifies_encoders=cfg.learns_vision)


register_method("ivlp", IVLPConfig, IVLP, capabilities=_capabilities)
register_method("vpt_deep", VPTDeepConfig, VPTDeep, capabilities=_capabilities)
register_method("deep_language", DeepLanguageConfig, DeepLanguage, capabilities=_capabilities)

__all__ = ["DeepLanguage", "DeepLanguageConfig", "IVLP", "IVLPConfig", "VPTDeep", "VPTDeepConfig"]
