"""Issue 25 (reliability round three), exported classifiers and `vlprompt predict`: damaged exported files
(weights, metadata), class names that do not fit the graph, a full disk during ONNX export, exported files
given to eval / ood / interpret, duplicate and very many class names, and what `predict --help` says.

Each test is named after the issue item it covers (``test_r3_<item>_...``); each failed on the code before
the fix (the regression guards say so in their docstring).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.cli.main import main  # noqa: E402
from vlprompt.engine.checkpoint import save_prompt  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402
from vlprompt.tasks.export import export_classifier  # noqa: E402

from conftest import tiny_config, write_config  # noqa: E402

CLASSES = ["red thing", "green thing", "blue thing"]


# ------------------------------------------------------------------------------------ helpers
def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI in-process; (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A unified CoOp prompt of the tiny ViT (3 classes), its ONNX and TorchScript exports, two images; and what
    the ONNX export did in the folder: the files it fsynced and the files it left (one ONNX export serves both)."""
    root = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    method = build_method("coop", load_backbone("vlprompt-test-vit"), CLASSES).eval()
    save_prompt(root / "prompt.safetensors", method)
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    before = set(os.listdir(root))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", spy)
        export_classifier(method, root / "clf.onnx", fmt="onnx")
    onnx_left = sorted(set(os.listdir(root)) - before)
    export_classifier(method, root / "clf.pt", fmt="torchscript")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(((40, 50), (64, 64))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return {"root": root, "prompt": root / "prompt.safetensors", "onnx": root / "clf.onnx",
            "torchscript": root / "clf.pt", "images": [root / "img0.png", root / "img1.png"],
            "onnx_fsynced": synced, "onnx_left": onnx_left}


def _copy(exported: dict, fmt: str, tmp_path: Path) -> Path:
    src = exported[fmt]
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    return dst


def _predict(capsys, model: Path, exported: dict) -> tuple[int, str]:
    return _cli(capsys, "predict", *exported["images"], "--prompt", model)


def _edit_onnx(path: Path, *, meta: str | None = None, drop_checksum: bool = False, nan_weights: bool = False) -> None:
    """Rewrite an exported ONNX file: its ``vlprompt`` metadata text, without its checksum (as exports written
    before checksums existed), and / or its largest weight set to NaN."""
    model = onnx.load(str(path))
    props = [(p.key, p.value) for p in model.metadata_props]
    if meta is not None:
        props = [(k, meta if k == "vlprompt" else v) for k, v in props]
    if drop_checksum:
        props = [(k, v) for k, v in props if "sha256" not in k]
    del model.metadata_props[:]
    for k, v in props:
        model.metadata_props.add(key=k, value=v)
    if nan_weights:
        init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        values = onnx.numpy_helper.to_array(init)
        init.CopyFrom(onnx.numpy_helper.from_array(np.full_like(values, np.nan), init.name))
    onnx.save(model, str(path))


def _edit_torchscript(path: Path, *, meta: str | None = None, drop_checksum: bool = False,
                      nan_weights: bool = False) -> None:
    """Rewrite an exported TorchScript archive (valid CRC-32s): its ``vlprompt.json``, without its checksum,
    and / or with NaN in the middle of its largest tensor."""
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    largest = max((i for i, _ in entries if "/data/" in i.filename), key=lambda i: i.file_size).filename
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info, data in entries:
            if drop_checksum and "sha256" in info.filename:
                continue
            if meta is not None and info.filename.endswith("extra/vlprompt.json"):
                data = meta.encode()
            if nan_weights and info.filename == largest:
                values = np.frombuffer(data, dtype=np.float32).copy()
                values[len(values) // 2:] = np.nan
                data = values.tobytes()
            out.writestr(info, data)
    path.write_bytes(buf.getvalue())


def _edit_meta(path: Path, fmt: str, meta: str) -> None:
    (_edit_onnx if fmt == "onnx" else _edit_torchscript)(path, meta=meta)


def _meta(path: Path, fmt: str) -> dict:
    if fmt == "onnx":
        return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["vlprompt"])
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(next(n for n in z.namelist() if n.endswith("extra/vlprompt.json"))))


