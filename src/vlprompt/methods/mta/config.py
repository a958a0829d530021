"""MTA options, named as in MaxZanella/MTA (``main.py`` arguments, ``mta.py`` constants).

Defaults: ``main.py`` lines 346-347 (``--lambda_q 4``, ``--lambda_y 0.2``), ``mta.py`` line 19
(``max_iter = 5``), line 20 (``temperature = 1``), line 27 (the bandwidth's neighbours: ``0.3``), line 43
(``th = 1e-6``), and the prompt ``"a photo of a {}."`` of ``main.py`` line 339 (``--ctx_init a_photo_of_a``,
formatted by ``clip/custom_clip.py`` line 114).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_float, check_int
from vlprompt.methods.zero.config import check_templates


@dataclass
class MTAConfig:
    """MeanShift for test-time augmentation (Zanella, Ben Ayed; CVPR 2024)."""

    lambda_y: float = field(default=0.2, metadata={
        "help": "entropic term weight: inlierness scores y = softmax((density + lambda_q A y) / lambda_y) "
                "(main.py l.347)"})
    lambda_q: float = field(default=4.0, metadata={
        "help": "weight of the quadratic (affinity) term of the inlierness scores (main.py l.346)"})
    max_iter: int = field(default=5, metadata={
        "help": "outer iterations, and the cap of each inner inlierness / mode loop (mta.py l.19)"})
    temperature: float = field(default=1.0, metadata={
        "help": "softmax temperature of the affinity between the views' predictions (mta.py l.20)"})
    th: float = field(default=1e-6, metadata={
        "help": "an inner loop stops when its update moves less than this (L2; mta.py l.43)"})
    bandwidth_neighbours: float = field(default=0.3, metadata={
        "help": "each view's kernel bandwidth: sqrt(0.5 x mean squared distance to its int(f (V - 1)) nearest "
                "other views), f this fraction (mta.py l.24-30)"})
    templates: list[str] | None = field(default=None, metadata={
        "help": "class prompt template(s), several ensembled; null = the dataset's (data.templates). "
                "The authors use ['a photo of a {}.'] on every dataset"})
    class_chunk: int = field(default=256, metadata={"help": "classes encoded per text pass (memory bound)"})

    def __post_init__(self) -> None:
        check_float(self.lambda_y, "method.lambda_y", minimum=0.0, strict=True)
        check_float(self.lambda_q, "method.lambda_q", minimum=0.0)
        check_int(self.max_iter, "method.max_iter", minimum=1)
        check_float(self.temperature, "method.temperature", minimum=0.0, strict=True)
        check_float(self.th, "method.th", minimum=0.0)
        fraction = check_float(self.bandwidth_neighbours, "method.bandwidth_neighbours", minimum=0.0, strict=True)
        if fraction > 1.0:
            raise ConfigError(f"option method.bandwidth_neighbours is a fraction of the other views, in (0, 1]; "
                              f"got {self.bandwidth_neighbours}")
        self.templates = check_templates(self.templates, "method.templates")
        check_int(self.class_chunk, "method.class_chunk", minimum=1)
