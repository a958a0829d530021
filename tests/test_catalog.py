"""``vlprompt methods`` / ``vlprompt models`` answer from core/catalog.json without torch; the snapshot is current.

The snapshot is written by ``scripts/make_catalog.py``; these tests fail when a method, an option, a default, a
model, a tag or a tower pair's runnable methods change without it being written again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from vlprompt.core.catalog import load_catalog, snapshot_usable, support_key
from vlprompt.core.errors import ModelError
from vlprompt.tasks.catalog import describe_methods, describe_models, describe_towers

REGENERATE = "the catalogue is stale: run `python scripts/make_catalog.py` and commit src/vlprompt/core/catalog.json"


def test_snapshot_describes_this_installation():
    assert snapshot_usable() == (True, ""), REGENERATE


@pytest.mark.slow
def test_methods_and_their_options_are_current():
    from vlprompt.methods.registry import get_method

    # vlprompt's own methods (a test may have registered a toy one in this process)
    live = {k: v for k, v in describe_methods().items() if get_method(k).model_cls.__module__.startswith("vlprompt.")}
    assert load_catalog()["methods"] == live, REGENERATE


@pytest.mark.slow
def test_models_tags_and_towers_are_current():
    version, models = describe_models()
    cat = load_catalog()
    # open_clip's and vlprompt's configs (a test may have added a tiny config to open_clip in this process)
    known = {m["name"] for m in cat["models"]}
    ours = [m for m in models if m["name"] in known or not m["name"].startswith(("vlprompt-", "test", "tmp"))]
    assert (cat["open_clip_version"], cat["models"]) == (version, ours), REGENERATE
    towers = describe_towers()
    assert (cat["tower_kinds"], cat["families"]) == (towers["tower_kinds"], towers["families"]), REGENERATE
    pairs = {support_key(m["image_tower"], m["text_kind"]) for m in ours}
    assert pairs == set(cat["support"]), REGENERATE


@pytest.mark.slow
def test_support_matches_what_builds_on_the_tiny_resnet(tiny_backbone):
    """Every method listed for the tiny model's tower pair builds on it; every other one refuses it clearly."""
    from vlprompt.methods.base import MethodContext
    from vlprompt.methods.registry import build_method, make_method_config

    if tiny_backbone.name != "vlprompt-test-rn":
        pytest.skip("the ResNet pair is the one where methods refuse")
    runs = set(load_catalog()["support"]["modified-resnet|causal-eot"])
    context = MethodContext(templates=["a photo of a {}."], descriptions={n: [f"a {n}."] for n in "abc"})
    for name in load_catalog()["methods"]:
        make_method_config(name, {})
        try:
            build_method(name, tiny_backbone, ["a", "b", "c"], context=context)
            built = True
        except ModelError as exc:
            assert "not a vision transformer" in str(exc), (name, str(exc))
            built = False
        assert built == (name in runs), name


@pytest.mark.subprocess
def test_listings_answer_fast_without_torch():
    code = ("import sys, io, contextlib, time; t = time.perf_counter()\n"
            "from vlprompt.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    assert main(['methods']) == 0 and main(['models']) == 0 and main(['methods', 'coop']) == 0\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 's': time.perf_counter() - t, "
            "'lines': out.getvalue().count(chr(10))}))")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True,
                          env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    wall = time.perf_counter() - t0
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert not res["torch"] and res["lines"] > 150
    assert wall < 5.0 and res["s"] < 1.0, (wall, res)  # measured ~0.1 s; generous for a loaded CI machine


def test_listing_lines_fit_the_terminal(capsys, monkeypatch):
    from vlprompt.cli.main import main

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["models"]) == 0 and main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(ln) for ln in lines) <= 80


def test_unknown_method_name_is_one_error_line(capsys):
    from vlprompt.cli.main import main

    assert main(["methods", "cop"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown method 'cop'")