def _flip_weight_bytes(path: Path, fmt: str) -> None:
    """Turn a run of float32 values in the middle of the largest weight tensor into NaN (bytes flipped on disk)."""
    data = bytearray(path.read_bytes())
    if fmt == "onnx":
        payload = max(onnx.load(str(path)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    else:
        with zipfile.ZipFile(path) as z:
            name = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename
            payload = z.read(name)
    offset = bytes(data).find(payload)
    assert offset > 0 and len(payload) > 1024
    middle = offset + len(payload) // 2 // 4 * 4
    for k in range(0, 256, 4):
        data[middle + k + 2], data[middle + k + 3] = 0xC0, 0x7F
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ item 5
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_r3_5_flipped_weight_bytes_are_refused(exported, tmp_path, capsys, fmt):
    model = _copy(exported, fmt, tmp_path)
    _flip_weight_bytes(model, fmt)
    line = _one_error_line(*_predict(capsys, model, exported))
    assert f"exported file '{model}' is corrupted" in line and "checksum" in line, line


@pytest.mark.slow
def test_r3_5_torchscript_weights_changed_with_valid_crc_are_refused(exported, tmp_path, capsys):
    """A TorchScript archive rewritten with other weights (each entry's CRC-32 recomputed): the SHA-256 in its
    metadata no longer matches."""
    model = _copy(exported, "torchscript", tmp_path)
    _edit_torchscript(model, nan_weights=True)
    line = _one_error_line(*_predict(capsys, model, exported))
    assert f"exported file '{model}' is corrupted: its code and weights do not match their checksum" in line, line


@pytest.mark.slow
def test_r3_5_onnx_external_data_is_checked_and_no_temporary_file_is_left(tmp_path, capsys, monkeypatch):
    """A model exported with its weights in a second file (as models over 1.5 GB are): both files in place,
    nothing else; a flipped byte in the weights file is refused."""
    import vlprompt.tasks.export as export_mod

    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)
    torch.manual_seed(0)
    method = build_method("coop", load_backbone("vlprompt-test-vit"), CLASSES).eval()
    out = tmp_path / "out" / "m.onnx"
    info = export_classifier(method, out, fmt="onnx")  # checks the written files against vlprompt's logits
    assert info["external_data"] == "m.onnx.data"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    assert _cli(capsys, "predict", image, "--prompt", out)[0] == 0
    data = bytearray((out.parent / "m.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0x40
    (out.parent / "m.onnx.data").write_bytes(bytes(data))
    line = _one_error_line(*_cli(capsys, "predict", image, "--prompt", out))
    assert f"exported file '{out}' is corrupted" in line, line


def test_r3_5_non_finite_logits_are_refused(exported, tmp_path, capsys):
    """An export without a checksum (as written before checksums existed) whose weights are NaN: predict
    refuses its NaN logits instead of printing nan probabilities."""
    model = _copy(exported, "onnx", tmp_path)
    _edit_onnx(model, drop_checksum=True, nan_weights=True)
    line = _one_error_line(*_predict(capsys, model, exported))
    assert "non-finite" in line and str(model) in line and "img0.png" in line, line


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_r3_5_exports_carry_a_checksum_and_old_exports_still_load(exported, tmp_path, capsys, fmt):
    """Regression guard for the checksum: new files carry it; files without one (written by the release
    before it) still load, with the same predictions."""
    if fmt == "onnx":
        keys = {p.key for p in onnx.load(str(exported[fmt])).metadata_props}
    else:
        keys = set(zipfile.ZipFile(exported[fmt]).namelist())
    assert any("vlprompt_sha256" in k for k in keys), keys
    capsys.readouterr()
    assert main(["predict", *map(str, exported["images"]), "--prompt", str(exported[fmt])]) == 0
    new = capsys.readouterr().out
    old = _copy(exported, fmt, tmp_path)
    (_edit_onnx if fmt == "onnx" else _edit_torchscript)(old, drop_checksum=True)
    assert main(["predict", *map(str, exported["images"]), "--prompt", str(old)]) == 0
    assert capsys.readouterr().out == new and "nan" not in new


# ------------------------------------------------------------------------------------ item 6
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("n_names", [5, 2])
def test_r3_6_class_names_must_match_the_output_width(exported, tmp_path, capsys, fmt, n_names):
    model = _copy(exported, fmt, tmp_path)
    meta = _meta(model, fmt)
    meta["classnames"] = [f"class {i}" for i in range(n_names)]
    _edit_meta(model, fmt, json.dumps(meta))
    line = _one_error_line(*_predict(capsys, model, exported))
    assert f"{n_names} class names" in line and "3 logits" in line and str(model) in line, line


# ------------------------------------------------------------------------------------ item 12
class _FullDiskFile:
    """A file whose writes store half the bytes, then fail as on a full disk."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        self._f.write(bytes(memoryview(data)[: len(data) // 2]))
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _disk_full_below(monkeypatch, folder: Path) -> None:
    """Every file opened for writing below ``folder`` (open, io.open, os.fdopen) fails with ENOSPC on write."""
    top = str(folder.resolve())
    real_open, real_fdopen = builtins.open, os.fdopen

    def inside(p) -> bool:
        return isinstance(p, (str, os.PathLike)) and os.path.abspath(os.fspath(p)).startswith(top)

    def full_open(p, mode="r", *a, **k):
        f = real_open(p, mode, *a, **k)
        return _FullDiskFile(f) if inside(p) and any(c in mode for c in "wax+") else f

    def full_fdopen(fd, mode="r", *a, **k):
        f = real_fdopen(fd, mode, *a, **k)
        where = os.readlink(f"/proc/self/fd/{fd}") if isinstance(fd, int) else None
        return _FullDiskFile(f) if inside(where) and any(c in mode for c in "wax+") else f

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)
    monkeypatch.setattr(os, "fdopen", full_fdopen)


@pytest.mark.slow
def test_r3_12_disk_full_during_onnx_export(exported, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "model.onnx"
    shutil.copyfile(exported["onnx"], earlier)  # an earlier export of the same name
    before = earlier.read_bytes()
    _disk_full_below(monkeypatch, out)
    line = _one_error_line(*_cli(capsys, "export", exported["prompt"], "--format", "onnx", "-o", earlier))
    monkeypatch.undo()
    assert f"could not write '{earlier}'" in line and "No space left on device" in line, line
    assert "earlier files are intact" in line and "disk is full" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # no temporary file left behind
    assert earlier.read_bytes() == before


def test_r3_12_onnx_export_is_fsynced_before_the_rename(exported):
    """The ONNX file is written to a temporary file in the output folder, fsynced, then renamed (the module's
    export of clf.onnx, with os.fsync spied on, in the `exported` fixture)."""
    root, synced = exported["root"], exported["onnx_fsynced"]
    assert any(Path(p).parent == root and Path(p).name.startswith(".clf.onnx.") for p in synced), synced
    assert exported["onnx_left"] == ["clf.onnx"]


# ------------------------------------------------------------------------------------ item 13
def _damage(meta: dict, how: str) -> str:
    meta = json.loads(json.dumps(meta))
    if how == "classnames missing":
        del meta["classnames"]
    elif how == "input missing":
        del meta["input"]
    elif how == "version abc":
        meta["version"] = "abc"
    elif how == "not JSON":
        return '{"format": "vlprompt-classifier", '
    elif how == "a list":
        return json.dumps([meta])
    elif how == "size changed":
        meta["preprocess"]["size"] = 48
    elif how == "size 0":
        meta["preprocess"]["size"] = 0
    elif how == "preprocess not a mapping":
        meta["preprocess"] = "bicubic"
    return json.dumps(meta)


@pytest.mark.parametrize("fmt, how", [
    *[("onnx", h) for h in ("classnames missing", "input missing", "version abc", "not JSON", "a list",
                            "size changed", "size 0", "preprocess not a mapping")],
    *[("torchscript", h) for h in ("classnames missing", "version abc", "not JSON", "a list", "size changed")],
])
def test_r3_13_damaged_metadata_is_one_error_line(exported, tmp_path, capsys, fmt, how):
    model = _copy(exported, fmt, tmp_path)
    _edit_meta(model, fmt, _damage(_meta(model, fmt), how))
    line = _one_error_line(*_predict(capsys, model, exported))
    assert str(model) in line and "metadata" in line and "export" in line, line


# ------------------------------------------------------------------------------------ smaller (messages)
@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory, tiny_imagefolder) -> Path:
    tmp = tmp_path_factory.mktemp("cfg")
    return write_config(tmp / "cfg.yaml", **tiny_config(tmp, tiny_imagefolder))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("command", ["eval", "ood", "interpret"])
def test_r3_msg_exported_file_given_to_eval_ood_interpret_points_to_predict(exported, tiny_cfg, tiny_imagefolder,
                                                                           capsys, fmt, command):
    model = exported[fmt]
    argv = {"eval": ["eval", "--config", tiny_cfg, "--prompt", model],
            "ood": ["ood", "--config", tiny_cfg, "--prompt", model, "--ood-sets", tiny_imagefolder],
            "interpret": ["interpret", model]}[command]
    line = _one_error_line(*_cli(capsys, *argv))
    assert "exported classifier" in line and f"vlprompt predict IMAGES --prompt {model}" in line, line
    assert "safetensors file (" not in line


def test_r3_msg_duplicate_class_names_are_refused(exported, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n\n  cat \nbird\ndog\n", encoding="utf-8")
    line = _one_error_line(*_cli(capsys, "predict", exported["images"][0], "--prompt", exported["prompt"],
                                 "--classnames", names, "--device", "cpu"))
    assert f"'{names}'" in line and "'cat'" in line and "lines 1 and 4" in line and "'dog'" in line, line


def _names(n: int) -> list[str]:
    """``n`` distinct, varied made-up class names of one to three words."""
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "ter", "ban", "qu", "zor", "el", "fin", "gra", "pho", "stri", "ven", "dul"]
    out: dict[str, None] = {}
    while len(out) < n:
        words = ["".join(rng.choice(syllables, rng.integers(1, 5))) for _ in range(rng.integers(1, 4))]
        out[" ".join(words)] = None
    return list(out)


@pytest.mark.slow
def test_r3_msg_many_class_names_are_encoded_in_batches_with_progress(exported, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(_names(5000)) + "\n", encoding="utf-8")
    capsys.readouterr()
    code = main(["predict", str(exported["images"][0]), "--prompt", str(exported["prompt"]), "--classnames",
                 str(names), "--device", "cpu", "--topk", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "class texts" in err and "5000/5000" in err, err  # a progress bar over the class names
    assert out.count("(") == 3


@pytest.mark.slow
def test_r3_msg_class_texts_in_batches_equal_one_pass(exported, monkeypatch):
    """Text features computed in batches of classes give the predictions of one pass over all classes."""
    import vlprompt.tasks.api as api

    names = _names(300)
    images = [str(p) for p in exported["images"]]
    one = api.predict(exported["prompt"], images, topk=5, classnames=names, device="cpu", progress=False)
    monkeypatch.setattr(api, "CLASS_CHUNK", 64)
    batched = api.predict(exported["prompt"], images, topk=5, classnames=names, device="cpu", progress=False)
    for a, b in zip(one, batched):
        assert [c for c, _ in a["top"]] == [c for c, _ in b["top"]]
        assert [p for _, p in a["top"]] == pytest.approx([p for _, p in b["top"]], abs=1e-6)


def test_r3_msg_predict_help_says_torchscript_runs_code(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "TorchScript" in text and "runs code" in text and "load only files you exported" in text, text
