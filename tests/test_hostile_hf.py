"""Hostile Hugging Face model folders (``--model hf:<dir>``), issue 25 items 1, 4, 9 and 14.

A model folder is data, never code: custom code (``auto_map``) is refused before transformers sees the
folder, nothing is read from standard input, pickled weights are never unpickled, and every damaged or
malformed file ends in one ``error:`` line naming the file and what to do. Each test failed on the code
before the fix.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from vlprompt.backbones.hf import load_hf_backbone  # noqa: E402
from vlprompt.backbones.hf_convert import save_open_clip_as_hf  # noqa: E402
from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.cli.main import main  # noqa: E402
from vlprompt.core.errors import ModelError  # noqa: E402

from conftest import tiny_config, write_config  # noqa: E402


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


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A good tiny CLIPModel folder (the tiny open_clip ViT saved with save_pretrained); copy before changing."""
    oc = load_backbone("vlprompt-test-vit")
    directory = tmp_path_factory.mktemp("hf_clip_good")
    save_open_clip_as_hf(oc.model, str(directory), oc.preprocess_cfg)
    return directory


def _copy(clip_dir: Path, tmp_path: Path, name: str = "model") -> Path:
    dst = tmp_path / name
    shutil.copytree(clip_dir, dst)
    return dst


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _zeroshot(capsys, tmp_path: Path, root: Path, folder: Path) -> tuple[int, str]:
    cfg = write_config(tmp_path / "cfg.yaml", **tiny_config(tmp_path, root))
    return _cli(capsys, "zeroshot", "-c", cfg, "--model", f"hf:{folder}")


_CUSTOM_CODE = """\
import pathlib
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer


class EvilConfig(CLIPConfig):
    model_type = {model_type!r}


class EvilModel(CLIPModel):
    config_class = EvilConfig


class EvilTokenizer(CLIPTokenizer):
    pass
"""


def _with_custom_code(folder: Path, marker: Path, *, model_type: str = "evilclip", where: str = "config.json") -> None:
    """Make ``folder`` name its own Python file (``custom.py``, which writes ``marker``) in ``auto_map``."""
    (folder / "custom.py").write_text(_CUSTOM_CODE.format(marker=str(marker), model_type=model_type))
    if where == "config.json":
        def change(c: dict) -> None:
            c["model_type"] = model_type
            c["auto_map"] = {"AutoConfig": "custom.EvilConfig", "AutoModel": "custom.EvilModel"}
    else:
        def change(c: dict) -> None:
            c["auto_map"] = {"AutoTokenizer": ["custom.EvilTokenizer", None]}
    _edit_json(folder / where, change)


# ------------------------------------------------------------------------------------ item 1
@pytest.mark.slow
@pytest.mark.subprocess
def test_r3_1_custom_code_never_runs_and_stdin_is_never_read(clip_dir, tmp_path, tiny_imagefolder):
    """Driven from a script whose stdin says "y": the folder's code must not run, nothing is read."""
    folder = _copy(clip_dir, tmp_path)
    marker = tmp_path / "MARKER"
    _with_custom_code(folder, marker)
    cfg = write_config(tmp_path / "cfg.yaml", **tiny_config(tmp_path, tiny_imagefolder))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, "-m", "vlprompt.cli.main", "zeroshot", "-c", str(cfg),
                          "--model", f"hf:{folder}"], input="y\ny\n", capture_output=True, text=True,
                         timeout=300, env=env)
    assert not marker.exists(), "code from the model folder ran"
    assert "[y/N]" not in out.stdout + out.stderr
    line = _one_error_line(out.returncode, out.stderr)
    assert "auto_map" in line and "config.json" in line and str(folder) in line


@pytest.mark.parametrize("model_type, where", [("evilclip", "config.json"), ("clip", "config.json"),
                                                ("clip", "tokenizer_config.json")])
