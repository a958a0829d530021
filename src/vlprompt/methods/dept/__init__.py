"""DePT (Zhang et al., CVPR 2024) on CoOp, CoCoOp, KgCoOp and MaPLe: one plug-in (:mod:`.model`), one registration each.

The hosts the authors ship (Koorye/DePT@d4ff416 ``trainers/elp_{coop,cocoop,kgcoop,maple}.py``); each ``dept_<host>``
takes the host's options plus :class:`~vlprompt.methods.dept.config.DePTOptions`.
"""

from vlprompt.methods.cocoop import CoCoOp, CoCoOpConfig
from vlprompt.methods.coop import CoOp, CoOpConfig
from vlprompt.methods.dept.config import DePTOptions
from vlprompt.methods.dept.model import DePTMixin, dept_variant
from vlprompt.methods.kgcoop import KgCoOp, KgCoOpConfig
from vlprompt.methods.maple import MaPLe, MaPLeConfig

DePTCoOpConfig, DePTCoOp = dept_variant("dept_coop", CoOpConfig, CoOp)
DePTCoCoOpConfig, DePTCoCoOp = dept_variant("dept_cocoop", CoCoOpConfig, CoCoOp)
DePTKgCoOpConfig, DePTKgCoOp = dept_variant("dept_kgcoop", KgCoOpConfig, KgCoOp)
DePTMaPLeConfig, DePTMaPLe = dept_variant("dept_maple", MaPLeConfig, MaPLe)

__all__ = ["DePTCoCoOp", "DePTCoCoOpConfig", "DePTCoOp", "DePTCoOpConfig", "DePTKgCoOp", "DePTKgCoOpConfig",
           "DePTMaPLe", "DePTMaPLeConfig", "DePTMixin", "DePTOptions", "dept_variant"]
