"""User-facing errors.

Every error a user can cause (bad config, missing dataset, wrong checkpoint, ...) is raised as a
:class:`VlpromptError` whose message names the file/option at fault and says what to do. The CLI
prints the message alone (no traceback) and exits with code 2.
"""

from __future__ import annotations


class VlpromptError(Exception):
    """Base class of errors caused by user input; the message is meant for the user."""

    exit_code = 2


class ConfigError(VlpromptError):
    """A configuration file, option or ``--set`` override is invalid."""


class DataError(VlpromptError):
    """A dataset root, split file, CSV or image is missing or malformed."""


class ModelError(VlpromptError):
    """A backbone name, pretrained tag or weights file cannot be used."""


class CheckpointError(VlpromptError):
    """A checkpoint or learned-prompt file does not match or cannot be read."""


def user_message(exc: BaseException) -> str:
    """Return the user-facing message of ``exc``.

    Errors raised inside DataLoader worker processes are re-raised by PyTorch with the worker's
    whole traceback in the message; keep only the original error's last line in that case.
    """
    msg = str(exc)
    if "Original Traceback" in msg:
        lines = [ln for ln in msg.strip().splitlines() if ln.strip()]
        last = lines[-1]
        if ": " in last:
            head, _, tail = last.partition(": ")
            if head.split(".")[-1].endswith("Error"):
                return tail
        return last
    return msg
