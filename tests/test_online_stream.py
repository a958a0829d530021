"""Online test-time adaptation made reproducible (issue 28 §1): the stream's state round trip, mid-stream
checkpoints resumed after an exception and after a real SIGKILL, ``--orders N`` (mean ± std over seeded orders),
and the streaming API ``vlprompt.online`` giving the protocol's predictions. The online method is
``cache_probe`` (tests/online_probe.py), whose every prediction depends on the images before it."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import online_probe
import vlprompt
from vlprompt.config import config_from_dict
from vlprompt.core.errors import CheckpointError, ConfigError
from vlprompt.data.test_time_views import views_for
from vlprompt.engine.test_time import StreamCheckpoint, TestTimeAdapter, adapt_stream
from vlprompt.methods.registry import build_method
from vlprompt.tasks.test_time import order_seeds, tta

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def cache_probe(monkeypatch):
    from vlprompt.methods import registry

    registry.list_methods()
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    return online_probe.register()


def _cfg_dict(root, method, out=None):
    return {"method": method, "backbone": {"model": "vlprompt-test-vit", "pretrained": None},
            "data": {"dataset": "imagefolder", "root": str(root), "num_workers": 0},
            "train": {"device": "cpu", "progress": False, "tensorboard": False}}


def _stream(tiny_backbone_vit, tiny_imagefolder):
    from vlprompt.data.pipeline import load_dataset

    splits = load_dataset(config_from_dict(_cfg_dict(tiny_imagefolder, {"name": "zeroshot"})).data)
    method = build_method(online_probe.NAME, tiny_backbone_vit, list(splits.classnames))
    return method, splits


@pytest.fixture
def vit(vit_backbone):
    return vit_backbone


def test_adapter_state_round_trip_continues_the_stream_exactly(cache_probe, vit, tiny_imagefolder, tmp_path):
    """Half a stream, the adapter's state saved (file) and loaded into a fresh method: the second half's logits
    equal the uninterrupted stream's; the position and the cost carry over; the state is really needed (a fresh
    adapter without it predicts differently)."""
    method, splits = _stream(vit, tiny_imagefolder)
    views = views_for(vit, n_views=2, augmix=True, seed=0)
    images = [splits.loader(item.path) for item in splits.test]
    whole = TestTimeAdapter(method, views).predict(images)
    first = TestTimeAdapter(method, views)
    head = first.predict(images[:7])
    first.save(tmp_path / "state.safetensors")
    fresh, _ = _stream(vit, tiny_imagefolder)
    resumed = TestTimeAdapter(fresh, views)
    resumed.load(tmp_path / "state.safetensors")
    assert resumed.position == 7 and resumed.totals["image_forward"] == 14
    tail = resumed.predict(images[7:])
    torch.testing.assert_close(torch.cat([head, tail]), whole, rtol=0, atol=0)
    blank, _ = _stream(vit, tiny_imagefolder)
    cold = TestTimeAdapter(blank, views)
    cold.position = 7  # same views as the resumed adapter, but an empty cache
    assert not torch.equal(cold.predict(images[7:]), tail)
    assert resumed.cost_per_image()["image_forward"] == 2.0 and fresh.adaptation_size() == len(images)


def test_adapter_refuses_states_that_do_not_fit(cache_probe, vit, tiny_imagefolder, tmp_path):
    method, splits = _stream(vit, tiny_imagefolder)
    adapter = TestTimeAdapter(method, views_for(vit, n_views=2, augmix=False, seed=0))
    adapter.save(tmp_path / "s.safetensors")
    other = build_method(online_probe.NAME, vit, ["x", "y"])
    with pytest.raises(CheckpointError, match="cache_probe"):
        TestTimeAdapter(other).load(tmp_path / "s.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        adapter.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="PIL"):  # 2 augmented views cannot be made from a tensor
        adapter.predict(torch.zeros(1, 3, vit.image_size, vit.image_size))


def test_checkpointed_stream_resumes_after_an_exception(cache_probe, vit, tiny_imagefolder, tmp_path, monkeypatch):
    """A stream checkpointed every 4 images dies at image 10; run again it resumes at 8 and ends with the
    uninterrupted stream's logits (another order's folder is refused)."""
    method, splits = _stream(vit, tiny_imagefolder)
    views = views_for(vit, n_views=2, augmix=True, seed=3)
    ref = adapt_stream(method, splits.test, splits.loader, views, order_seed=5)
    ckpt = StreamCheckpoint(tmp_path / "stream", "fp")
    real = TestTimeAdapter.step
    calls = {"n": 0}

    def dying(self, image_views):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(self, image_views)

    monkeypatch.setattr(TestTimeAdapter, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        adapt_stream(method, splits.test, splits.loader, views, order_seed=5, checkpoint=ckpt, save_every=4)
    monkeypatch.setattr(TestTimeAdapter, "step", real)
    assert sorted(p.name for p in (tmp_path / "stream").iterdir()) == [
        "chunk-00000000-00000004.safetensors", "chunk-00000004-00000008.safetensors", "state.safetensors"]
    out = adapt_stream(method, splits.test, splits.loader, views, order_seed=5, checkpoint=ckpt, save_every=4)
    assert out.resumed_at == 8 and out.order == ref.order
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    assert out.cost == ref.cost and out.cache_size == ref.cache_size == len(splits.test)
    with pytest.raises(CheckpointError, match="another run"):
        adapt_stream(method, splits.test, splits.loader, views, order_seed=6, checkpoint=ckpt)


@pytest.mark.slow
def test_orders_report_mean_and_std_over_seeded_orders(cache_probe, tiny_imagefolder, tmp_path):
    """--orders 3: the online method runs three seeded orders (each as a single-order run would), the row holds
    their mean ± pstdev, the table shows it; zero-shot (order-free) runs once."""
    assert order_seeds(1, None) == [None] and order_seeds(3, None) == [0, 1, 2] and order_seeds(2, 7) == [7, 8]
    cfg = config_from_dict(_cfg_dict(tiny_imagefolder, {"name": cache_probe}))
    many = tta(cfg, "imagefolder", tmp_path / "many", n_views=2, orders=3, order_seed=4)
    row = many["per_target"]["imagefolder"]
    assert row["orders_run"] == 3 and row["order_seeds"] == [4, 5, 6]
    singles = [tta(cfg, "imagefolder", tmp_path / f"one{s}", n_views=2, order_seed=s)["per_target"]["imagefolder"]
               for s in (4, 5, 6)]
    assert row["accuracy_by_order"] == [s["accuracy"] for s in singles]
    assert row["accuracy"] == pytest.approx(statistics.fmean(s["accuracy"] for s in singles))
    assert row["accuracy_std"] == pytest.approx(statistics.pstdev(s["accuracy"] for s in singles))
    assert row["ece_std"] == pytest.approx(statistics.pstdev(s["ece"] for s in singles))
    assert row["cache_size"] == 18 and f"{row['accuracy']:.2f} ± {row['accuracy_std']:.2f}" in many["table"]
    preds = json.loads((tmp_path / "many" / "tta_targets" / "imagefolder.predictions.json").read_text())
    assert [o["order_seed"] for o in preds["by_order"]] == [4, 5, 6]
    assert not (tmp_path / "many" / "tta_targets" / "imagefolder.stream").exists()  # cleaned once finished
    from vlprompt.report.build import make_report

    report = make_report(tmp_path / "many", tmp_path / "many_report")
    cell = report["tta"][f"{cache_probe}|vlprompt-test-vit"]["imagefolder"]
    assert cell["accuracy"]["std"] == pytest.approx(row["accuracy_std"])  # over the 3 orders of the one run
    md = (tmp_path / "many_report" / "report.md").read_text()
    assert "1 x 3 orders" in md
    from vlprompt.report.collect import collect_tta
    from vlprompt.report.tables import _order_spread

    (runs,) = collect_tta(tmp_path / "many", [], None).values()
    assert _order_spread([runs]) == f" ± {statistics.pstdev(row['accuracy_by_order']):.2f}"
    zs = tta(config_from_dict(_cfg_dict(tiny_imagefolder, {"name": "zeroshot"})), "imagefolder", tmp_path / "zs",
             orders=3)["per_target"]["imagefolder"]
    assert zs["orders_run"] == 1 and zs["accuracy_std"] == 0.0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="--orders"):
            tta(cfg, "imagefolder", tmp_path / "bad", orders=bad)
    with pytest.raises(ConfigError, match="--save-every"):
        tta(cfg, "imagefolder", tmp_path / "bad", save_every=0)


def test_online_api_gives_the_protocol_predictions(cache_probe, vit, tiny_imagefolder, tmp_path):
    """``vlprompt.online`` on PIL images in the stream's order = ``protocol tta`` with the same views' seed;
    a saved state continues the stream; wrong options are one clear error."""
    from vlprompt.data.pipeline import load_dataset

    cfg = config_from_dict(_cfg_dict(tiny_imagefolder, {"name": cache_probe}))
    tta(cfg, "imagefolder", tmp_path / "p", n_views=3, seed=9)
    protocol = json.loads((tmp_path / "p" / "tta_targets" / "imagefolder.predictions.json").read_text())
    splits = load_dataset(cfg.data)
    images = [Image.open(item.path).convert("RGB") for item in splits.test]
    adapter = vlprompt.online(cache_probe, vit, list(splits.classnames), views=3, seed=9, device="cpu")
    assert isinstance(adapter, vlprompt.TestTimeAdapter) and adapter.views.n_views == 3
    first = adapter.predict(images[:5])
    adapter.save(tmp_path / "api.safetensors")
    again = vlprompt.online(cache_probe, vit, list(splits.classnames), views=3, seed=9, device="cpu",
                            state=tmp_path / "api.safetensors")
    rest = again.predict(images[5:])
    logits = torch.cat([first, rest])
    assert logits.argmax(-1).tolist() == protocol["pred"]
    probs = logits.softmax(-1).max(-1).values
    assert [round(float(p), 6) for p in probs] == pytest.approx(protocol["confidence"], abs=2e-6)
    with pytest.raises(ConfigError, match="augment"):
        vlprompt.online(cache_probe, vit, ["a"], augment="blur")
    with pytest.raises(ConfigError, match="views"):
        vlprompt.online(cache_probe, vit, ["a"], views=0)
    with pytest.raises(ConfigError, match="classnames"):
        vlprompt.online(cache_probe, vit, [])


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_mid_stream_then_resume(tiny_imagefolder, tmp_path, cache_probe):
    """A real SIGKILL of `vlprompt protocol tta` once a stream checkpoint exists; run again, the stream resumes
    mid-way and the predictions equal an uninterrupted in-process run's."""
    method = {"name": online_probe.NAME, "sleep": 0.08}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg_dict(tiny_imagefolder, method)))
    out = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import online_probe; online_probe.register(); "
            "from vlprompt.cli.main import main; "
            f"sys.exit(main(['protocol', 'tta', '-c', {str(cfg_path)!r}, '--targets', 'imagefolder', '-o', "
            f"{str(out)!r}, '--views', '2', '--order-seed', '3', '--save-every', '3']))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    state = out / "tta_targets" / "imagefolder.stream" / "order-0" / "state.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "tta_targets" / "imagefolder.json").exists()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = json.loads((out / "tta_targets" / "imagefolder.predictions.json").read_text())
    row = json.loads((out / "tta_targets" / "imagefolder.json").read_text())["per_target"]["imagefolder"]
    assert row["resumed_at"][0] >= 3 and row["resumed_at"][0] % 3 == 0  # continued from a save, not from 0
    ref_cfg = config_from_dict(_cfg_dict(tiny_imagefolder, {"name": online_probe.NAME}))
    tta(ref_cfg, "imagefolder", tmp_path / "ref", n_views=2, order_seed=3)
    ref = json.loads((tmp_path / "ref" / "tta_targets" / "imagefolder.predictions.json").read_text())
    assert killed["pred"] == ref["pred"] and killed["order"] == ref["order"]
    assert killed["confidence"] == pytest.approx(ref["confidence"], abs=1e-6)
    assert not (out / "tta_targets" / "imagefolder.stream").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tda", "dpe", "boostadapter"])
