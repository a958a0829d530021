"""Hostile-user cases of issue 20: silent corruption, stale caches, unrecoverable runs, raw tracebacks.

Each test names the issue group it covers (G1 ... G10); each failed on the code before the fix.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import vlprompt.engine.loop as loop_mod
import vlprompt.engine.trainer as trainer_mod
from vlprompt.cli.main import main
from vlprompt.config import config_from_dict, load_config
from vlprompt.core.errors import CheckpointError, ConfigError, DataError, VlpromptError
from vlprompt.engine.checkpoint import (
    list_checkpoints,
    read_prompt,
    read_safetensors,
    save_prompt,
    write_safetensors,
)

from conftest import tiny_config, write_config


# ------------------------------------------------------------------------------------ helpers
def _raw(tmp_path: Path, root: Path, name: str = "run", **sections) -> dict:
    """Tiny CoOp run on cached features (fast): 2 epochs unless told otherwise."""
    raw = tiny_config(tmp_path, root, optim={"max_epoch": 2}, data={"augment": False},
                      train={"output_dir": str(tmp_path / name)})
    for key, value in sections.items():
        raw[key] = {**raw[key], **value}
    return raw


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_imagefolder) -> Path:
    """A finished tiny run folder (prompt, checkpoints, metrics); copy it before changing anything."""
    tmp = tmp_path_factory.mktemp("finished")
    trainer_mod.train(config_from_dict(_raw(tmp, tiny_imagefolder)))
    return tmp / "run"


def _copy_run(finished: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


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


def _flip_tensor_bytes(path: Path, name: str, n: int = 3) -> None:
    """Change the lowest mantissa byte of ``n`` float32 values of tensor ``name`` (values stay finite)."""
    data = bytearray(path.read_bytes())
    hlen = int.from_bytes(data[:8], "little")
    start = 8 + hlen + json.loads(data[8:8 + hlen])[name]["data_offsets"][0]
    for i in range(n):
        data[start + 4 * i] ^= 0x01
    path.write_bytes(bytes(data))


def _image(root: Path) -> Path:
    return sorted((root / "test").rglob("*.png"))[0]


class _Stop(Exception):
    pass


def _train_then_stop(raw: dict, monkeypatch, after: int) -> None:
    original = loop_mod.save_training_state

    def save_then_stop(folder, epoch, *a, **k):
        path = original(folder, epoch, *a, **k)
        if epoch + 1 == after:
            raise _Stop()
        return path

    monkeypatch.setattr(loop_mod, "save_training_state", save_then_stop)
    with pytest.raises(_Stop):
        trainer_mod.train(config_from_dict(raw))
    monkeypatch.setattr(loop_mod, "save_training_state", original)


# ------------------------------------------------------------------------------------ G1 checksums, non-finite
def test_g1_flipped_bytes_in_the_newest_checkpoint_fall_back_to_the_previous(tmp_path, tiny_imagefolder,
                                                                             monkeypatch):
    raw = _raw(tmp_path, tiny_imagefolder, optim={"max_epoch": 3})
    _train_then_stop(raw, monkeypatch, after=2)
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    _flip_tensor_bytes(newest, "model.prompt_learner.ctx")
    with pytest.raises(CheckpointError, match="checksum"):
        read_safetensors(newest, what="checkpoint")
    trainer_mod.train(config_from_dict(raw), resume=True)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "checksum" in log and "resumed from epoch 1" in log


def test_g1_flipped_bytes_in_a_prompt_file_are_refused_by_predict_and_eval(tmp_path, finished, tiny_imagefolder,
                                                                           capsys):
    run = _copy_run(finished, tmp_path)
    _flip_tensor_bytes(run / "prompt.safetensors", "prompt_learner.ctx")
    line = _one_error_line(*_cli(capsys, "predict", _image(tiny_imagefolder), "-p", run / "prompt.safetensors",
                                 "--device", "cpu"))
    assert "checksum" in line and "prompt.safetensors" in line
    line = _one_error_line(*_cli(capsys, "eval", "--run", run, "--no-progress"))
    assert "checksum" in line


def _write_prompt_with(path: Path, finished: Path, ctx: torch.Tensor | None = None, **meta_changes) -> Path:
    """A copy of the finished run's prompt with other tensors / metadata, written with a valid checksum."""
    tensors, meta = read_prompt(finished / "prompt.safetensors")
    if ctx is not None:
        tensors["prompt_learner.ctx"] = ctx
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    from safetensors.torch import save

    from vlprompt.engine.checkpoint import tensor_checksum

    header = {"vlprompt": json.dumps(meta), "vlprompt_sha256": tensor_checksum(tensors)}
    path.write_bytes(save(tensors, metadata=header))
    return path


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_g1_non_finite_prompts_are_refused_by_predict_and_interpret(tmp_path, finished, tiny_imagefolder, capsys,
                                                                    bad):
    ctx = read_prompt(finished / "prompt.safetensors")[0]["prompt_learner.ctx"].clone()
    ctx[0, 0] = bad
    prompt = _write_prompt_with(tmp_path / "bad.safetensors", finished, ctx)
    line = _one_error_line(*_cli(capsys, "predict", _image(tiny_imagefolder), "-p", prompt, "--device", "cpu"))
    assert "non-finite" in line and "prompt_learner.ctx" in line
    line = _one_error_line(*_cli(capsys, "interpret", prompt))
    assert "non-finite" in line


