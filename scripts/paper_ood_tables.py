"""Parse the published OOD tables of the authors' READMEs into ``src/vlprompt/report/paper_results.json``.

The numbers are read from the pinned files of the repositories' bare mirrors (``git show <commit>:<path>``),
never typed: GalLoP's README OOD table (ImageNet-1k ID, ViT-B/16, 16 shots; CLIP / CoOp / LoCoOp with MCM and
GL-MCM, PLOT, PromptSRC, LSN + CoOp / CoCoOp, GalLoP; FPR95 / AUROC per MOS set and their average) and
NegRefine's README example table (ImageNet-1k ID, seed 0; AUROC / FPR95 per set). Running it again replaces
the entries of the papers it writes and leaves every other entry as it is::

    python scripts/paper_ood_tables.py [--mirrors /work/.mirror]

A row whose README names no OOD score gets ``score: "unstated"`` (it is shown in the report's published
table, never matched to a run's score); NegRefine's row scores with NegRefine's own score (``negrefine``).
NegRefine's "Clean" set (NINCO's ``NINCO_popular_datasets_subsamples``) is not a vlprompt OOD set and is left
out. NegLabel's, CSP's and SCT's READMEs hold no result table (their numbers are in the papers only).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlprompt.data.ood_sets import OOD_SETS, canonical_ood_set  # noqa: E402

PAPER_FILE = ROOT / "src" / "vlprompt" / "report" / "paper_results.json"
GALLOP = ("MarcLafon+gallop", "MarcLafon/gallop", "f75999e1601cc66e44bc6ff6faa8612021055ff3")
NEGREFINE = ("ah-ansari+NegRefine", "ah-ansari/NegRefine", "72e4b82d8d48ae298ceabbb3322ac13799cd0c88")

PAPERS: dict[str, dict[str, str]] = {
    "gallop": {"title": "GalLoP: Learning Global and Local Prompts for Vision-Language Models",
               "authors": "Marc Lafon, Elias Ramzi, Clément Rambour, Nicolas Audebert, Nicolas Thome",
               "venue": "ECCV 2024", "arxiv": "2407.01400", "pretrained": "openai"},
    "negrefine": {"title": "NegRefine: Refining Negative Label-Based Zero-Shot OOD Detection",
                  "authors": "Amirhossein Ansari, Ke Wang, Pulei Xiong", "venue": "ICCV 2025",
                  "arxiv": "2507.09795", "pretrained": "openai"},
}
#: GalLoP README row label -> (vlprompt method, OOD score, shots). The README's evaluation of GalLoP uses its
#: ``--ood_method`` default GL-MCM (gallop/train.py:226), GalLoP's own score (``gallop`` in vlprompt).
GALLOP_ROWS: dict[str, tuple[str, str, int]] = {
    "CLIP (MCM)": ("zeroshot", "mcm", 0), "CLIP (GL-MCM)": ("zeroshot", "glmcm", 0),
    "CoOp (MCM)": ("coop", "mcm", 16), "CoOp (GL-MCM)": ("coop", "glmcm", 16),
    "PLOT": ("plot", "unstated", 16), "LoCoOp (MCM)": ("locoop", "mcm", 16),
    "LoCoOp (GL-MCM)": ("locoop", "glmcm", 16), "PromptSRC": ("promptsrc", "unstated", 16),
    "LSN+CoOp": ("lsn", "unstated", 16), "LSN+CoCoOp": ("lsn", "unstated", 16), "GalLoP": ("gallop", "gallop", 16),
}


def show(mirrors: Path, repo: tuple[str, str, str], path: str) -> list[str]:
    """The lines of ``path`` at the pinned commit of a bare mirror."""
    git_dir = mirrors / repo[0] / "repo"
    text = subprocess.run(["git", "-C", str(git_dir), "show", f"{repo[2]}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    return text.splitlines()


def _cell(text: str) -> str:
    """A Markdown cell without HTML tags, bold, emoji and extra spaces: ``CLIP <sub>(MCM)</sub>`` -> ``CLIP (MCM)``."""
    text = re.sub(r"<br>.*", "", text) if "<br>" in text else text
    text = re.sub(r"<[^>]+>", "", text).replace("**", "").replace("⭐", "")
    return re.sub(r"\s+", " ", text).replace("( ", "(").strip()


def _rows(lines: list[str], first: int) -> list[tuple[int, list[str]]]:
    """``(line number, cells)`` of the Markdown table starting at ``lines[first]`` (its separator row skipped)."""
    out = []
    for n in range(first, len(lines)):
        if not lines[n].strip().startswith("|"):
            break
        cells = [c.strip() for c in lines[n].strip().strip("|").split("|")]
        if not all(set(c) <= set(":- ") for c in cells):
            out.append((n + 1, cells))
    return out


def _source(repo: tuple[str, str, str], path: str, first: int, last: int) -> str:
    return f"https://github.com/{repo[1]}/blob/{repo[2]}/{path}#L{first}-L{last}"


def gallop_entries(mirrors: Path) -> list[dict[str, Any]]:
    lines = show(mirrors, GALLOP, "README.md")
    title = next(i for i, line in enumerate(lines) if line.startswith("## Imagenet out-of-detection results"))
    table = lines[title].removeprefix("## ").strip()
    found = re.search(r"\(([^,]+), (\d+) shots\)", table)  # "(ViT-B/16, 16 shots)"
    assert found is not None, table
    backbone, shots = found.group(1), int(found.group(2))
    start = next(i for i in range(title + 1, len(lines)) if lines[i].startswith("|"))
    rows = _rows(lines, start)
    (_, header), body = rows[0], rows[1:]
    sets = [_cell(c) for c in header[2:]]  # after "Dataset" and "Imagenet Accuracy"
    source = _source(GALLOP, "README.md", rows[0][0], body[-1][0])
    out = []
    for _, cells in body:
        label = _cell(cells[0])
        method, score, row_shots = GALLOP_ROWS[label]
        assert row_shots in (0, shots), label
        for name, cell in zip(sets, cells[2:]):
            fpr, auroc = (float(v) for v in cell.replace("\\/", "/").split("/"))
            dataset = "average" if name == "Average" else canonical_ood_set(name)
            out.append({"paper": "gallop", "table": f"README: {table}", "backbone": backbone, "shots": row_shots,
                        "setting": "ood", "method": method, "paper_method": label, "score": score,
                        "id_dataset": "imagenet", "dataset": dataset, "values": {"fpr95": fpr, "auroc": auroc},
                        "source": source})
    assert {e["dataset"] for e in out} == {"inaturalist", "sun", "places", "textures", "average"}, out
    return out


def negrefine_entries(mirrors: Path) -> list[dict[str, Any]]:
    lines = show(mirrors, NEGREFINE, "README.md")
    title = next(i for i, line in enumerate(lines) if line.startswith("**Results (In-Distribution"))
    table = _cell(lines[title]).rstrip(":")
    rows = _rows(lines, title + 1)
    (_, header), body = rows[0], rows[1:]
    columns = {"AUROC (%)": "auroc", "FPR@95 (%)": "fpr95"}
    keys = [columns[_cell(c)] for c in header[1:]]
    arch = re.search(r"arch='([^']+)'", show(mirrors, NEGREFINE, "output/imagenet/seed_0/result.txt")[0])
    assert arch is not None and arch.group(1) == "ViT-B/16"  # the README table's run (its result.txt, line 1)
    source = _source(NEGREFINE, "README.md", rows[0][0], body[-1][0])
    out = []
    for _, cells in body:
        name = canonical_ood_set(_cell(cells[0]))
        if name not in OOD_SETS:  # "Clean": NINCO's popular-datasets subsamples, not a vlprompt OOD set
            continue
        out.append({"paper": "negrefine", "table": f"README: {table}", "backbone": arch.group(1), "shots": 0,
                    "setting": "ood", "method": "negrefine", "paper_method": "NegRefine", "score": "negrefine",
                    "id_dataset": "imagenet", "dataset": name,
                    "values": {k: float(v) for k, v in zip(keys, cells[1:])}, "source": source})
    return out


def dump(data: dict[str, Any]) -> str:
    """The file's layout: indented header fields, one result entry per line."""
    head = {k: v for k, v in data.items() if k != "results"}
    text = json.dumps(head, indent=2, ensure_ascii=False)[:-2]
    rows = ",\n".join("    " + json.dumps(r, ensure_ascii=False) for r in data["results"])
    return f'{text},\n  "results": [\n{rows}\n  ]\n}}\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    args = parser.parse_args(argv)
    data = json.loads(PAPER_FILE.read_text(encoding="utf-8"))
    new = gallop_entries(args.mirrors) + negrefine_entries(args.mirrors)
    written = {e["paper"] for e in new}
    data["results"] = [e for e in data["results"] if e["paper"] not in written] + new
    data["papers"].update({p: PAPERS[p] for p in sorted(written)})
    PAPER_FILE.write_text(dump(data), encoding="utf-8")
    print(f"{len(new)} entries of {', '.join(sorted(written))} written to {PAPER_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
