"""Zero-shot CLIP (Radford et al., ICML 2021) with hand-crafted prompts or a prompt ensemble."""

from vlprompt.methods.registry import Capabilities, register_method
from vlprompt.methods.zeroshot.config import ZeroShotConfig
from vlprompt.methods.zeroshot.model import ZeroShotCLIP, zeroshot_classifier

register_method("zeroshot", ZeroShotConfig, ZeroShotCLIP,
                capabilities=Capabilities(training="none", supervision="none"))

__all__ = ["ZeroShotCLIP", "ZeroShotConfig", "zeroshot_classifier"]
