# my_plugin/gain/config.py
"""Options of the gain method."""

from dataclasses import dataclass, field


@dataclass
class GainConfig:
    init_gain: float = field(default=1.0, metadata={"help": "initial value of the learned gain"})
    class_gains: bool = field(default=False, metadata={"help": "one gain vector per class (class-specific)"})
