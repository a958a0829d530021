"""The docs' "how to add one" sections, executed as written.

docs/architecture.md ("A method, complete", "A plugin package, complete"), docs/methods.md ("The method
contract", "Adding a dataset") and docs/backbones.md ("Adding a family") together write a plugin package
``my_plugin``: a method (``gain``), a backbone family (``toy``) and a dataset (``tiny_pets``), one code block
per file (its first line names the file, see :mod:`docs_blocks`). Here those blocks are written into a
temporary folder, installed with the ``pyproject.toml`` of examples/vlprompt_plugin_example (``pip install
--target``: a real ``.dist-info`` with the ``vlprompt.plugins`` entry point) and put on ``PYTHONPATH`` of
subprocesses, which show that

* every contract test (methods, backbone families, datasets) is collected for the new extension exactly as for
  a built-in one, and passes for it, with no test edit;
* ``vlprompt train`` trains the method on the dataset with the family's model, and ``vlprompt protocol
  base2new`` refuses the method when its options make it class-specific, before training;
* the other python blocks of these sections run as written;

and, without installing anything, that the example package is these blocks, file for file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import vlprompt
from vlprompt.core.backbone_record import BackboneRecord

from docs_blocks import Block, blocks, example_files, section_blocks, write_files

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vlprompt_plugin_example"
#: the "how to add one" sections of each document, whose python blocks are all run here
HOW_TO = {
    "architecture.md": ("A method, complete", "A plugin package, complete"),
    "methods.md": ("The method contract (adding a method)", "Adding a dataset"),
    "backbones.md": ("Adding a family",),
}
#: contract test file -> (the docs' extension, a built-in one): the parameter each is collected under
CONTRACTS = {
    "tests/test_method_contract.py": ("gain", "coop"),
    "tests/test_backbone_contract.py": ("toy", "open_clip"),
    "tests/test_dataset_contract.py": ("tiny_pets", "imagefolder"),
}
SNIPPETS = [b for doc, sections in HOW_TO.items() for s in sections for b in section_blocks(doc, s)
            if b.lang == "python" and b.path is None]
TIMEOUT = 900


def _files() -> dict[str, Block]:
    return example_files(tuple(HOW_TO))


def _run(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)


def _tail(out: subprocess.CompletedProcess[str]) -> str:
    return out.stdout[-3000:] + out.stderr[-3000:]


# ------------------------------------------------------------------------------------ the docs and examples/
def test_every_how_to_section_has_python_code_and_every_example_file_is_in_one():
    for doc, sections in HOW_TO.items():
        for section in sections:
            assert any(b.lang == "python" for b in section_blocks(doc, section)), f"docs/{doc}: {section}"
    files = _files()
    assert set(files) == {"my_plugin/__init__.py", "my_plugin/gain/__init__.py", "my_plugin/gain/config.py",
                                  "my_plugin/gain/model.py", "my_plugin/toy_family.py", "my_plugin/tiny_pets.py"}
    assert all(b.section in HOW_TO[b.doc] for b in files.values()), [b.where for b in files.values()]


def test_a_file_written_twice_in_the_docs_is_refused(tmp_path, monkeypatch):
    import docs_blocks

    (tmp_path / "a.md").write_text("# A\n\n```python\n# pkg/m.py\nx = 1\n```\n\n## B\n\n```python\n# pkg/m.py\n"
                                   "x = 2\n```\n\n```python\nprint(1)\n```\n")
    monkeypatch.setattr(docs_blocks, "DOCS", tmp_path)
    assert [(b.section, b.line, b.path) for b in blocks("a.md")] == [("A", 3, "pkg/m.py"), ("B", 10, "pkg/m.py"),
                                                                      ("B", 15, None)]
    with pytest.raises(ValueError, match=r"pkg/m.py is written twice: docs/a.md:3 \(A\) and docs/a.md:10 \(B\)"):
        example_files(("a.md",))


def test_the_example_package_is_the_docs_code():
    files = _files()
    example = {p.relative_to(EXAMPLE).as_posix(): p.read_text() for p in EXAMPLE.rglob("*.py")}
    assert example.keys() == files.keys(), "examples/vlprompt_plugin_example holds other files than the docs"
    for path, block in files.items():
        assert example[path] == block.code, f"examples/vlprompt_plugin_example/{path} differs from {block.where}"
    # the entry point the docs show is the one the example's pyproject.toml declares
    shown = [b for b in section_blocks("architecture.md", "A plugin package, complete") if b.lang == "toml"]
    assert len(shown) == 1 and 'my_plugin = "my_plugin:register"' in shown[0].code
    assert shown[0].code in (EXAMPLE / "pyproject.toml").read_text()


# ------------------------------------------------------------------------------------ the package, installed
@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """An environment where the docs' blocks are an installed package (its entry point in a ``.dist-info``)."""
    tmp = tmp_path_factory.mktemp("docs_plugin")
    source = tmp / "source"
    write_files(_files(), source)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(EXAMPLE / name, source / name)
    site = tmp / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(source)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, _tail(out)
    info = [p.name for p in site.glob("*.dist-info")]
    assert info == ["vlprompt_plugin_example-0.1.0.dist-info"], info
    env = dict(os.environ)
    src = Path(vlprompt.__file__).resolve().parents[1]  # this vlprompt, not another installed one
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(src), env.get("PYTHONPATH", "")])
    return env


