"""Reading the reference's pickled splits safely (issue 18): CoOp's ``split_fewshot/shot_K-seed_S.pkl``,
ImageNet's ``preprocessed.pkl``, ``vlprompt import-split`` and ``data.fewshot_file: <pkl>``.

The pickles are written the way the reference writes them: ``pickle.dump({"train": [...], "val": [...]},
protocol=pickle.HIGHEST_PROTOCOL)`` of Dassl ``Datum`` objects (CoOp ``datasets/oxford_pets.py`` L46-49,
``datasets/imagenet.py`` L37-39, L53-56). Dassl is not installed here, so a module of the same name
holds a class with Datum's name and attributes (``dassl/data/datasets/base_dataset.py`` L12-29): the
pickle bytes are what Dassl's class produces (module + name + state dict).
"""

from __future__ import annotations

import os
import pickle
import pickletools
import sys
import types
from pathlib import Path

import pytest

from vlprompt.cli.main import main
from vlprompt.config import DataConfig
from vlprompt.core.errors import DataError
from vlprompt.data.fewshot import load_fewshot_json
from vlprompt.data.pipeline import prepare_data
from vlprompt.data.reference_splits import read_reference_pickle
from vlprompt.data.registry import build_dataset

from coop_reference import as_items, build_tree, coop_read, reference_run

OLD_ROOT = "/home/someone/DATA"  # where the reference run kept its data: paths are remapped


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


def _pickle_items(datum_cls, items, root: Path) -> list:
    return [datum_cls(OLD_ROOT + p[len(str(root)):], y, 0, c) for p, y, c in items]


