"""ProGrad (Zhu, Niu, Han, Wu, Zhang; ICCV 2023): prompt-aligned gradients."""

from vlprompt.methods.prograd.model import ProGrad, ProGradConfig
from vlprompt.methods.registry import register_method

register_method("prograd", ProGradConfig, ProGrad, owns_gradient_step=True)

__all__ = ["ProGrad", "ProGradConfig"]
