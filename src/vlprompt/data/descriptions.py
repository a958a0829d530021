"""Class descriptions as data: a JSON file mapping each class name to a list of sentences.

This is the format the authors ship their LLM-generated descriptions in, read as they read it:

* CoPrompt (Roy & Etemad, ICLR 2024), ``gpt_file/<dataset>_prompt.json`` (e.g. ``gpt_file/oxford_pets_prompt.json``:
  ``{"abyssinian": ["A photo of a pet abyssinian. it has ...", ...], ...}``), looked up in
  ``trainers/coprompt.py`` l.384-386 as ``gpt_prompts[classname.replace("_", " ")]``;
* CuPL (Pratt et al., ICCV 2023), ``all_prompts/full_prompts/<dataset>_prompts_full.json`` (e.g.
  ``pets_prompts_full.json``: ``{"wheaten terrier": ["A pet wheaten terrier typically has ...", ...], ...}``),
  looked up in ``classify_imagenet.py`` l.52 as ``gpt3_prompts[textnames[i]]`` (the class's text name as written).

Both are one JSON object ``{class name: [sentence, ...]}``. A class of the run is matched to a key as the authors do
(the name as written, then with ``_`` read as a space, CoPrompt l.384), then, beyond the authors, ignoring case and
repeated spaces where that picks one key (CuPL's pets file writes ``"Sphynx"``, CoOp's class list ``sphynx``). A
class with no key is an error naming it; keys naming no class of the run are ignored with one warning.

Where: ``data.descriptions_file`` (the issue's spelling ``data.options.descriptions_file`` is the same option), else
``<data.root>/descriptions/<data.dataset>.json`` when that file exists (one folder for every dataset's file, like
CoPrompt's ``gpt_file/``), else the file the dataset ships (``register_dataset(..., descriptions=PATH)``: the
world's datasets ship descriptions written for their classes, ``vlprompt/world/descriptions/``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from vlprompt.config import DataConfig
from vlprompt.core.errors import DataError
from vlprompt.data.coop_layouts import read_json_file
from vlprompt.data.registry import get_dataset_info

#: The folder under ``data.root`` holding ``<dataset>.json`` description files (the default location).
DESCRIPTIONS_FOLDER = "descriptions"

#: ``((class name, (sentence, ...)), ...)`` in the run's class order (what :class:`MethodContext` carries).
Descriptions = tuple[tuple[str, tuple[str, ...]], ...]

_WHAT = "description file"


class ExtraDescriptionsWarning(UserWarning):
    """The description file has entries for classes that are not in the run (they are ignored)."""


def default_descriptions_path(root: str | None, dataset: str) -> Path | None:
    """``<root>/descriptions/<dataset>.json`` (None without a root)."""
    if not root or not dataset:
        return None
    return Path(root) / DESCRIPTIONS_FOLDER / f"{dataset}.json"


def descriptions_path(cfg: DataConfig) -> Path | None:
    """The description file of ``cfg``: ``data.descriptions_file`` (which must exist), else the default location
    when a file is there, else None (no descriptions)."""
    if cfg.descriptions_file:
        path = Path(cfg.descriptions_file)
        if not path.is_file():
            raise DataError(f"{_WHAT} '{path}' (option data.descriptions_file) does not exist; give a JSON file "
                            "mapping each class name to a list of sentences (docs/methods.md, 'Class descriptions').")
        return path
    default = default_descriptions_path(cfg.root, cfg.dataset)
    if default is not None and default.is_file():
        return default
    return shipped_descriptions_path(cfg.dataset)


def shipped_descriptions_path(dataset: str) -> Path | None:
    """The description file the dataset ``dataset`` declares it ships (``DatasetInfo.descriptions``), or None
    (none declared, or an unknown dataset: the reader reports that one)."""
    if not dataset:
        return None
    try:
        declared = get_dataset_info(dataset).descriptions
    except DataError:
        return None
    return Path(declared) if declared else None


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """The JSON object ``{class name: [sentence, ...]}`` of ``path`` (CoPrompt's ``gpt_file``, CuPL's
    ``*_prompts_full.json``), checked: DataError naming the first malformed entry."""
    data = read_json_file(str(path), _WHAT)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{_WHAT} '{path}' must be a non-empty JSON object mapping each class name to a list of "
                        f"sentences, got {type(data).__name__}.")
    out: dict[str, list[str]] = {}
    for name, sentences in data.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if (not isinstance(sentences, list) or not sentences
                or any(not isinstance(s, str) or not s.strip() for s in sentences)):
            raise DataError(f"{_WHAT} '{path}': the entry of class '{name}' must be a non-empty list of non-empty "
                            f"sentences, got {sentences!r:.80}.")
        out[name] = sentences
    return out


def _fold(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().casefold()


def match_descriptions(table: dict[str, list[str]], classnames: Sequence[str], *, source: str = _WHAT,
                       warn_extra: bool = True) -> Descriptions:
    """``table``'s sentences for each of ``classnames``, in class order (see the module doc for how names match).

    A class without an entry -> DataError naming it (and how many others); entries for no class -> one
    :class:`ExtraDescriptionsWarning` (unless ``warn_extra`` is False).
    """
    folded: dict[str, str | None] = {}
    for entry in table:
        folded[_fold(entry)] = None if _fold(entry) in folded else entry  # None: two keys differ only in case
    used: set[str] = set()
    out = []
    missing: list[str] = []
    for name in classnames:
        spaced = name.replace("_", " ")
        key = name if name in table else spaced if spaced in table else folded.get(_fold(name))
        if key is None:
            missing.append(name)
            continue
        used.add(key)
        out.append((name, tuple(table[key])))
    if missing:
        more = f" (and {len(missing) - 1} more class(es): {', '.join(repr(m) for m in missing[1:6])}" \
               f"{' ...' if len(missing) > 6 else ''})" if len(missing) > 1 else ""
        raise DataError(f"{source} has no sentences for class '{missing[0]}'{more}; add an entry for it (keys are "
                        "matched as written, with '_' read as a space, then ignoring case).")
    extra = [k for k in table if k not in used]
    if extra and warn_extra:
        shown = ", ".join(repr(k) for k in extra[:5]) + (" ..." if len(extra) > 5 else "")
        warnings.warn(f"{source}: {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} name no class of this run "
                      f"and {'is' if len(extra) == 1 else 'are'} ignored: {shown}", ExtraDescriptionsWarning,
                      stacklevel=2)
    return tuple(out)


def load_descriptions(cfg: DataConfig, classnames: Sequence[str]) -> Descriptions:
    """The descriptions of ``classnames`` from ``cfg``'s description file (:func:`descriptions_path`); ``()`` when
    there is none. Extra entries warn only when the run has every class (``data.subsample_classes: all``): a
    base / new run leaves the other half's entries unused by design."""
    path = descriptions_path(cfg)
    if path is None:
        return ()
    return match_descriptions(read_descriptions(path), classnames, source=f"{_WHAT} '{path}'",
                              warn_extra=cfg.subsample_classes == "all")
