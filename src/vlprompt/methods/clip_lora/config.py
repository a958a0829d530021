"""CLIP-LoRA options (``run_utils.py`` of MaxZanella/CLIP-LoRA) and its named block positions."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.core.errors import ConfigError
from vlprompt.core.validate import check_choice, check_float, check_int
from vlprompt.methods.clip_lora.lora import PROJECTIONS

#: CLIP-LoRA's named positions of fixed blocks (``loralib/utils.py`` INDEX_POSITIONS_TEXT l.10-19 and the
#: 12-block ViT-B/16 and ViT-B/32 image towers, l.23-38): defined for 12-block towers only
POSITIONS = {
    "top1": [11], "top2": [10, 11], "top3": [9, 10, 11], "bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7],
    "up": [8, 9, 10, 11],
}
#: the presets that scale with the tower's depth D: ``loralib/utils.py`` gives them for 12 blocks (l.17-19,
#: l.29-31) and for the 24-block ViT-L/14 image tower (l.41-43): the last D/2 blocks, the first D/2, all D
SCALED_POSITIONS = ("half-up", "half-bottom", "all")


@dataclass
class ClipLoRAConfig:
    """CLIP-LoRA's options (``run_utils.py``: --r, --alpha, --dropout_rate, --params, --encoder, --position)."""

    r: int = field(default=2, metadata={"help": "rank of the low-rank matrices"})
    alpha: float = field(default=1.0, metadata={"help": "scaling numerator: the update is alpha / sqrt(r) * B A"})
    dropout_rate: float = field(default=0.25, metadata={"help": "dropout on the LoRA branch's input"})
    params: list[str] = field(default_factory=lambda: ["q", "k", "v"],
                              metadata={"help": "attention projections adapted: q, k, v, o"})
    encoder: str = field(default="both", metadata={"help": "text, vision or both"})
    position: str | list[int] = field(
        default="all", metadata={"help": "all, half-up, half-bottom (any depth), a CLIP-LoRA preset of 12-block "
                                 "towers (top1, top2, top3, bottom, mid, up) or a list of block indices"})

    def __post_init__(self) -> None:
        check_int(self.r, "method.r", minimum=1)
        check_float(self.alpha, "method.alpha", minimum=0.0, strict=True)
        check_float(self.dropout_rate, "method.dropout_rate", minimum=0.0)
        if self.dropout_rate >= 1:
            raise ConfigError(f"option method.dropout_rate must be below 1, got {self.dropout_rate}")
        if isinstance(self.params, str):
            self.params = [self.params]
        if not self.params or any(p not in PROJECTIONS for p in self.params):
            raise ConfigError(f"option method.params must list some of {', '.join(PROJECTIONS)}, got {self.params!r}")
        self.params = list(dict.fromkeys(self.params))
        check_choice(self.encoder, "method.encoder", ("text", "vision", "both"))
        if isinstance(self.position, str):
            check_choice(self.position, "method.position", (*SCALED_POSITIONS, *POSITIONS))
        elif not (isinstance(self.position, list) and self.position
                  and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.position)):
            raise ConfigError(f"option method.position must be a preset name or a list of block indices, "
                              f"got {self.position!r}")

    def blocks(self, depth: int, tower: str) -> list[int]:
        """The adapted block indices of a ``depth``-block tower.

        ``all``, ``half-up`` and ``half-bottom`` scale with the depth as CLIP-LoRA's tables do
        (``loralib/utils.py`` l.17-19 for 12 blocks: 0-11, 6-11, 0-5; l.41-43 for ViT-L/14's 24-block image
        tower: 0-23, 12-23, 0-11); on an odd depth the upper half is the larger one. The other presets name
        blocks of a 12-block tower (the authors define them for no other depth, l.40-43): on another depth
        they are refused rather than applied to the wrong blocks.
        """
        if self.position == "all":
            return list(range(depth))
        if self.position == "half-up":
            return list(range(depth // 2, depth))
        if self.position == "half-bottom":
            return list(range(depth // 2))
        if isinstance(self.position, str) and depth != 12:
            raise ConfigError(f"option method.position {self.position!r} is CLIP-LoRA's preset of a 12-block tower "
                              f"(loralib/utils.py l.10-38) but the {tower} tower has {depth} blocks; use all, "
                              "half-up, half-bottom or a list of block indices")
        wanted = POSITIONS[self.position] if isinstance(self.position, str) else list(self.position)
        if max(wanted) >= depth:
            raise ConfigError(f"option method.position {self.position!r} names block {max(wanted)} but the {tower} "
                              f"tower has {depth} blocks; use 'all' or a list of indices below {depth}")
        return wanted
