"""``vlprompt methods`` and ``vlprompt models``: short listings that fit a terminal, without importing torch.

Both read :mod:`vlprompt.core.catalog` (a snapshot checked by the tests) and ask the live library only when the
snapshot does not describe the installation (:func:`vlprompt.core.catalog.snapshot_usable`).
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import Any

from vlprompt.core.catalog import load_catalog, snapshot_usable, support_key


def _width() -> int:
    return max(60, shutil.get_terminal_size((100, 24)).columns)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def _data() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """``(methods, models, support, towers)``: the snapshot, or the live library where it is not usable."""
    cat = load_catalog()
    usable, why = snapshot_usable()
    if usable:
        return cat["methods"], cat["models"], cat["support"], cat
    print(f"({why}: asking the library, a few seconds)", file=sys.stderr)
    from vlprompt.tasks.catalog import describe_methods, describe_models, describe_towers

    return describe_methods(), describe_models()[1], cat["support"], describe_towers()


def _kind(m: dict[str, Any]) -> str:
    if m["adaptation"] != "none":
        return f"test-time ({m['adaptation']})"
    training = {"sgd": "trained", "fit": "fitted", "fit+sgd": "fit + trained", "none": "training-free"}
    text = training.get(m["training"], m["training"])
    return text + (", no labels" if m["supervision"] == "none" and m["training"] != "none" else "")


def list_methods(names: list[str]) -> int:
    """One line per method (name, how it learns, summary); with names, each one's options and defaults."""
    methods = _data()[0]
    width = _width()
    unknown = [n for n in names if n not in methods]
    if unknown:
        from vlprompt.core.errors import VlpromptError

        raise VlpromptError(f"unknown method {', '.join(repr(n) for n in unknown)}; `vlprompt methods` lists "
                            f"{len(methods)} methods")
    if not names:
        for name, m in methods.items():
            print(_fit(f"{name:14s} {_kind(m):24s} {m['summary']}", width))
        print("\n" + textwrap.fill(f"{len(methods)} methods. `vlprompt methods NAME` shows a method's options and "
                                  "defaults; `vlprompt config show NAME` a whole config to start from.", width))
        return 0
    for name in names:
        m = methods[name]
        print(f"{name}: {m['summary']} ({_kind(m)})")
        for opt in m["options"]:
            head = f"  method.{opt['name']} = {opt['default']!r}"
            print(head if not opt["help"] else textwrap.fill(
                opt["help"], width, initial_indent=f"{head:44s} ", subsequent_indent=" " * 45))
    return 0


def _methods_text(runs: list[str] | None, all_methods: list[str], sets: dict[tuple[str, ...], str]) -> str:
    if runs is None:
        return "not measured"
    missing = tuple(m for m in all_methods if m not in runs)
    if not missing:
        return f"all {len(all_methods)}"
    label = sets.setdefault(missing, chr(ord("A") + len(sets)))
    return f"{len(runs)} ({label})"


def list_models(filter_text: str | None) -> int:
    """One line per architecture: text and image tower kinds, how many methods run on it, pretrained tags."""
    methods, models, support, towers = _data()
    all_methods = list(methods)
    width = _width()
    rows = [m for m in models if not filter_text or filter_text.lower() in m["name"].lower()]
    sets: dict[tuple[str, ...], str] = {}
    unmeasured = False
    name_w = min(34, max((len(m["name"]) for m in rows), default=5))
    print(_fit(f"{'model':{name_w}s} {'text tower':12s} {'image tower':18s} {'methods':9s} pretrained tags", width))
    for m in rows:
        runs = support.get(support_key(m["image_tower"], m["text_kind"]))
        unmeasured |= runs is None
        head = (f"{_fit(m['name'], name_w):{name_w}s} {m['text_kind']:12s} {_fit(m['image_tower'], 18):18s} "
                f"{_methods_text(runs, all_methods, sets):9s} ")
        tags = m["tags"] or ["(none: random init or a local file)"]
        if filter_text:  # a few models asked for: everything, wrapped
            print(textwrap.fill(", ".join(tags), width, initial_indent=head, subsequent_indent=" " * len(head)))
            pad = " " * 4
            if m["needs"]:
                print(textwrap.fill(f"needs {m['needs']}", width, initial_indent=pad, subsequent_indent=pad))
            runs_text = "not measured" if runs is None else ", ".join(runs)
            print(textwrap.fill(f"methods: {runs_text}", width, initial_indent=pad, subsequent_indent=pad + "  "))
            continue
        room = width - len(head)
        shown: list[str] = []
        for i, tag in enumerate(tags):
            more = f" (+{len(tags) - i - 1})" if i < len(tags) - 1 else ""
            if len(", ".join([*shown, tag])) + len(more) > room and shown:
                break
            shown.append(tag)
        rest = len(tags) - len(shown)
        print(_fit(head + ", ".join(shown) + (f" (+{rest})" if rest else ""), width))
    if filter_text:  # each model's methods are written out above
        return 0
    if sets or unmeasured:
        print()
    for missing, label in sets.items():
        print(textwrap.fill(f"({label}) all but {', '.join(missing)}", width, subsequent_indent="    "))
    if unmeasured:
        print(textwrap.fill("not measured: models with a Hugging Face text encoder (its config comes from the "
                            "Hugging Face cache, so no tiny copy is built here); a method that cannot use them "
                            "refuses with one error line", width, subsequent_indent="    "))
    print("\ntext towers:")
    for kind, text in towers["tower_kinds"].items():
        print(_fit(f"  {kind:12s} {text}", width))
    print("families:")
    for fam in towers["families"]:
        model = f"--model {fam['prefix']}..." if fam["prefix"] else "--model <name>"
        print(_fit(f"  {fam['name']:9s} {model:24s} {fam['description']}", width))
    print(_fit("`vlprompt models --filter NAME` shows every tag of the matching models.", width))
    return 0