def test_the_online_methods_stream_through_the_api_and_resume_exactly(name, vit, tiny_imagefolder, tmp_path):
    """Each shipped online method through ``vlprompt.online``: 10 views per image, the state saved after 6 images
    and loaded into a new adapter continues with the uninterrupted stream's logits; its cache grows."""
    from vlprompt.data.pipeline import load_dataset

    splits = load_dataset(config_from_dict(_cfg_dict(tiny_imagefolder, {"name": "zeroshot"})).data)
    images = [Image.open(item.path).convert("RGB") for item in splits.test][:12]
    names = list(splits.classnames)
    whole = vlprompt.online(name, vit, names, views=10, seed=4, device="cpu").predict(images)
    first = vlprompt.online(name, vit, names, views=10, seed=4, device="cpu")
    head = first.predict(images[:6])
    assert first.method.adaptation_size() > 0
    first.save(tmp_path / f"{name}.safetensors")
    again = vlprompt.online(name, vit, names, views=10, seed=4, device="cpu", state=tmp_path / f"{name}.safetensors")
    torch.testing.assert_close(torch.cat([head, again.predict(images[6:])]), whole, rtol=0, atol=1e-5)


def test_an_online_method_through_the_cli_with_orders(tiny_imagefolder, tmp_path, capsys):
    """`vlprompt protocol tta --orders 2` with TDA: two orders, their spread, the cache size in the table."""
    from vlprompt.cli.main import main

    cfg = tmp_path / "tda.yaml"
    cfg.write_text(yaml.safe_dump(_cfg_dict(tiny_imagefolder, {"name": "tda"})))
    out = tmp_path / "tda"
    assert main(["protocol", "tta", "-c", str(cfg), "--targets", "imagefolder", "--orders", "2", "--order-seed", "5",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    row = json.loads((out / "tta_results.json").read_text())["per_target"]["imagefolder"]
    assert row["orders_run"] == 2 and row["order_seeds"] == [5, 6] and len(row["accuracy_by_order"]) == 2
    assert row["cache_size"] > 0 and row["n_views"] == 1 and "| cache" in printed
    assert main(["protocol", "base2new", "-c", str(cfg), "--orders", "2"]) == 2  # tta-only option
    assert "--orders" in capsys.readouterr().err