def _write(path: Path, obj, protocol=pickle.HIGHEST_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_pickle_is_what_dassl_writes(tmp_path, dassl_datum):
    data = pickle.dumps({"train": [dassl_datum("/x/a.jpg", 1, 0, "a")]}, protocol=pickle.HIGHEST_PROTOCOL)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ("SHORT_BINUNICODE", "dassl.data.datasets.base_dataset") in ops
    assert ("STACK_GLOBAL", None) in ops and ("NEWOBJ", None) in ops and ("BUILD", None) in ops


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("subsample", ["all", "base", "new"])
def test_fewshot_pickle_gives_reference_images(tmp_path, dassl_datum, protocol, subsample):
    root = tmp_path / "data"
    build_tree(root, "oxford_pets", "shuffled")
    ref_train, ref_val = reference_run(root, "oxford_pets", seed=2, shots=4, subsample="all")
    pkl = _write(tmp_path / "split_fewshot" / "shot_4-seed_2.pkl",
                 {"train": _pickle_items(dassl_datum, ref_train, root),
                  "val": _pickle_items(dassl_datum, ref_val, root)}, protocol)
    cfg = DataConfig(dataset="oxford_pets", root=str(root), shots=4, fewshot_file=str(pkl),
                     subsample_classes=subsample)
    data = prepare_data(cfg, seed=99)  # the file decides, not the seed
    want_train, want_val = reference_run(root, "oxford_pets", seed=2, shots=4, subsample=subsample)
    assert as_items(data.train) == want_train and as_items(data.val) == want_val


def test_import_split_cli(tmp_path, dassl_datum, capsys):
    root = tmp_path / "data"
    build_tree(root, "dtd", "shuffled")
    ref_train, ref_val = reference_run(root, "dtd", seed=3, shots=2, subsample="all")
    pkl = _write(tmp_path / "shot_2-seed_3.pkl", {"train": _pickle_items(dassl_datum, ref_train, root),
                                                  "val": _pickle_items(dassl_datum, ref_val, root)})
    out = tmp_path / "fewshot.json"
    assert main(["import-split", str(pkl), "--dataset", "dtd", "--root", str(root), "-o", str(out)]) == 0
    assert "data.fewshot_file" in capsys.readouterr().out
    train, val, meta = load_fewshot_json(out)
    assert as_items(train) == ref_train and as_items(val) == ref_val
    assert (meta["dataset"], meta["shots"], meta["seed"]) == ("dtd", 2, 3)
    # the JSON works as data.fewshot_file for a base-to-new run too (subsampled like the reference)
    cfg = DataConfig(dataset="dtd", root=str(root), fewshot_file=str(out), subsample_classes="new")
    want = reference_run(root, "dtd", seed=3, shots=2, subsample="new")
    assert (as_items(prepare_data(cfg, seed=0).train), as_items(prepare_data(cfg, seed=0).val)) == want
    # an image of another split (test) or of other data is refused, exit 2 with one error line
    bad = _write(tmp_path / "bad.pkl", {"train": [dassl_datum(OLD_ROOT + "/dtd/images/nope/x.jpg", 0, 0, "x")],
                                        "val": []})
    assert main(["import-split", str(bad), "--dataset", "dtd", "--root", str(root), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.pkl" in err and "not an image of this dataset's train split" in err


def test_imagenet_pickles(tmp_path, dassl_datum):
    """preprocessed.pkl fixes the listing order; ImageNet's split pickle has train only, val = test."""
    root = tmp_path / "data"
    build_tree(root, "imagenet", "listdir")
    ds_dir = root / "imagenet"
    train, _, test = (sorted(x) for x in coop_read(root, "imagenet"))
    train = train[::-1]  # an order no file system gives here: only the pickle can produce it
    _write(ds_dir / "preprocessed.pkl", {"train": _pickle_items(dassl_datum, train, root),
                                         "test": _pickle_items(dassl_datum, test, root)})
    full = build_dataset("imagenet", str(root), order="preprocessed")
    assert as_items(full.train) == train and as_items(full.test) == test and full.val == full.test
    cfg = DataConfig(dataset="imagenet", root=str(root), shots=1, fewshot_file=str(ds_dir / "preprocessed.pkl"))
    with pytest.raises(DataError, match="it is ImageNet's preprocessed.pkl .* data.options.order: preprocessed"):
        prepare_data(cfg, seed=1)
    pkl = _write(tmp_path / "shot_1-seed_1.pkl", {"train": _pickle_items(dassl_datum, train[:4], root)})
    cfg = DataConfig(dataset="imagenet", root=str(root), shots=1, fewshot_file=str(pkl))
    data = prepare_data(cfg, seed=1)
    assert as_items(data.train) == train[:4] and data.val == full.test


# ------------------------------------------------------------------ refusing anything else
class _Payload:
    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "exec":
            return (exec, (f"open({str(self.marker)!r}, 'w').close()",))
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["system", "exec", "method"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, dassl_datum, how):
    marker = tmp_path / "PWNED"
    pkl = _write(tmp_path / "shot_1-seed_1.pkl",
                 {"train": [dassl_datum("/a/b/c.jpg", 0, 0, "a"), _Payload(marker, how)], "val": []})
    with pytest.raises(DataError, match=r"shot_1-seed_1\.pkl' was refused: it contains the global '.*'"):
        read_reference_pickle(pkl)
    root = tmp_path / "data"
    build_tree(root, "eurosat", "sorted")
    cfg = DataConfig(dataset="eurosat", root=str(root), fewshot_file=str(pkl))
    with pytest.raises(DataError, match="was refused"):
        prepare_data(cfg, seed=1)
    assert main(["import-split", str(pkl), "--dataset", "eurosat", "--root", str(root),
                 "-o", str(tmp_path / "o.json")]) == 2
    assert not marker.exists()
    assert not (tmp_path / "o.json").exists()


def test_datum_called_with_arguments_is_refused(tmp_path, dassl_datum):
    """REDUCE on the allowed class (Dassl never writes it) must not construct anything."""

    class Sneaky:
        def __reduce__(self):
            return (dassl_datum, ("/etc/passwd", 0, 0, "x"))

    pkl = _write(tmp_path / "s.pkl", {"train": [Sneaky()], "val": []})
    with pytest.raises(DataError, match=r"s\.pkl' is not a readable pickle"):
        read_reference_pickle(pkl)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_reference_pickle(tmp_path / "missing.pkl")
    (tmp_path / "t.pkl").write_text("hello")
    with pytest.raises(DataError, match=r"t\.pkl' is not a readable pickle"):
        read_reference_pickle(tmp_path / "t.pkl")
    (tmp_path / "l.pkl").write_bytes(pickle.dumps([1, 2]))
    root = tmp_path / "data"
    build_tree(root, "eurosat", "sorted")
    cfg = DataConfig(dataset="eurosat", root=str(root), fewshot_file=str(tmp_path / "l.pkl"))
    with pytest.raises(DataError, match=r"l\.pkl' holds a list, not the dict of CoOp's splits"):
        prepare_data(cfg, seed=1)


def test_matching_pickled_paths(tmp_path, dassl_datum):
    """Paths saved on another machine (even Windows) are found by their tail; wrong labels are refused."""
    root = tmp_path / "data"
    build_tree(root, "caltech101", "sorted")
    ds = build_dataset("caltech101", str(root))
    first = ds.train[0]
    rel = first.path[len(str(root)) + 1:]
    win = "C:\\Users\\me\\DATA\\" + rel.replace("/", "\\")
    ok = _write(tmp_path / "ok.pkl", {"train": [dassl_datum(win, first.label, 0, first.classname)], "val": []})
    cfg = DataConfig(dataset="caltech101", root=str(root), fewshot_file=str(ok))
    assert prepare_data(cfg, seed=1).train == [first]
    wrong = _write(tmp_path / "wrong.pkl",
                   {"train": [dassl_datum(win, first.label + 1, 0, first.classname)], "val": []})
    cfg.fewshot_file = str(wrong)
    with pytest.raises(DataError, match=r"has label 1 .* labels that image 0"):
        prepare_data(cfg, seed=1)
    test_img = ds.test[0].path
    leak = _write(tmp_path / "leak.pkl",
                  {"train": [dassl_datum(test_img, ds.test[0].label, 0, ds.test[0].classname)], "val": []})
    cfg.fewshot_file = str(leak)
    with pytest.raises(DataError, match="is not an image of this dataset's train split"):
        prepare_data(cfg, seed=1)