def _items(out: str, file: str, extension: str) -> set[tuple[str, str]]:
    """The ``(test, parameter id)`` items of ``file`` run for ``extension``, from the collected
    node ids (one a line) or from pytest's ``-rA`` ``PASSED`` lines (an id such as ``vlprompt-test-vit-gain`` joins the
    parameters with ``-``)."""
    found = re.findall(rf"^(?:PASSED )?{re.escape(file)}::(\w+)\[(.+)\]$", out, re.MULTILINE)
    return {(test, ids) for test, ids in found if extension in ids.split("-")}


#: a pytest plugin that writes every collected node id to $VLPROMPT_COLLECTED, before ``-k`` deselects any (tryfirst):
#: one pytest process both lists what is collected and runs the extensions' items (a --collect-only run less)
_COLLECTED_PLUGIN = """import os
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    with open(os.environ["VLPROMPT_COLLECTED"], "w") as out:
        out.writelines(item.nodeid + "\\n" for item in items)
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_contract_test_is_collected_for_the_docs_extensions_and_passes(plugin_env, tmp_path):
    (tmp_path / "collected_ids.py").write_text(_COLLECTED_PLUGIN)
    env = {**plugin_env, "PYTHONPATH": os.pathsep.join([str(tmp_path), plugin_env["PYTHONPATH"]]),
           "VLPROMPT_COLLECTED": str(tmp_path / "collected.txt")}
    # the project's addopts cleared: this output format and every contract test, whatever the defaults select
    base = [sys.executable, "-m", "pytest", *CONTRACTS, "-p", "no:cacheprovider", "-p", "collected_ids", "-o",
            "addopts=", "-q"]
    run = _run([*base, "-rA", "-k", " or ".join(new for new, _ in CONTRACTS.values())], env)
    assert run.returncode == 0, _tail(run)
    listing = (tmp_path / "collected.txt").read_text()
    for file, (new, builtin) in CONTRACTS.items():
        collected = _items(listing, file, new)
        reference = {test for test, _ in _items(listing, file, builtin)}
        assert reference, f"{file}: nothing collected for {builtin}"
        assert {test for test, _ in collected} == reference, f"{file}: {new} is not covered like {builtin}"
        assert _items(run.stdout, file, new) == collected, f"{file}[{new}]: not every test passed\n" + _tail(run)


@pytest.fixture(scope="module")
def tiny_pets(plugin_env, tmp_path_factory) -> str:
    """The docs' dataset's tiny tree (its registered builder, found through the entry point): its ``data.root``."""
    made = _run([sys.executable, "-c", "import sys; from pathlib import Path\n"
                 "from vlprompt.data.registry import get_dataset_info\n"
                 "print(get_dataset_info('tiny_pets').tiny_tree(Path(sys.argv[1])).root)",
                 str(tmp_path_factory.mktemp("tiny_pets"))], plugin_env)
    assert made.returncode == 0, _tail(made)
    return made.stdout.strip()


def _train_config(tmp_path: Path, root: str, **method: object) -> Path:
    """A config training the docs' method on the docs' dataset, 1 epoch on CPU."""
    raw = {"method": {"name": "gain", **method}, "backbone": {"model": "vlprompt-test-vit", "pretrained": None},
           "data": {"dataset": "tiny_pets", "root": root, "shots": 2, "num_workers": 0},
           "optim": {"max_epoch": 1, "batch_size": 2, "lr": 0.01},
           "train": {"output_dir": str(tmp_path / "run"), "device": "cpu", "progress": False, "tensorboard": False}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.subprocess
def test_vlprompt_train_runs_the_docs_method_on_the_docs_dataset_and_family(plugin_env, tiny_pets, tmp_path):
    cfg = _train_config(tmp_path, tiny_pets)
    out = _run([sys.executable, "-m", "vlprompt", "train", "-c", str(cfg), "--model", "toy:vlprompt-test-vit"],
               plugin_env)
    assert out.returncode == 0, _tail(out)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "gain" and metrics["dataset"] == "tiny_pets" and metrics["epochs"] == 1
    assert BackboneRecord.from_any(metrics["backbone"]) == BackboneRecord("toy", "vlprompt-test-vit", None)
    assert 0 <= metrics["test"]["accuracy"] <= 100 and len(metrics["history"]) == 1


@pytest.mark.slow
@pytest.mark.subprocess
def test_base2new_refuses_the_docs_method_made_class_specific_by_its_options(plugin_env, tiny_pets, tmp_path):
    cfg = _train_config(tmp_path, tiny_pets, class_gains=True)
    result = tmp_path / "b2n"
    out = _run([sys.executable, "-m", "vlprompt", "protocol", "base2new", "-c", str(cfg), "--seeds", "1", "-o",
                str(result)], plugin_env)
    assert out.returncode == 2, _tail(out)
    assert out.stderr.count("error:") == 1 and "'gain'" in out.stderr and "class-specific" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not result.exists() or not any(result.rglob("*")), "a run was trained before the refusal"


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("block", SNIPPETS, ids=[f"{b.doc}:{b.line}" for b in SNIPPETS])
def test_the_other_python_blocks_run_as_written(plugin_env, tmp_path, block):
    out = _run([sys.executable, "-c", block.code], plugin_env, cwd=tmp_path)
    assert out.returncode == 0, f"{block.where}\n" + _tail(out)


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_cli_lists_the_plugins_extensions(plugin_env):
    code = ("from vlprompt.backbones.base import backbone_families\n"
            "from vlprompt.cli.main import main\n"
            "assert main(['methods']) == 0 and main(['methods', 'gain']) == 0 and main(['datasets']) == 0\n"
            "print('families:', *sorted(backbone_families()))\n")  # what `vlprompt models` lists (slow: 9 s)
    out = _run([sys.executable, "-c", code], plugin_env)
    assert out.returncode == 0, _tail(out)
    assert re.search(r"^gain +trained ", out.stdout, re.MULTILINE), out.stdout  # the listing, then its options
    assert re.search(r"^  method\.init_gain = ", out.stdout, re.MULTILINE), out.stdout
    assert re.search(r"^  method\.class_gains = ", out.stdout, re.MULTILINE), out.stdout
    assert re.search(r"^tiny_pets$", out.stdout, re.MULTILINE), out.stdout
    assert re.search(r"^families: .*\btoy\b", out.stdout, re.MULTILINE), out.stdout
