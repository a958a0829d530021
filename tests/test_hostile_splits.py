"""Hostile-user cases of issue 25 (reliability round three): reference split pickles, few-shot files and
image listing.

Items covered: 2 (a test image matched by its tail to the train image of the same name), 7 (``import-split``
writing over its own input), 8 (a FIFO named ``*.png`` blocking a listing / load forever) and 11 (few-shot
files with no training images or nested too deeply). Every test failed on the code before the fix.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vlprompt.cli.main import main
from vlprompt.config import DataConfig
from vlprompt.core.errors import DataError
from vlprompt.data.fewshot import load_fewshot_json, save_fewshot_json
from vlprompt.data.pipeline import load_dataset, prepare_data
from vlprompt.data.registry import build_dataset

from conftest import tiny_config, write_config
from data_trees import make_csv_dataset, write_class_images

OLD_ROOT = "/home/kaiyang/data"  # where the authors' run kept its data
CLASSES = ("cat", "dog")
FIFO_TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------------ helpers
def _cli(capsys, *argv: Any) -> tuple[int, str]:
    """Run the CLI in-process; (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def dassl_datum(monkeypatch):
    """A class pickled as ``dassl.data.datasets.base_dataset.Datum`` with Dassl's four attributes."""
    names = ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__, Datum.__qualname__ = names[-1], "Datum"
    sys.modules[names[-1]].Datum = Datum  # type: ignore[attr-defined]
    return Datum


def _write_pickle(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def _same_names_tree(root: Path, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """An ImageFolder tree whose splits use the SAME file names: ``<split>/<class>/img_000.png`` ..."""
    for split in splits:
        for ci, name in enumerate(CLASSES):
            write_class_images(root / split / name, ci + (3 if split == "test" else 0), 2, ext=".png")
    return root


def _old(root: Path, path: str) -> str:
    """``path`` (under ``root``) as the authors' machine spelled it: ``/home/kaiyang/data/<root name>/...``."""
    return f"{OLD_ROOT}/{root.name}/{Path(path).relative_to(root).as_posix()}"


def _in_thread(fn: Callable[[], Any], fifos: list[Path]) -> Any:
    """``fn()`` in a daemon thread; fails (instead of hanging the suite) if it does not end in time.

    A thread stuck opening one of ``fifos`` for reading is released by opening the FIFO for writing.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(FIFO_TIMEOUT_S)
    if thread.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"still blocked after {FIFO_TIMEOUT_S:.0f} s: a FIFO was opened as an image")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ------------------------------------------------------------------ 2. test images as training images
@pytest.mark.slow
def test_r3_2_a_test_image_is_not_matched_to_the_train_image_of_the_same_name(tmp_path, dassl_datum, capsys):
    root = _same_names_tree(tmp_path / "pets")
    ds = build_dataset("imagefolder", str(root))
    test_img = ds.test[0]
    twin = root / "train" / Path(test_img.path).relative_to(root / "test")
    assert twin.is_file()  # train/<class>/<i>.png exists: its last two path parts equal the test image's
    pkl = _write_pickle(tmp_path / "shot_1-seed_1.pkl", {
        "train": [dassl_datum(_old(root, test_img.path), test_img.label, 0, test_img.classname)], "val": []})
    out = tmp_path / "fewshot.json"
    line = _one_error_line(*_cli(capsys, "import-split", pkl, "--dataset", "imagefolder", "--root", root, "-o", out))
    assert "shot_1-seed_1.pkl" in line and "item #0" in line and "test" in line and test_img.path in line, line
    assert not out.exists()
    cfg = DataConfig(dataset="imagefolder", root=str(root), shots=1, fewshot_file=str(pkl))
    with pytest.raises(DataError, match=r"item #0 .* test split"):
        prepare_data(cfg, seed=1)


def test_r3_2_a_split_folder_that_disagrees_is_refused(tmp_path, dassl_datum):
    """The pickle's ``val/<class>/<i>.png`` is not this dataset's ``train/<class>/<i>.png`` (no val folder here)."""
    root = _same_names_tree(tmp_path / "pets")
    ds = build_dataset("imagefolder", str(root))
    d = ds.train[0]
    meant = _old(root, d.path).replace("/train/", "/val/")
    pkl = _write_pickle(tmp_path / "split.pkl", {"train": [dassl_datum(meant, d.label, 0, d.classname)], "val": []})
    cfg = DataConfig(dataset="imagefolder", root=str(root), shots=1, fewshot_file=str(pkl))
    with pytest.raises(DataError, match=r"item #0 .*'val'.*'train'"):
        prepare_data(cfg, seed=1)


def test_r3_2_legitimate_split_paths_still_match(tmp_path, dassl_datum):
    """Another machine's root, or a Windows spelling, still finds the train image (guard for the fix)."""
    root = _same_names_tree(tmp_path / "pets")
    ds = build_dataset("imagefolder", str(root))
    train = [ds.train[0], ds.train[-1]]
    rel = Path(train[1].path).relative_to(root).as_posix()
    paths = [_old(root, train[0].path), "C:\\Users\\me\\DATA\\pets\\" + rel.replace("/", "\\")]
    pkl = _write_pickle(tmp_path / "ok.pkl", {
        "train": [dassl_datum(p, d.label, 0, d.classname) for p, d in zip(paths, train)], "val": []})
    cfg = DataConfig(dataset="imagefolder", root=str(root), shots=1, fewshot_file=str(pkl))
    assert prepare_data(cfg, seed=1).train == train


# ------------------------------------------------------------------ 7. import-split over its own input
@pytest.mark.parametrize("spelling", ["same", "dot-dot", "symlink"])
def test_r3_7_import_split_refuses_to_write_over_its_input(tmp_path, dassl_datum, capsys, spelling):
    root = _same_names_tree(tmp_path / "pets")
    ds = build_dataset("imagefolder", str(root))
    d = ds.train[0]
    pkl = _write_pickle(tmp_path / "splits" / "shot_1-seed_1.pkl",
                        {"train": [dassl_datum(_old(root, d.path), d.label, 0, d.classname)], "val": []})
    before = pkl.read_bytes()
    out: Path | str = pkl
    if spelling == "dot-dot":
        out = f"{tmp_path}/splits/../splits/./shot_1-seed_1.pkl"
    elif spelling == "symlink":
        out = tmp_path / "link.pkl"
        out.symlink_to(pkl)
    line = _one_error_line(*_cli(capsys, "import-split", pkl, "--dataset", "imagefolder", "--root", root, "-o", out))
    assert "shot_1-seed_1.pkl" in line and "-o" in line, line
    assert pkl.read_bytes() == before
    if spelling == "symlink":
        assert Path(out).is_symlink()
    assert [p.name for p in pkl.parent.iterdir()] == [pkl.name]  # no temporary file left


# ------------------------------------------------------------------ 8. FIFOs named *.png
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


@needs_fifo
def test_r3_8_a_fifo_in_a_folder_given_to_predict_is_skipped(tmp_path, vit_backbone, capsys):
    from vlprompt.engine.checkpoint import save_prompt
    from vlprompt.methods.registry import build_method

    torch.manual_seed(0)
    prompt = save_prompt(tmp_path / "prompt.safetensors", build_method("coop", vit_backbone, list(CLASSES), n_ctx=4))
    folder = tmp_path / "images"
    (real,) = write_class_images(folder, 0, 1, ext=".png")
    fifo = folder / "stuck.png"
    os.mkfifo(fifo)
    capsys.readouterr()
    code = _in_thread(lambda: main(["predict", str(folder), "-p", str(prompt), "--device", "cpu"]), [fifo])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert str(real) in out and "stuck.png" not in out
    # named on its own, it is refused as not a regular file (not 'does not exist')
    line = _one_error_line(*_in_thread(lambda: _cli(capsys, "predict", fifo, "-p", prompt, "--device", "cpu"),
                                       [fifo]))
    assert "stuck.png" in line and "not a regular file" in line, line


@needs_fifo
def test_r3_8_a_fifo_in_a_dataset_root_never_blocks(tmp_path):
    # ImageFolder lists class folders recursively: the FIFO must not become an image of the dataset
    root = _same_names_tree(tmp_path / "pets")
    fifo = root / "train" / "cat" / "stuck.png"
    os.mkfifo(fifo)
    ds = build_dataset("imagefolder", str(root))
    assert str(fifo) not in {d.path for d in ds.train}
    # a CSV dataset that names a FIFO: loading it is a DataError, also while dropping bad images
    csv_root = make_csv_dataset(tmp_path / "csv", classes=CLASSES, per_class=2)
    listed = next((csv_root / "images").rglob("*.png"))
    listed.unlink()
    os.mkfifo(listed)
    splits = build_dataset("csv", str(csv_root))
    with pytest.raises(DataError, match="not a regular file"):
        _in_thread(lambda: splits.loader(str(listed)), [listed])
    report: list[dict[str, str]] = []
    cfg = DataConfig(dataset="csv", root=str(csv_root), on_bad_image="skip")
    kept = _in_thread(lambda: load_dataset(cfg, report=report), [listed])
    assert [r["path"] for r in report] == [str(listed)] and "not a regular file" in report[0]["error"]
    assert str(listed) not in {d.path for d in (*kept.train, *kept.test)}


# ------------------------------------------------------------------ 11. few-shot files
def test_r3_11_import_split_with_no_training_images_is_refused(tmp_path, dassl_datum, capsys):
    root = _same_names_tree(tmp_path / "pets")
    pkl = _write_pickle(tmp_path / "shot_1-seed_1.pkl", {"train": [], "val": []})
    out = tmp_path / "fewshot.json"
    line = _one_error_line(*_cli(capsys, "import-split", pkl, "--dataset", "imagefolder", "--root", root, "-o", out))
    assert "shot_1-seed_1.pkl" in line and "no training images" in line, line
    assert not out.exists()
    cfg = DataConfig(dataset="imagefolder", root=str(root), shots=1, fewshot_file=str(pkl))
    with pytest.raises(DataError, match=r"shot_1-seed_1\.pkl.*no training images"):
        prepare_data(cfg, seed=1)


def _train_cli(capsys, tmp_path: Path, root: Path, fewshot_file: Path) -> str:
    raw = tiny_config(tmp_path, root, optim={"max_epoch": 1}, data={"augment": False})
    cfg = write_config(tmp_path / "cfg.yaml", **raw)
    return _one_error_line(*_cli(capsys, "train", "-c", cfg, "--set", f"data.fewshot_file={fewshot_file}"))


def test_r3_11_training_on_a_fewshot_json_with_no_training_images_is_refused(tmp_path, capsys):
    root = _same_names_tree(tmp_path / "pets")
    empty = tmp_path / "empty.json"
    save_fewshot_json(empty, ([], []), dataset="imagefolder", shots=1, seed=1, classnames=list(CLASSES))
    line = _train_cli(capsys, tmp_path, root, empty)
    assert "empty.json" in line and "no training images" in line, line


def test_r3_11_a_deeply_nested_fewshot_json_is_refused(tmp_path, capsys):
    root = _same_names_tree(tmp_path / "pets")
    deep = tmp_path / "deep.json"
    depth = 100_000
    deep.write_text('{"format": "vlprompt-fewshot", "version": 1, "train": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(DataError, match=r"deep\.json.*nested too deeply"):
        load_fewshot_json(deep)
    line = _train_cli(capsys, tmp_path, root, deep)
    assert "deep.json" in line and "nested too deeply" in line, line