def test_g1_non_finite_learned_tensors_are_never_written(tmp_path, vit_backbone):
    from vlprompt.methods.registry import build_method

    method = build_method("coop", vit_backbone, ["cat", "dog"], n_ctx=2)
    with torch.no_grad():
        method.ctx[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_prompt(tmp_path / "p.safetensors", method)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ G2 feature cache
def _encode(backbone, items, loader, disk_dir):
    from vlprompt.engine.features import encode_items

    return encode_items(backbone.encode_image, items, loader, backbone.eval_transform(), cache_owner=backbone,
                        disk_dir=disk_dir)[0]


def _fresh_process(monkeypatch, backbone) -> None:
    """Forget the features kept for the backbone, as a new process would."""
    from vlprompt.engine import features

    monkeypatch.delitem(features._MEMORY, backbone, raising=False)


def test_g2_feature_cache_follows_the_content_of_the_files(tmp_path, tiny_imagefolder, vit_backbone, monkeypatch):
    from vlprompt.data.registry import build_dataset

    root = tmp_path / "data"
    shutil.copytree(tiny_imagefolder, root)
    splits = build_dataset("imagefolder", str(root))
    items = splits.test
    red, green = Path(items[0].path), Path(next(d.path for d in items if d.label == 1))
    cache = tmp_path / "cache"
    _fresh_process(monkeypatch, vit_backbone)
    before = _encode(vit_backbone, items, splits.loader, cache)
    i, j = items.index(next(d for d in items if d.path == str(red))), items.index(
        next(d for d in items if d.path == str(green)))
    stat_r, stat_g = red.stat(), green.stat()
    a, b = red.read_bytes(), green.read_bytes()  # swap the contents, keep names and times
    red.write_bytes(b)
    green.write_bytes(a)
    os.utime(red, ns=(stat_r.st_atime_ns, stat_r.st_mtime_ns))
    os.utime(green, ns=(stat_g.st_atime_ns, stat_g.st_mtime_ns))
    for fresh in (True, False):  # the disk cache (new process) and the features kept on the backbone
        if fresh:
            _fresh_process(monkeypatch, vit_backbone)
        after = _encode(vit_backbone, items, splits.loader, cache)
        torch.testing.assert_close(after[i], before[j], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after[j], before[i], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(after[i], before[i])


def test_g2_an_unreadable_cache_entry_is_a_miss_with_one_warning(tmp_path, tiny_imagefolder, vit_backbone,
                                                                  monkeypatch, caplog):
    from vlprompt.data.registry import build_dataset

    splits = build_dataset("imagefolder", str(tiny_imagefolder))
    cache = tmp_path / "cache"
    _fresh_process(monkeypatch, vit_backbone)
    want = _encode(vit_backbone, splits.val, splits.loader, cache)
    (entry,) = list(cache.glob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            _fresh_process(monkeypatch, vit_backbone)
            torch.testing.assert_close(_encode(vit_backbone, splits.val, splits.loader, cache), want)
            entry.write_bytes(b"")
    warnings = [r for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(warnings) == 1 and str(entry) in warnings[0].getMessage()


# ------------------------------------------------------------------------------------ G3 / G10 YAML
def _bomb(depth: int) -> str:
    lines = ["data:", "  dataset: imagefolder", "  options:", "    a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for d in range(1, depth + 1):
        refs = ", ".join([f"*a{d - 1}"] * 9)
        lines.append(f"    a{d}: &a{d} [{refs}]")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _deadline(seconds: int):
    def fail(*_):
        raise AssertionError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_g3_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_bomb(9))
    assert len(cfg.read_bytes()) < 1000
    with _deadline(10):
        line = _one_error_line(*_cli(capsys, "train", "-c", cfg, "-o", tmp_path / "run"))
    assert "alias" in line and "bomb.yaml" in line
    assert not (tmp_path / "run").exists()


def test_g3_a_few_aliases_still_work(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("data:\n  dataset: imagefolder\n  options: &opts {template: 'a photo of a {}.'}\n"
                   "optim: {lr: &lr 0.01, warmup_lr: *lr}\n")
    assert load_config(cfg).optim.warmup_lr == 0.01


def test_g3_recursive_alias_is_refused(tmp_path):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("data:\n  dataset: imagefolder\n  options: &x {again: *x}\n")
    with _deadline(10), pytest.raises(ConfigError, match="alias"):
        load_config(cfg)


def test_g10_duplicate_yaml_keys_are_refused_naming_key_and_line(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("data:\n  dataset: imagefolder\noptim:\n  lr: 0.01\n  batch_size: 4\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml.*duplicate key 'lr' at line 6 \(first given at line 4\)"):
        load_config(cfg)
    cfg.write_text("optim: {lr: 0.01}\ndata: {dataset: imagefolder}\noptim: {lr: 0.5}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'optim' at line 3"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"--set data\.options.*duplicate key 'a'"):
        load_config(None, ["data.options={a: 1, a: 2}"])


# ------------------------------------------------------------------------------------ G4 NaN stop, resume
def test_g4_non_finite_weights_are_never_checkpointed_and_resume_accepts_a_lower_lr(tmp_path, tiny_imagefolder):
    # 12 training images in one batch: the single step of epoch 1 turns the context to inf
    raw = _raw(tmp_path, tiny_imagefolder, optim={"lr": 3e38, "warmup_epoch": 0, "batch_size": 12,
                                                  "max_epoch": 3})
    with pytest.raises(VlpromptError, match=r"non-finite.*epoch 1.*optim\.lr"):
        trainer_mod.train(config_from_dict(raw))
    for path in list_checkpoints(tmp_path / "run" / "checkpoints"):
        tensors, _ = read_safetensors(path)
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    raw["optim"].update(lr=0.01, max_epoch=2)
    metrics = trainer_mod.train(config_from_dict(raw), resume=True)
    assert len(metrics.history) == 2
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "optim.lr changed from 3e+38 to 0.01" in log and "optim.max_epoch changed from 3 to 2" in log
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optim"]["lr"] == 0.01


def test_g4_resume_with_a_changed_lr_continues_from_the_checkpoint(tmp_path, tiny_imagefolder, monkeypatch):
    raw = _raw(tmp_path, tiny_imagefolder, optim={"max_epoch": 3})
    _train_then_stop(raw, monkeypatch, after=2)
    raw["optim"]["lr"] = 0.005
    metrics = trainer_mod.train(config_from_dict(raw), resume=True)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "resumed from epoch 2" in log and "optim.lr changed from 0.01 to 0.005" in log
    assert len(metrics.history) == 3


@pytest.mark.parametrize("option", ["optim.lr=1e300", "optim.warmup_lr=1e39", "train.seed=99999999999999999999",
                                    "optim.batch_size=99999999999999999999"])
def test_g4_out_of_range_numbers_are_refused_by_validation(tmp_path, tiny_imagefolder, option):
    cfg = write_config(tmp_path / "c.yaml", **_raw(tmp_path, tiny_imagefolder))
    with pytest.raises(ConfigError, match=option.split("=")[0].replace(".", r"\.")):
        load_config(cfg, [option])


# ------------------------------------------------------------------------------------ G5 unwritable places
@contextlib.contextmanager
def _read_only(monkeypatch, folder: Path):
    """Every write below ``folder`` fails with EROFS, as on a read-only mount (the tests run as root)."""
    top = str(folder.resolve())
    real_open, real_mkdir, real_builtin_open = os.open, os.mkdir, builtins.open

    def inside(p) -> bool:
        return isinstance(p, (str, os.PathLike)) and os.path.abspath(os.fspath(p)).startswith(top)

    def erofs(p):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(p))

    def ro_open(p, flags, *a, **k):
        if inside(p) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            raise erofs(p)
        return real_open(p, flags, *a, **k)

    def ro_mkdir(p, *a, **k):
        if inside(p):
            if os.path.exists(p):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(p))
            raise erofs(p)
        return real_mkdir(p, *a, **k)

    def ro_builtin_open(p, mode="r", *a, **k):
        if inside(p) and any(c in mode for c in "wax+"):
            raise erofs(p)
        return real_builtin_open(p, mode, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    monkeypatch.setattr(builtins, "open", ro_builtin_open)
    try:
        yield
    finally:
        monkeypatch.setattr(os, "open", real_open)
        monkeypatch.setattr(os, "mkdir", real_mkdir)
        monkeypatch.setattr(builtins, "open", real_builtin_open)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["new run", "resume", "atomic write"])
def test_g5_read_only_filesystem_gives_one_error_line_and_keeps_files(tmp_path, finished, tiny_imagefolder,
                                                                      capsys, monkeypatch, case):
    run = _copy_run(finished, tmp_path)
    (run / "metrics.json").unlink()  # an unfinished run: --resume would train
    cfg = write_config(tmp_path / "c.yaml", **_raw(tmp_path, tiny_imagefolder))
    before = _snapshot(run)
    with _read_only(monkeypatch, tmp_path):
        if case == "new run":
            result = _cli(capsys, "train", "-c", cfg, "-o", tmp_path / "other")
        elif case == "resume":
            result = _cli(capsys, "train", "-c", cfg, "--resume")
        else:
            from vlprompt.core.io import atomic_write_text

            with pytest.raises(VlpromptError, match="read-only") as exc:
                atomic_write_text(run / "config.yaml", "x")
            result = (2, f"error: {exc.value}\n")
    line = _one_error_line(*result)
    assert "read-only" in line.lower()
    assert _snapshot(run) == before
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("case", ["output dir is a file", "parent is a file", "feature_cache_dir is a file"])
def test_g5_files_in_the_way_give_one_error_line(tmp_path, tiny_imagefolder, capsys, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    raw = _raw(tmp_path, tiny_imagefolder)
    if case == "output dir is a file":
        raw["train"]["output_dir"] = str(blocker)
    elif case == "parent is a file":
        raw["train"]["output_dir"] = str(blocker / "run")
    else:
        raw["data"]["feature_cache_dir"] = str(blocker)
    cfg = write_config(tmp_path / "c.yaml", **raw)
    line = _one_error_line(*_cli(capsys, "train", "-c", cfg))
    assert "blocker" in line
    assert blocker.read_text() == "not a folder"


# ------------------------------------------------------------------------------------ G6 sweeps
def _sweep_file(tmp_path: Path, **changes) -> Path:
    raw = {"name": "s", "methods": ["zeroshot"], "datasets": ["imagefolder"], "shots": [1], "seeds": [1, 2, 3],
           "set": ["data.root=/nowhere"], "output_dir": str(tmp_path / "out"), **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("error", [yaml.YAMLError("broken"), KeyError("x"), ZeroDivisionError(), AssertionError()])
def test_g6_one_failing_run_never_stops_the_sweep(tmp_path, monkeypatch, error):
    import vlprompt.tasks.sweep as sweep_mod

    ran = []

    def fake_run_seed(sw, cfg, folder, run_dir, dataset, shots, seed, train, *_):
        ran.append(seed)
        if seed == 1:
            raise error
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text("{}")

    monkeypatch.setattr(sweep_mod, "_run_seed", fake_run_seed)
    summary = sweep_mod.run_sweep(sweep_mod.load_sweep(_sweep_file(tmp_path)), progress=False, log=lambda m: None)
    assert ran == [1, 2, 3] and summary["done"] == 2 and len(summary["failed"]) == 1
    written = json.loads((tmp_path / "out" / "sweep_summary.json").read_text())
    assert written["failed"][0]["run"].endswith("seed 1")


def test_g6_sweep_summary_is_written_when_the_sweep_is_interrupted(tmp_path, monkeypatch):
    import vlprompt.tasks.sweep as sweep_mod

    def fake_run_seed(sw, cfg, folder, run_dir, dataset, shots, seed, train, *_):
        if seed == 2:
            raise KeyboardInterrupt
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text("{}")

    monkeypatch.setattr(sweep_mod, "_run_seed", fake_run_seed)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(sweep_mod.load_sweep(_sweep_file(tmp_path)), progress=False, log=lambda m: None)
    written = json.loads((tmp_path / "out" / "sweep_summary.json").read_text())
    assert written["done"] == 1 and written["interrupted"] is True


@pytest.mark.parametrize("changes, option", [({"shots": ["two"]}, "shots"), ({"seeds": [1.5]}, "seeds"),
                                             ({"output_dir": ["a", "b"]}, "output_dir"),
                                             ({"config": "cfg/{nope}.yaml"}, "config"),
                                             ({"name": {"a": 1}}, "name"),
                                             ({"targets": "imagenet"}, "targets"),
                                             ({"set": "optim.lr=1"}, "set"),
                                             ({"backbones": ["RN50"]}, "backbones")])
def test_g6_bad_values_in_the_sweep_file_give_one_error_line(tmp_path, capsys, changes, option):
    line = _one_error_line(*_cli(capsys, "sweep", _sweep_file(tmp_path, **changes), "--no-progress"))
    assert option in line and "sweep.yaml" in line


# ------------------------------------------------------------------------------------ G7 split files confined
def _fewshot_file(tmp_path: Path, root: Path, edit) -> Path:
    from vlprompt.data.fewshot import load_fewshot_json, save_fewshot_json
    from vlprompt.data.pipeline import prepare_data

    cfg = config_from_dict(_raw(tmp_path, root))
    prepare_data(cfg.data, seed=1, fewshot_path=tmp_path / "orig.json")
    train, val, meta = load_fewshot_json(tmp_path / "orig.json")
    edit(train)
    out = tmp_path / "edited.json"
    save_fewshot_json(out, (train, val), dataset="imagefolder", shots=4, seed=1, classnames=meta["classnames"])
    return out


def _prepare(tmp_path, root, fewshot: Path, **options):
    from vlprompt.data.pipeline import prepare_data

    cfg = config_from_dict(_raw(tmp_path, root, data={"fewshot_file": str(fewshot), "options": options}))
    return prepare_data(cfg.data, seed=1)


def test_g7_split_file_entries_outside_the_dataset_root_are_refused(tmp_path, tiny_imagefolder):
    from vlprompt.data.types import Datum

    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir()
    shutil.copy(_image(tiny_imagefolder), outside)

    def edit(train):
        train[0] = Datum(str(outside), train[0].label, train[0].classname)

    path = _fewshot_file(tmp_path, tiny_imagefolder, edit)
    with pytest.raises(DataError, match=r"outside.*data\.root.*allow_outside_root"):
        _prepare(tmp_path, tiny_imagefolder, path)
    data = _prepare(tmp_path, tiny_imagefolder, path, allow_outside_root=True)  # the explicit escape hatch
    assert data.train[0].path == str(outside)


def test_g7_test_images_are_refused_as_training_shots(tmp_path, tiny_imagefolder):
    from vlprompt.data.registry import build_dataset
    from vlprompt.data.types import Datum

    test = build_dataset("imagefolder", str(tiny_imagefolder)).test

    def edit(train):
        leak = next(d for d in test if d.label == train[0].label)
        train[0] = Datum(leak.path, leak.label, leak.classname)

    path = _fewshot_file(tmp_path, tiny_imagefolder, edit)
    for options in ({}, {"allow_outside_root": True}):
        with pytest.raises(DataError, match="test split"):
            _prepare(tmp_path, tiny_imagefolder, path, **options)


def test_g7_a_symlink_inside_the_root_that_leads_outside_is_refused(tmp_path):
    from vlprompt.data.registry import build_dataset

    from data_trees import make_csv_dataset

    root = make_csv_dataset(tmp_path / "csvdata", classes=("cat", "dog"), per_class=2)
    secret = tmp_path / "secret"
    secret.mkdir()
    target = next(root.rglob("*.png"))
    shutil.copy(target, secret / "x.png")
    target.unlink()
    target.symlink_to(secret / "x.png")
    with pytest.raises(DataError, match="outside"):
        build_dataset("csv", str(root))
    assert build_dataset("csv", str(root), allow_outside_root=True).train


# ------------------------------------------------------------------------------------ G8 run lock
@pytest.mark.slow
@pytest.mark.subprocess
def test_g8_run_lock_dies_with_its_process_even_with_forked_workers(tmp_path):
    from vlprompt.engine.run import RunLock

    lock = tmp_path / "run" / ".lock"
    code = ("import multiprocessing as mp, sys, time\n"
            "from pathlib import Path\n"
            "from vlprompt.engine.run import RunLock\n"
            f"RunLock(Path({str(lock)!r})).__enter__()\n"
            "worker = mp.get_context('fork').Process(target=time.sleep, args=(60,))\n"
            "worker.start()\n"
            "print(worker.pid, flush=True)\n"
            "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    worker = int(proc.stdout.readline())
    try:
        with pytest.raises(VlpromptError, match="in use"), RunLock(lock):
            pass
        proc.kill()
        proc.wait(timeout=30)
        with RunLock(lock):  # at once: the worker (still alive) does not hold it
            assert os.path.exists(f"/proc/{worker}") or sys.platform != "linux"
    finally:
        proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
        proc.stdout.close()


# ------------------------------------------------------------------------------------ G9 raw tracebacks
def test_g9_bad_command_line_values_give_one_error_line(tmp_path, tiny_imagefolder, finished, capsys):
    cfg = write_config(tmp_path / "c.yaml", **_raw(tmp_path, tiny_imagefolder))
    prompt, image = finished / "prompt.safetensors", _image(tiny_imagefolder)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = [
        (["train", "-c", cfg, "-o", str(tmp_path / "runs" / "{method.x}")], "output_dir"),
        (["train", "-c", cfg, "--seed", "99999999999999999999"], "train.seed"),
        (["predict", image, "-p", prompt, "--topk", "-3", "--device", "cpu"], "--topk"),
        (["predict", image, "-p", prompt, "--classnames", empty, "--device", "cpu"], "--classnames"),
        (["protocol", "base2new", "-c", cfg, "--seeds", "1,x"], "--seeds"),
        (["demo", "--shots", "a,b"], "--shots"),
    ]
    for argv, what in cases:
        line = _one_error_line(*_cli(capsys, *argv))
        assert what in line, (argv, line)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content", ["- a list\n- not a mapping\n", "method: {name: coop\n", ""])
def test_g9_bad_config_yaml_in_a_run_folder_gives_one_error_line(tmp_path, finished, tiny_imagefolder, capsys,
                                                                 content):
    run = _copy_run(finished, tmp_path)
    (run / "config.yaml").write_text(content)
    line = _one_error_line(*_cli(capsys, "eval", "--run", run, "--no-progress"))
    assert "config.yaml" in line
    (run / "metrics.json").unlink()
    cfg = write_config(tmp_path / "c.yaml", **_raw(tmp_path, tiny_imagefolder))
    if content:
        line = _one_error_line(*_cli(capsys, "train", "-c", cfg, "--resume"))
        assert "config.yaml" in line


@pytest.mark.parametrize("content", ["", "{\"method\": \"coop\", ", "[1, 2]", "{\"test\": 5}"])
def test_g9_corrupt_metrics_json_on_resume_finishes_the_run_again(tmp_path, finished, tiny_imagefolder, content):
    run = _copy_run(finished, tmp_path)
    (run / "metrics.json").write_text(content)
    metrics = trainer_mod.train(config_from_dict(_raw(tmp_path, tiny_imagefolder)), resume=True)
    assert metrics.test["accuracy"] == json.loads((finished / "metrics.json").read_text())["test"]["accuracy"]
    assert json.loads((run / "metrics.json").read_text())["test"] == metrics.test
    assert "metrics.json' is unreadable or not a run's metrics" in (run / "log.txt").read_text()


def test_g9_report_skips_malformed_metrics(tmp_path, finished, capsys):
    runs = tmp_path / "runs"
    good = runs / "coop" / "good"
    shutil.copytree(finished, good)
    bad = json.loads((finished / "metrics.json").read_text())
    bad["backbone"] = "ViT-B-16"
    (runs / "coop" / "string_backbone").mkdir(parents=True)
    (runs / "coop" / "string_backbone" / "metrics.json").write_text(json.dumps(bad))
    (runs / "coop" / "folder" / "metrics.json").mkdir(parents=True)
    (runs / "coop" / "list").mkdir()
    (runs / "coop" / "list" / "metrics.json").write_text("[1, 2]")
    code, err = _cli(capsys, "report", runs)
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("change, what", [({"method": None}, "method"), ({"backbone": "ViT-B-16"}, "backbone"),
                                          ({"classnames": []}, "classnames"), ({"config": [1]}, "config"),
                                          ({"classnames": "cat"}, "classnames")])
def test_g9_prompt_files_with_damaged_metadata_give_one_error_line(tmp_path, finished, tiny_imagefolder, capsys,
                                                                   change, what):
    prompt = _write_prompt_with(tmp_path / "p.safetensors", finished, **change)
    line = _one_error_line(*_cli(capsys, "predict", _image(tiny_imagefolder), "-p", prompt, "--device", "cpu"))
    assert what in line and "p.safetensors" in line


@pytest.mark.parametrize("ctx", [[0.1, 0.2], "text", torch.zeros(512), torch.zeros(2, 3, 4, 5)])
def test_g9_import_coop_with_a_malformed_ctx_gives_one_error_line(tmp_path, tiny_imagefolder, capsys, ctx):
    ckpt = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 1}, ckpt)
    cfg = write_config(tmp_path / "c.yaml", **_raw(tmp_path, tiny_imagefolder))
    line = _one_error_line(*_cli(capsys, "import-coop", ckpt, "-c", cfg, "-o", tmp_path / "p.safetensors"))
    assert "ctx" in line


@pytest.mark.parametrize("damage", ["metadata", "shape"])
def test_g9_resume_falls_back_past_a_readable_checkpoint_that_does_not_fit(tmp_path, tiny_imagefolder, monkeypatch,
                                                                         damage):
    raw = _raw(tmp_path, tiny_imagefolder, optim={"max_epoch": 3})
    _train_then_stop(raw, monkeypatch, after=2)
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    tensors, meta = read_safetensors(newest)
    if damage == "metadata":
        meta["param_groups"] = "damaged"
        meta.pop("rng_python")
    else:
        tensors["model.prompt_learner.ctx"] = torch.zeros(7, tensors["model.prompt_learner.ctx"].shape[-1])
    write_safetensors(newest, tensors, meta)
    metrics = trainer_mod.train(config_from_dict(raw), resume=True)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "skipping unusable checkpoint" in log and "resumed from epoch 1" in log
    assert len(metrics.history) == 3


# ------------------------------------------------------------------------------------ G10 minor
def test_g10_a_huge_error_message_is_capped(tmp_path, tiny_imagefolder, capsys):
    cfg = write_config(tmp_path / "c.yaml", **_raw(tmp_path, tiny_imagefolder))
    line = _one_error_line(*_cli(capsys, "train", "-c", cfg, "--set", "method.n_ctx=100000"))
    assert len(line) <= 1200 and "characters left out" in line


def test_g10_predict_device_error_names_the_option(tmp_path, finished, tiny_imagefolder, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _one_error_line(*_cli(capsys, "predict", _image(tiny_imagefolder), "-p", finished / "prompt.safetensors",
                                 "--device", "cuda"))
    assert "--device" in line and "train.device" not in line


def test_g10_import_coop_of_a_pickle_never_suggests_weights_only_false(tmp_path, tiny_imagefolder, capsys):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    evil = tmp_path / "evil.pth.tar-1"
    evil.write_bytes(pickle.dumps({"state_dict": {"ctx": Boom()}}, protocol=4))
    cfg = write_config(tmp_path / "c.yaml", **_raw(tmp_path, tiny_imagefolder))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _one_error_line(*_cli(capsys, "import-coop", evil, "-c", cfg, "-o", tmp_path / "p.safetensors"))
    assert "weights_only" not in line.replace("weights_only=True", "") and "False" not in line
    assert not [w for w in caught if "pickle" in str(w.message)]
    assert not (tmp_path / "PWNED").exists()


def test_g10_a_failed_fresh_run_says_what_its_folder_holds(tmp_path, tiny_imagefolder, capsys):
    cfg = write_config(tmp_path / "c.yaml", **_raw(tmp_path, tiny_imagefolder))
    line = _one_error_line(*_cli(capsys, "train", "-c", cfg, "--set", "method.n_ctx=100"))
    assert "no checkpoint" in line and str(tmp_path / "run") in line
    raw = _raw(tmp_path, tiny_imagefolder)
    trainer_mod.train(config_from_dict(raw))  # the same folder starts afresh without --resume


def test_a_run_saved_by_an_older_release_still_resumes(tmp_path, finished, tiny_imagefolder):
    """Its config.yaml lacks options added since (data.fewshot_sampler) and uses renamed ones
    (train.precision): resolved with this release's defaults it is the same config, so --resume goes on."""
    import yaml

    run = _copy_run(finished, tmp_path)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"].pop("fewshot_sampler")
    saved["train"]["precision"] = saved["train"].pop("compute_precision")
    saved["backbone"]["precision"] = saved["backbone"].pop("weight_dtype")
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    metrics = trainer_mod.train(config_from_dict(_raw(tmp_path, tiny_imagefolder)), resume=True)
    assert metrics.test == json.loads((finished / "metrics.json").read_text())["test"]
    changed = _raw(tmp_path, tiny_imagefolder, data={"augment": True})
    with pytest.raises(VlpromptError, match="differs in data.augment"):
        trainer_mod.train(config_from_dict(changed), resume=True)
