"""The package version (one place; recorded in prompt files and checkpoints)."""

__version__ = "0.1.0"
