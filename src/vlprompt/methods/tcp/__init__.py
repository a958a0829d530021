"""TCP (Yao, Zhang, Xu; CVPR 2024): KgCoOp with class-aware prompt tokens from the class-level text knowledge."""

from vlprompt.methods.registry import register_method
from vlprompt.methods.tcp.config import TCPConfig
from vlprompt.methods.tcp.model import TCP

#: one shared context and a class-independent TKE: nothing belongs to the training classes (new classes get their
#: class-aware tokens from their own text knowledge)
register_method("tcp", TCPConfig, TCP)

__all__ = ["TCP", "TCPConfig"]
