"""The code blocks of the docs, as written: the one extractor the tests that run the docs use.

A fenced ```` ```python ```` block whose first line is a comment naming a relative path (``# my_plugin/gain/model.py``)
is that file of an example package; any other python block is a snippet, run as a script. Each block knows its
document, the heading it sits under and its line, so a failure points at the docs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
_FILE = re.compile(r"# ([\w-]+(?:/[\w-]+)*\.py)")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    doc: str  #: file name in docs/, e.g. ``methods.md``
    section: str  #: the text of the last heading above the block
    line: int  #: line of the opening fence (1-based)
    lang: str
    code: str

    @property
    def path(self) -> str | None:
        """The file a python block names on its first line (``# pkg/module.py``), else None."""
        first = self.code.split("\n", 1)[0]
        match = _FILE.fullmatch(first)
        return match.group(1) if self.lang == "python" and match else None

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line} ({self.section})"


def blocks(doc: str) -> list[Block]:
    """Every fenced block of ``docs/<doc>``, in order."""
    text = (DOCS / doc).read_text()
    # code blocks hold '#' lines too: a heading is only found outside them
    fences = list(_FENCE.finditer(text))
    headings = [h for h in _HEADING.finditer(text)
                if not any(f.start() <= h.start() < f.end() for f in fences)]
    found = []
    for fence in fences:
        above = [h.group(1).strip() for h in headings if h.start() < fence.start()]
        found.append(Block(doc, above[-1] if above else "", text.count("\n", 0, fence.start()) + 1,
                           fence.group(1), fence.group(2)))
    return found


def section_blocks(doc: str, section: str) -> list[Block]:
    """The blocks under the heading ``section`` of ``docs/<doc>`` (not those of its subsections)."""
    return [b for b in blocks(doc) if b.section == section]


def example_files(docs: tuple[str, ...]) -> dict[str, Block]:
    """The files the python blocks of ``docs`` name, by path; a path named twice is an error (two copies drift)."""
    files: dict[str, Block] = {}
    for doc in docs:
        for block in blocks(doc):
            if block.path is None:
                continue
            if block.path in files:
                raise ValueError(f"{block.path} is written twice: {files[block.path].where} and {block.where}")
            files[block.path] = block
    return files


def write_files(files: dict[str, Block], folder: Path) -> None:
    """Write each named block into ``folder`` at its path."""
    for path, block in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)
