"""``hf://owner/name``: folders of the local Hugging Face cache, found offline.

A learned prompt uploaded to the Hugging Face Hub (``vlprompt export RUN --format hub -o DIR``, then
``hf upload owner/name DIR``) is used as ``hf://owner/name`` (``vlprompt.load_prompt``, ``--prompt``) once
``hf download owner/name`` has put it in the local cache; ``hf:owner/name`` datasets are found the same way.
vlprompt never downloads anything: the snapshot is looked up with ``huggingface_hub``'s cache API and
``local_files_only=True``. The cache is where the ``hf`` command puts it: ``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read when a reference is resolved, so a changed
environment variable counts).

``hf://owner/name@revision`` picks a branch, tag or commit of the cached repository (default ``main``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from vlprompt.core.errors import ConfigError, VlpromptError

PREFIX = "hf://"
#: The prompt file a hub folder holds when its ``config.json`` names none.
DEFAULT_PROMPT_FILE = "prompt.safetensors"
#: The hub folder's description of its prompt (written by ``vlprompt export --format hub``).
CONFIG_FILE = "config.json"
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_hub_ref(source: object) -> bool:
    """Whether ``source`` is an ``hf://owner/name`` reference (``hf:/owner/name`` too: what ``Path`` makes of one,
    when no such local path exists)."""
    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if not isinstance(text, str):
        return False
    if text.startswith(PREFIX):
        return True
    return text.startswith("hf:/") and not text.startswith("hf://") and not os.path.exists(text)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE`` (or the older ``HUGGINGFACE_HUB_CACHE``), else
    ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def parse_repo_id(text: str, what: str) -> tuple[str, str | None]:
    """``"owner/name[@revision]"`` -> ``(repo id, revision or None)``; a malformed id is a :class:`ConfigError`."""
    repo, _, revision = text.partition("@")
    repo = repo.strip().strip("/")
    if not REPO_ID.fullmatch(repo) or ".." in repo or (revision == "" and "@" in text):
        raise ConfigError(f"{what} must name a Hugging Face repository as owner/name (optionally @revision), "
                          f"got '{text}'")
    return repo, revision or None


def cached_snapshot(repo_id: str, *, revision: str | None = None, repo_type: str = "model",
                    shown: str | None = None) -> Path:
    """The folder of ``repo_id``'s cached snapshot (no network: ``local_files_only``).

    Raises:
        VlpromptError: it is not in the cache; the message names the cache and the ``hf download`` command.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a dependency of transformers / datasets
        raise VlpromptError("hf:// references need the package huggingface_hub: pip install huggingface_hub") from exc
    cache = hub_cache_dir()
    shown = shown or f"{PREFIX}{repo_id}"
    command = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    if repo_type != "model":
        command += f" --repo-type {repo_type}"
    try:
        folder = snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache,
                                   local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, OSError: all mean "not usable here"
        raise VlpromptError(f"{shown} is not in the local Hugging Face cache ({cache}); fetch it with: "
                            f"{command}") from exc
    return Path(str(folder))


def resolve_prompt_source(source: str | os.PathLike[str]) -> Path:
    """The prompt file ``source`` names: itself, or for ``hf://owner/name`` the prompt file of the cached snapshot
    (the one its ``config.json`` names, else ``prompt.safetensors``)."""
    if not is_hub_ref(source):
        return Path(source)
    text = os.fspath(source)
    ref = text[len(PREFIX):] if text.startswith(PREFIX) else text[len("hf:/"):]
    repo, revision = parse_repo_id(ref, "a hf:// prompt")
    folder = cached_snapshot(repo, revision=revision, shown=f"{PREFIX}{ref}")
    name = DEFAULT_PROMPT_FILE
    config = folder / CONFIG_FILE
    if config.is_file():
        try:
            meta = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VlpromptError(f"{PREFIX}{ref}: its {CONFIG_FILE} ('{config}') is not readable JSON ({exc})") from exc
        named = meta.get("prompt_file", name) if isinstance(meta, dict) else name
        if not isinstance(named, str) or Path(named).name != named or not named.endswith(".safetensors"):
            raise VlpromptError(f"{PREFIX}{ref}: {CONFIG_FILE} names the prompt file {named!r}; it must be a "
                                "file name ending in .safetensors in the repository's top folder")
        name = named
    prompt = folder / name
    if not prompt.is_file():
        raise VlpromptError(f"{PREFIX}{ref} (cached in '{folder}') holds no prompt file '{name}'; it is not a "
                            "vlprompt prompt repository (`vlprompt export RUN --format hub` writes one)")
    return prompt
