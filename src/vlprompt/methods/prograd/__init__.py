"""ProGrad (Zhu, Niu, Han, Wu, Zhang; ICCV 2023): prompt-aligned gradients."""

from vlprompt.methods.prograd.config import ProGradConfig
from vlprompt.methods.prograd.model import ProGrad
from vlprompt.methods.registry import Capabilities, register_method

register_method("prograd", ProGradConfig, ProGrad,
                capabilities=lambda cfg: Capabilities(owns_gradient_step=True, class_specific=cfg.csc))

__all__ = ["ProGrad", "ProGradConfig"]