def test_r3_1_custom_code_is_refused_without_asking(clip_dir, tmp_path, tiny_imagefolder, capsys, monkeypatch,
                                                    model_type, where):
    folder = _copy(clip_dir, tmp_path)
    marker = tmp_path / "MARKER"
    _with_custom_code(folder, marker, model_type=model_type, where=where)

    asked: list[tuple] = []

    def no_input(*args: Any) -> str:
        asked.append(args)
        raise AssertionError(f"vlprompt asked on standard input: {args}")

    monkeypatch.setattr(builtins, "input", no_input)
    line = _one_error_line(*_zeroshot(capsys, tmp_path, tiny_imagefolder, folder))
    assert not asked, "a question was put on standard input"
    assert not marker.exists()
    assert "auto_map" in line and where in line and "custom.Evil" in line


def test_r3_1_every_transformers_load_passes_trust_remote_code_false(clip_dir, monkeypatch):
    """AutoConfig / AutoModel / AutoTokenizer are each called with trust_remote_code=False, never None."""
    import transformers

    calls: list[tuple[str, dict]] = []
    for name in ("AutoConfig", "AutoModel", "AutoTokenizer", "AutoProcessor", "AutoImageProcessor"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append((_name, dict(kwargs)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_hf_backbone(str(clip_dir))
    assert {name for name, _ in calls} >= {"AutoConfig", "AutoModel", "AutoTokenizer"}
    for name, kwargs in calls:
        assert kwargs.get("trust_remote_code") is False, (name, kwargs)
        assert kwargs.get("local_files_only") is True, (name, kwargs)


# ------------------------------------------------------------------------------------ item 4
@pytest.mark.parametrize("remove, named", [
    (("tokenizer.json", "tokenizer_config.json"), "tokenizer.json"),
    (("tokenizer.json",), "tokenizer.json"),
])
def test_r3_4_folder_without_tokenizer_files_is_refused(clip_dir, tmp_path, tiny_imagefolder, capsys, remove, named):
    folder = _copy(clip_dir, tmp_path)
    for name in remove:
        (folder / name).unlink()
    line = _one_error_line(*_zeroshot(capsys, tmp_path, tiny_imagefolder, folder))
    assert named in line and "vocab.json" in line and "tokenizer" in line and str(folder) in line


def test_r3_4_slow_tokenizer_vocab_without_merges_is_refused(clip_dir, tmp_path):
    """A CLIP BPE vocabulary (vocab.json) without its merges.txt is not a tokenizer: name the missing file."""
    folder = _copy(clip_dir, tmp_path)
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(ModelError, match="has vocab.json but not merges.txt"):
        load_hf_backbone(str(folder))


# ------------------------------------------------------------------------------------ item 9
@pytest.mark.parametrize("change", [
    {"crop_size": {"height": 100000, "width": 100000}},
    {"do_center_crop": False, "size": {"height": 100000, "width": 100000}},
    {"do_center_crop": False, "size": {"shortest_edge": 100000}},
    {"max_num_patches": 10**10, "patch_size": 8},
], ids=["crop", "height-width", "shortest-edge", "max-num-patches"])
def test_r3_9_huge_preprocessor_image_size_is_refused(clip_dir, tmp_path, tiny_imagefolder, capsys, change):
    folder = _copy(clip_dir, tmp_path)
    _edit_json(folder / "preprocessor_config.json", lambda c: c.update(change))
    # refused when loading, before any image is resized (the unbounded size used to allocate ~30 GB per image)
    with pytest.raises(ModelError, match="preprocessor_config.json"):
        load_hf_backbone(str(folder))
    line = _one_error_line(*_zeroshot(capsys, tmp_path, tiny_imagefolder, folder))
    assert "preprocessor_config.json" in line and str(folder) in line and "pixels" in line


# ------------------------------------------------------------------------------------ item 14
def _set(path: str, value: Any):
    def change(c: dict) -> None:
        *head, last = path.split(".")
        for key in head:
            c = c[key]
        c[last] = value
    return change


@pytest.mark.slow
@pytest.mark.parametrize("content, expected", [
    ('{"model_type": "clip", ', "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (_set("text_config.hidden_size", "32"), "hidden_size"),
    (_set("projection_dim", "big"), "projection_dim"),
    (_set("vision_config.image_size", "x"), "image_size"),
    (_set("model_type", None), "model_type"),
    (_set("model_type", "bert"), "'bert'"),
], ids=["invalid-json", "array", "hidden-size-str", "projection-dim-str", "image-size-str", "no-model-type",
        "bert"])
def test_r3_14_malformed_config_json_gives_one_error_line(clip_dir, tmp_path, tiny_imagefolder, capsys, content,
                                                          expected):
    folder = _copy(clip_dir, tmp_path)
    if isinstance(content, str):
        (folder / "config.json").write_text(content)
    else:
        _edit_json(folder / "config.json", content)
    line = _one_error_line(*_zeroshot(capsys, tmp_path, tiny_imagefolder, folder))
    assert "config.json" in line and expected in line and str(folder) in line
    assert "not available locally" not in line


@pytest.mark.parametrize("change", [
    _set("model_type", "siglip"),  # a SigLIP config over CLIP weights
    _set("vision_config.num_hidden_layers", 1),  # weights of a second layer left unused
    _set("text_config.num_hidden_layers", -1),
], ids=["siglip-over-clip", "fewer-layers", "negative-layers"])
def test_r3_14_weights_that_do_not_fit_config_are_refused(clip_dir, tmp_path, tiny_imagefolder, capsys, change):
    """A mismatched model type / architecture used to load with random or missing weights (or a raw RuntimeError)."""
    folder = _copy(clip_dir, tmp_path)
    _edit_json(folder / "config.json", change)
    line = _one_error_line(*_zeroshot(capsys, tmp_path, tiny_imagefolder, folder))
    assert "model.safetensors" in line and "config.json" in line and str(folder) in line


def test_r3_14_truncated_safetensors_is_refused(clip_dir, tmp_path, tiny_imagefolder, capsys):
    folder = _copy(clip_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = _one_error_line(*_zeroshot(capsys, tmp_path, tiny_imagefolder, folder))
    assert str(weights) in line and ("incomplete" in line or "damaged" in line)


class _Evil:
    """A pickle whose loading would create a marker file (what a hostile pytorch_model.bin does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("hostile", [True, False], ids=["malicious", "plain-tensors"])
def test_r3_14_pickled_weights_are_never_unpickled(clip_dir, tmp_path, tiny_imagefolder, capsys, monkeypatch,
                                                   hostile):
    from safetensors.torch import load_file

    folder = _copy(clip_dir, tmp_path)
    marker = tmp_path / "PICKLE_RAN"
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if hostile:
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Evil(marker), **state}))
    else:
        torch.save(state, folder / "pytorch_model.bin")

    def no_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load was called on a model folder's file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    line = _one_error_line(*_zeroshot(capsys, tmp_path, tiny_imagefolder, folder))
    assert not marker.exists()
    assert "pytorch_model.bin" in line and "safetensors" in line and str(folder) in line


@pytest.mark.parametrize("content, expected", [
    ("{oops", "not valid JSON"),
    ("[]", "not a JSON object"),
    ({"crop_size": "big"}, "crop_size"),
    ({"do_center_crop": False, "size": 0}, "size"),
    ({"do_center_crop": False, "size": {"height": 0, "width": 32}}, "size"),
    ({"crop_size": {"height": 0, "width": 0}}, "crop_size"),
    ({"image_std": [0, 0, 0]}, "image_std"),
    ({"image_std": [0.5, float("nan"), 0.5]}, "image_std"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"image_mean": "grey"}, "image_mean"),
    ({"resample": "bicubic"}, "resample"),
    ({"crop_size": {"height": 64, "width": 64}}, "image_size"),  # the model's position embeddings take 32 x 32
], ids=["invalid-json", "array", "crop-str", "size-0", "height-0", "crop-0", "std-0", "std-nan", "mean-2",
        "mean-str", "resample-str", "crop-vs-model"])
def test_r3_14_malformed_preprocessor_config_gives_one_error_line(clip_dir, tmp_path, tiny_imagefolder, capsys,
                                                                  content, expected):
    folder = _copy(clip_dir, tmp_path)
    file = folder / "preprocessor_config.json"
    if isinstance(content, str):
        file.write_text(content)
    else:
        _edit_json(file, lambda c: c.update(content))
    line = _one_error_line(*_zeroshot(capsys, tmp_path, tiny_imagefolder, folder))
    assert "preprocessor_config.json" in line and expected in line and str(folder) in line


def test_r3_14_missing_preprocessor_config_warns_once_naming_the_default(clip_dir, tmp_path, caplog):
    folder = _copy(clip_dir, tmp_path)
    (folder / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.WARNING):
        bb = load_hf_backbone(str(folder))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    (text,) = warnings
    assert text.startswith("warning: ") and "\n" not in text
    assert "preprocessor_config.json" in text and str(folder) in text
    assert "32" in text and "bicubic" in text and "mean" in text  # what is used instead
    assert bb.preprocess_cfg["size"] == 32


def test_r3_14_good_folder_still_loads_quietly(clip_dir, capsys, caplog):
    """The checks refuse nothing a save_pretrained folder holds, and loading prints no progress bar."""
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        bb = load_hf_backbone(str(clip_dir))
    assert bb.model_type == "clip" and bb.preprocess_cfg["size"] == (32, 32)
    assert capsys.readouterr().err == ""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------ open_clip's HF towers
def _evil_hf_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A folder whose config.json maps Auto classes onto its own evil.py (an unknown model_type, so
    transformers would ask [y/N]); importing evil.py creates the marker file."""
    folder = tmp_path / "evil_hf"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "vlprompt_evil_type",
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def test_r3_1_open_clip_hf_text_tower_never_runs_folder_code(tmp_path, monkeypatch):
    """An open_clip config whose Hugging Face text tower / tokenizer is a folder with custom code is refused
    before open_clip builds it: nothing asked on stdin, no code run."""
    import open_clip

    folder, marker = _evil_hf_folder(tmp_path)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "vlprompt-evil-hf.json").write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16},
        "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_pooler_type": "mean_pooler",
                     "hf_model_pretrained": False}}))
    open_clip.add_model_config(configs)

    def no_input(*_a: Any) -> str:
        raise AssertionError("vlprompt asked a question on standard input")

    monkeypatch.setattr(builtins, "input", no_input)
    try:
        with pytest.raises(ModelError, match="auto_map"):
            load_backbone("vlprompt-evil-hf")
    finally:  # the model catalog of later tests must not list it
        open_clip.factory._MODEL_CONFIG_PATHS.remove(configs)
        open_clip.factory._MODEL_CONFIGS.pop("vlprompt-evil-hf", None)
    assert not marker.exists()


def test_r3_1_transformers_refuses_custom_code_without_asking_after_the_guard(tmp_path, monkeypatch):
    """For calls vlprompt does not make itself (open_clip's, on a hub id not yet cached) transformers is set to
    refuse custom code at once instead of asking on stdin."""
    from transformers import AutoConfig

    from vlprompt.backbones.hf_folder import never_ask_for_remote_code

    folder, marker = _evil_hf_folder(tmp_path)
    asked = []
    monkeypatch.setattr(builtins, "input", lambda *a: asked.append(a) or "y")
    monkeypatch.setattr("transformers.dynamic_module_utils.TIME_OUT_REMOTE_CODE", 15)
    never_ask_for_remote_code()
    with pytest.raises(Exception):  # noqa: B017 - transformers' own ValueError / timeout error
        AutoConfig.from_pretrained(str(folder))
    assert not asked and not marker.exists()
