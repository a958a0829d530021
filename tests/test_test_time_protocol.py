"""The test-time protocol (``vlprompt protocol tta``, ``vlprompt.tta``, tta sweeps, the report) on the tiny
imagefolder with zero-shot CLIP and a probe method registered here; the views (data/test_time_views.py); ECE
against an independent loop re-implementation of C-TPT's ``ECE_Loss``."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vlprompt.data.test_time_views as tv
from vlprompt.cli.main import main
from vlprompt.config import config_from_dict
from vlprompt.core.errors import ConfigError
from vlprompt.core.metrics import expected_calibration_error
from vlprompt.core.version import __version__
from vlprompt.methods.base import Adapted, PromptMethod, template_text_features
from vlprompt.methods.capabilities import Capabilities

N_TEST = 18  # tiny_imagefolder: 3 classes x 6 test images


# ------------------------------------------------------------------------------------ a probe method
@dataclasses.dataclass
class ProbeConfig:
    online: bool = False  # True: the same method, registered as "online" (its counter is never reset per image)


class Probe(PromptMethod):
    """Zero-shot text features of the dataset's template(s); ``adapt_and_predict`` averages the logits of all
    views and adds ``(counter - 1) * 5`` to class ``counter % n_cls``. The counter counts the images seen since
    the last :meth:`reset_adaptation`: reset before every image (episodic) the bias is always 0, so a missing
    reset, or a prediction that depends on the stream's order, shows in the predictions."""

    def __init__(self, backbone, classnames, config, context=None):
        super().__init__(backbone, classnames, config, context)
        feats = template_text_features(backbone, self.classnames, list(self.context.templates))
        self.register_buffer("classifier", feats, persistent=False)
        self.counter = 0
        self.started_from: str | None = None

    def text_features(self):
        return self.classifier

    def reset_adaptation(self):
        self.counter = 0

    def start_from(self, source):
        with torch.no_grad():
            self.classifier = source.text_features().detach().clone()
        self.started_from = source.method_name

    def adapt_and_predict(self, views):
        self.counter += 1
        with torch.no_grad():
            logits = self(views).mean(dim=0)
        bias = torch.zeros_like(logits)
        bias[self.counter % self.n_cls] = 5.0 * (self.counter - 1)
        return Adapted(logits + bias, {"image_forward": int(views.shape[0]), "text_forward": 0, "backward": 0})


@pytest.fixture
def probe(monkeypatch):
    """Register ``tta_probe`` for one test (the registry is restored afterwards)."""
    from vlprompt.methods import registry

    registry.list_methods()
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    registry.register_method("tta_probe", ProbeConfig, Probe, capabilities=lambda c: Capabilities(
        training="none", supervision="none", adaptation="online" if c is not None and c.online else "episodic"))
    return "tta_probe"


def _cfg_dict(root, method, **data):
    return {"method": method, "backbone": {"model": "vlprompt-test-vit", "pretrained": None},
            "data": {"dataset": "imagefolder", "root": str(root), "num_workers": 0, **data},
            "train": {"device": "cpu", "progress": False, "tensorboard": False}}


def _cfg(root, method, **data):
    return config_from_dict(_cfg_dict(root, method, **data))


def _write_cfg(path, root, method):
    path.write_text(yaml.safe_dump(_cfg_dict(root, method)))
    return path


def _predictions(out, target="imagefolder"):
    return json.loads((out / "tta_targets" / f"{target}.predictions.json").read_text())


# ------------------------------------------------------------------------------------ the protocol
def test_zeroshot_through_the_cli(tiny_imagefolder, tmp_path, capsys):
    """Every field of a target's result is present and sane; zero-shot CLIP through the stream gives the
    accuracy of `vlprompt zeroshot`; accuracy and ECE follow from the per-image predictions written."""
    from vlprompt.tasks.api import zeroshot

    cfg = _write_cfg(tmp_path / "cfg.yaml", tiny_imagefolder, {"name": "zeroshot"})
    out = tmp_path / "tta"
    assert main(["protocol", "tta", "-c", str(cfg), "--targets", "imagefolder", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| imagefolder" in printed and "ECE %" in printed and "tta_results.json" in printed
    result = json.loads((out / "tta_results.json").read_text())
    assert result["kind"] == "tta" and result["protocol"] == "tta" and result["targets"] == ["imagefolder"]
    assert result["vlprompt_version"] == __version__ and len(result["config_digest"]) == 64
    assert result["backbone"] == {"family": "open_clip", "model": "vlprompt-test-vit", "pretrained": None}
    assert result["method"] == "zeroshot" and result["adaptation"] == "none" and result["start_from"] is None
    row = result["per_target"]["imagefolder"]
    assert row["n"] == N_TEST and row["classes"] == 3
    assert 0 <= row["accuracy"] <= 100 and 0 <= row["ece"] <= 100
    assert row["seconds_per_image"] > 0 and row["views_seconds_per_image"] >= 0
    assert row["peak_memory_mb"] is None  # CPU
    assert row["passes"] == {"image_forward": 1.0, "text_forward": 0.0, "backward": 0.0}  # text features once
    assert (row["n_views"], row["views"], row["seed"], row["order_seed"]) == (1, "original", 1, None)
    assert row["accuracy"] == pytest.approx(zeroshot(config_from_dict(_cfg_dict(tiny_imagefolder, {
        "name": "zeroshot"})), progress=False)["accuracy"])
    pred = _predictions(out)
    correct = [p == t for p, t in zip(pred["pred"], pred["label"])]
    assert row["accuracy"] == pytest.approx(100 * sum(correct) / N_TEST)
    assert row["ece"] == pytest.approx(_ctpt_ece(pred["confidence"], correct, 20) * 100, abs=1e-3)
    assert (out / "tta_results.md").read_text().startswith("tta - zeroshot")


def test_episodic_method_is_deterministic_and_order_free(tiny_imagefolder, tmp_path, probe, vit_backbone):
    """Two runs give identical predictions; another order seed processes the images in another order and gives
    the same prediction for every image; each prediction is the mean of the logits of the image's own views
    (views seeded by the image's index). The same method declared online depends on the order (the check can
    fail)."""
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.engine.trainer import method_context
    from vlprompt.methods.registry import build_method
    from vlprompt.tasks.test_time import tta

    cfg = _cfg(tiny_imagefolder, {"name": probe})
    runs = {name: tta(cfg, "imagefolder", tmp_path / name, n_views=5, order_seed=order)
            for name, order in (("a", 3), ("b", 3), ("c", 7))}
    preds = {name: _predictions(tmp_path / name) for name in runs}
    assert preds["a"] == preds["b"]
    assert preds["a"]["order"] != preds["c"]["order"] and sorted(preds["c"]["order"]) == list(range(N_TEST))
    assert preds["a"]["pred"] == preds["c"]["pred"] and preds["a"]["confidence"] == preds["c"]["confidence"]
    row = runs["a"]["per_target"]["imagefolder"]
    assert (row["n_views"], row["views"], row["order_seed"], row["passes"]["image_forward"]) == (5, "augmix", 3, 5.0)
    assert runs["a"]["adaptation"] == "episodic"
    for key in ("accuracy", "ece", "n", "passes"):
        assert row[key] == runs["c"]["per_target"]["imagefolder"][key]
    # independently: the probe's mean logits over views_for(...)(image, index)
    splits = load_dataset(cfg.data)
    method = build_method(probe, vit_backbone, splits.classnames, context=method_context(cfg, splits)).eval()
    views = tv.views_for(vit_backbone, n_views=5, augmix=True, seed=1)
    for i in (0, 7, N_TEST - 1):
        with torch.no_grad():
            probs = method(views(splits.loader(splits.test[i].path), i)).mean(0).softmax(-1)
        assert int(probs.argmax()) == preds["a"]["pred"][i]
        assert float(probs.max()) == pytest.approx(preds["a"]["confidence"][i], abs=1e-5)
    online = _cfg(tiny_imagefolder, {"name": probe, "online": True})
    first = _predictions_of(tta(online, "imagefolder", tmp_path / "o3", n_views=2, order_seed=3), tmp_path / "o3")
    second = _predictions_of(tta(online, "imagefolder", tmp_path / "o7", n_views=2, order_seed=7), tmp_path / "o7")
    assert first["pred"] != second["pred"]


def _predictions_of(result, out):
    assert result["adaptation"] == "online"
    return _predictions(out)


def test_resume_skips_finished_targets_and_refuses_another_setup(tiny_imagefolder, tmp_path, probe, monkeypatch):
    """A target finished in the folder is not computed again, also after a run that failed on a later target;
    a folder holding results of another setup is refused and its files are kept."""
    from vlprompt.data import registry as data_registry
    from vlprompt.tasks import test_time

    data_registry.list_datasets()
    monkeypatch.setattr(data_registry, "_DATASETS", dict(data_registry._DATASETS))
    monkeypatch.setattr(data_registry, "_ALIASES", dict(data_registry._ALIASES))
    data_registry.register_dataset("tta_second", test_time_views="crop")(
        lambda root=None, **o: data_registry.build_dataset("imagefolder", root, **o))
    cfg = _cfg(tiny_imagefolder, {"name": probe})
    out = tmp_path / "tta"
    real = test_time.run_target
    calls: list[str] = []

    def counting(cfg, target, *args, **kwargs):
        calls.append(target)
        if target == "tta_second" and len(calls) == 2:
            raise RuntimeError("killed")
        return real(cfg, target, *args, **kwargs)

    monkeypatch.setattr(test_time, "run_target", counting)
    with pytest.raises(RuntimeError, match="killed"):
        test_time.tta(cfg, "imagefolder,tta_second", out, n_views=3)
    assert (out / "tta_targets" / "imagefolder.json").exists() and not (out / "tta_results.json").exists()
    finished = (out / "tta_targets" / "imagefolder.json").stat().st_mtime_ns
    result = test_time.tta(cfg, "imagefolder,tta_second", out, n_views=3)
    assert calls == ["imagefolder", "tta_second", "tta_second"]
    assert (out / "tta_targets" / "imagefolder.json").stat().st_mtime_ns == finished
    assert result["targets"] == ["imagefolder", "tta_second"]
    assert result["per_target"]["tta_second"]["views"] == "crop"  # the dataset's registered views
    assert _predictions(out)["pred"] == _predictions(out, "tta_second")["pred"]  # same images, order-free method
    test_time.tta(cfg, ["tta_second"], out, n_views=3)
    assert calls == ["imagefolder", "tta_second", "tta_second"]
    with pytest.raises(ConfigError, match="another setup"):
        test_time.tta(cfg, "imagefolder", out, n_views=4)
    assert (out / "tta_targets" / "imagefolder.json").stat().st_mtime_ns == finished


def test_start_from_a_prompt_file(tiny_imagefolder, tmp_path, probe, vit_backbone):
    """--prompt FILE: an adapting method starts from the prompt rebuilt for the target's classes (TPT+CoOp), a
    method that does not adapt evaluates the prompt itself (the CoOp row); a trained method without its prompt
    is refused."""
    from vlprompt.engine.checkpoint import load_prompt, save_prompt
    from vlprompt.methods.registry import build_method
    from vlprompt.tasks.test_time import tta

    torch.manual_seed(0)
    coop = build_method("coop", vit_backbone, ["a", "b"], n_ctx=2)  # another class list: rebuilt per target
    prompt = save_prompt(tmp_path / "coop.safetensors", coop)
    result = tta(_cfg(tiny_imagefolder, {"name": probe}), "imagefolder", tmp_path / "t", n_views=2, prompt=prompt)
    assert (result["method"], result["start_from"], result["prompt"]) == (probe, "coop", str(prompt))
    plain = tta(_cfg(tiny_imagefolder, {"name": "zeroshot"}), "imagefolder", tmp_path / "z", prompt=prompt)
    assert (plain["method"], plain["start_from"], plain["adaptation"]) == ("coop", None, "none")
    rebuilt = load_prompt(prompt, vit_backbone, ["red thing", "green thing", "blue thing"], allow_new_classes=True)
    started = _predictions(tmp_path / "t")
    # the probe started from CoOp's text features: on one view its prediction is CoOp's
    one = tta(_cfg(tiny_imagefolder, {"name": probe}), "imagefolder", tmp_path / "t1", n_views=1, prompt=prompt)
    assert one["per_target"]["imagefolder"]["accuracy"] == plain["per_target"]["imagefolder"]["accuracy"]
    assert _predictions(tmp_path / "t1")["pred"] == _predictions(tmp_path / "z")["pred"]
    assert rebuilt.n_cls == 3 and len(started["pred"]) == N_TEST
    with pytest.raises(ConfigError, match="prompt file"):
        tta(_cfg(tiny_imagefolder, {"name": "coop"}), "imagefolder", tmp_path / "c")


@pytest.mark.parametrize("args, message", [
    (["--targets", "imagefolder,nope"], "unknown target dataset 'nope'"),
    (["--targets", "imagefolder", "--prompt", "missing.safetensors"], "does not exist"),
    (["--targets", "imagefolder", "--views", "0"], "--views"),
    (["--targets", "imagefolder", "--seeds", "1,2"], "--seed S"),
    ([], "needs target datasets"),
])
def test_bad_input_is_one_error_line(tiny_imagefolder, tmp_path, capsys, args, message):
    cfg = _write_cfg(tmp_path / "cfg.yaml", tiny_imagefolder, {"name": "zeroshot"})
    assert main(["protocol", "tta", "-c", str(cfg), "-o", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "o" / "tta_results.json").exists()


def test_other_protocols_refuse_tta_options(tiny_imagefolder, tmp_path, capsys):
    cfg = _write_cfg(tmp_path / "cfg.yaml", tiny_imagefolder, {"name": "zeroshot"})
    assert main(["protocol", "dg", "-c", str(cfg), "--targets", "imagefolder", "--views", "3"]) == 2
    assert "only for protocol tta" in capsys.readouterr().err


def test_target_groups_are_registered_datasets():
    from vlprompt.data.registry import get_dataset_info
    from vlprompt.tasks.test_time import TARGET_GROUPS, resolve_targets

    assert resolve_targets("imagenet_shifts") == ["imagenet", "imagenet_a", "imagenetv2", "imagenet_r",
                                                  "imagenet_sketch"]
    xd = resolve_targets(["cross_dataset"])
    assert len(xd) == 10 and "imagenet" not in xd
    assert {get_dataset_info(t).test_time_views for t in TARGET_GROUPS["imagenet_shifts"]} == {"crop"}
    assert {get_dataset_info(t).test_time_views for t in xd} == {"augmix"}
    assert resolve_targets("dtd,imagenet_shifts,dtd")[:2] == ["dtd", "imagenet"]  # each once, in order


# ------------------------------------------------------------------------------------ report and sweeps
def test_report_has_the_tta_rows(tiny_imagefolder, tmp_path, probe, capsys):
    """`vlprompt report` shows accuracy, ECE and cost per method and target, a comparison of the methods and,
    with a paper file holding tta entries, the published values next to ours."""
    from vlprompt.tasks.test_time import tta

    runs = tmp_path / "runs"
    zs = tta(_cfg(tiny_imagefolder, {"name": "zeroshot"}), "imagefolder", runs / "zeroshot")
    pr = tta(_cfg(tiny_imagefolder, {"name": probe}), "imagefolder", runs / "probe", n_views=3)
    paper = tmp_path / "paper.json"
    paper.write_text(json.dumps({"results": [{"paper": "mine", "table": "T1", "backbone": "vlprompt-test-vit",
                                              "setting": "tta", "method": probe, "dataset": "imagefolder",
                                              "values": {"accuracy": 12.5, "ece": 3.25}}]}))
    assert main(["report", str(runs), "--paper-file", str(paper)]) == 0
    text = (runs / "report.md").read_text()
    assert "## Test-time adaptation" in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()
             if line.startswith("| ") and "| imagefolder" in line}
    zrow, prow = lines["zeroshot"], lines[probe]
    assert f"{zs['per_target']['imagefolder']['accuracy']:.2f} ± 0.00" in zrow
    assert f"{zs['per_target']['imagefolder']['ece']:.2f} ± 0.00" in zrow
    assert f"{pr['per_target']['imagefolder']['seconds_per_image']:.4f}" in prow
    assert "12.50" in prow and "3.25" in prow and "mine T1" in prow and "12.50" not in zrow
    assert any(line.startswith("| imagefolder") and " / " in line for line in text.splitlines())  # comparison
    csv = (runs / "report_tta.csv").read_text().splitlines()
    assert csv[0].startswith("method,backbone,target,runs,accuracy") and len(csv) == 3
    data = json.loads((runs / "report.json").read_text())
    assert data["tta"][f"{probe}|vlprompt-test-vit"]["imagefolder"]["paper"]["values"]["ece"] == 3.25
    assert data["paper"]["matched_rows"] == 1


def test_tta_sweep_with_a_trained_start(tiny_imagefolder, tmp_path, probe, monkeypatch):
    """A tta sweep: zero-shot, the probe, and probe+coop (CoOp trained on the dataset, then the start of the
    probe) per seed into <run>/tta_results.json; a rerun skips them; the report reads them."""
    from vlprompt.tasks.sweep import load_sweep, run_sweep

    base = _cfg_dict(tiny_imagefolder, {"name": "zeroshot"}, shots=2, augment=False)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**base, "optim": {"max_epoch": 1, "batch_size": 4}}))
    (tmp_path / "coop.yaml").write_text(yaml.safe_dump({**base, "method": {"name": "coop", "n_ctx": 2},
                                                        "optim": {"max_epoch": 1, "batch_size": 4}}))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "t", "protocol": "tta", "config": {"coop": str(tmp_path / "coop.yaml"),
                                                    "default": str(tmp_path / "base.yaml")},
        "methods": ["zeroshot", probe, f"{probe}+coop"], "datasets": ["imagefolder"], "targets": ["imagefolder"],
        "shots": [2], "seeds": [1], "views": 2, "output_dir": str(tmp_path / "out")}))
    sw = load_sweep(sweep)
    summary = run_sweep(sw, progress=False)
    assert summary["done"] == 3 and not summary["failed"], summary["failed"]
    started = json.loads((tmp_path / "out" / f"{probe}+coop/default/imagefolder/2shots/seed1/tta_results.json"
                          ).read_text())
    assert (started["method"], started["start_from"]) == (probe, "coop")
    assert started["per_target"]["imagefolder"]["n_views"] == 2
    assert (tmp_path / "out" / f"{probe}+coop/default/imagefolder/2shots/seed1/start_coop/prompt.safetensors").exists()
    assert run_sweep(sw, progress=False)["skipped"] == 3
    assert main(["report", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"| {probe}+coop" in report and "| zeroshot" in report


def test_sweep_refuses_a_start_outside_tta(tmp_path):
    from vlprompt.tasks.sweep import load_sweep

    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"protocol": "fewshot", "methods": ["tpt+coop"], "datasets": ["dtd"]}))
    with pytest.raises(ConfigError, match="protocol tta"):
        load_sweep(sweep)
    sweep.write_text(yaml.safe_dump({"protocol": "xd", "views": 8, "datasets": ["dtd"]}))
    with pytest.raises(ConfigError, match="views"):
        load_sweep(sweep)


# ------------------------------------------------------------------------------------ views
def _noise_image(size=40, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8))


def test_views_are_seeded_per_image_and_start_with_the_eval_transform(vit_backbone):
    img = _noise_image()
    views = tv.views_for(vit_backbone, n_views=6, augmix=True, seed=3)
    a, b = views(img, 5), views(img, 5)
    s = vit_backbone.image_size
    assert a.shape == (6, 3, s, s) and torch.equal(a, b)  # same (seed, index): same views
    other = views(img, 6)
    assert torch.equal(other[0], a[0]) and not torch.allclose(other[1:], a[1:])  # another index: other views
    assert not torch.allclose(tv.views_for(vit_backbone, n_views=6, augmix=True, seed=4)(img, 5)[1:], a[1:])
    assert torch.equal(a[0], vit_backbone.eval_transform()(img))  # the original is the test transform
    assert all(not torch.equal(a[i], a[j]) for i in range(1, 6) for j in range(i + 1, 6))
    assert tv.views_for(vit_backbone, n_views=1, augmix=True, seed=3)(img, 5).shape == (1, 3, s, s)
    with pytest.raises(ValueError, match="at least 1"):
        tv.views_for(vit_backbone, n_views=0, augmix=True, seed=3)
    assert tv.DEFAULT_VIEWS == 64  # TPT: 63 augmented views + the original


def test_crop_views_only_crop_and_augmix_views_mix(vit_backbone):
    """Crops (ImageNet sets) of a one-colour image are that colour, normalised; AugMix views of a noise image
    differ from the crops drawn with the same seed (the mix is blended in)."""
    flat = Image.new("RGB", (48, 40), (200, 30, 90))
    crop = tv.views_for(vit_backbone, n_views=5, augmix=False, seed=0)
    views = crop(flat, 2)
    colour = (torch.tensor([200, 30, 90]) / 255.0 - crop.mean.view(3)) / crop.std.view(3)
    assert torch.allclose(views[1:], colour.view(1, 3, 1, 1).expand_as(views[1:]), atol=1e-5)
    img = _noise_image(seed=1)
    crops = crop(img, 2)
    mixed = tv.views_for(vit_backbone, n_views=5, augmix=True, seed=0)(img, 2)
    assert torch.equal(crops[0], mixed[0]) and not torch.allclose(crops[1:], mixed[1:])


# ------------------------------------------------------------------------------------ ECE
def _ctpt_ece(confidences, correct, num_bins):
    """An independent, loop-by-loop re-implementation of what hee-suk-yoon/C-TPT ``tpt_classification.py``
    lines 43-76 (``ECE_Loss``) computes: bins of ``torch.linspace(0, 1, num_bins + 1)`` (float32 edges, compared
    as Python floats); a sample falls in the bin with ``lower < confidence <= upper``; ECE is the sum over bins
    of ``count / N * |mean correct - mean confidence|`` (a fraction, not percent)."""
    edges = [float(e) for e in torch.linspace(0, 1, num_bins + 1)]
    totals = [[0, 0.0, 0.0] for _ in range(num_bins)]  # count, correct, confidence
    for conf, ok in zip(confidences, correct):
        for b in range(num_bins):
            if edges[b] < conf <= edges[b + 1]:
                totals[b][0] += 1
                totals[b][1] += float(ok)
                totals[b][2] += conf
    ece = 0.0
    for count, hits, conf_sum in totals:
        if count:
            ece += count / len(confidences) * abs(hits / count - conf_sum / count)
    return ece


@pytest.mark.parametrize("seed", range(4))
def test_ece_matches_ctpt_ece_loss(seed):
    g = torch.Generator().manual_seed(seed)
    n, n_cls = 300, 1 + seed * 3 + 2
    probs = (torch.randn(n, n_cls, generator=g, dtype=torch.float64) * (seed + 1)).softmax(-1)
    labels = torch.randint(0, n_cls, (n,), generator=g)
    conf, pred = probs.max(-1)
    ref = _ctpt_ece(conf.tolist(), (pred == labels).tolist(), 20)
    assert expected_calibration_error(probs, labels) == pytest.approx(100 * ref, abs=1e-9)
    assert 0 <= expected_calibration_error(probs, labels) <= 100
    ref10 = _ctpt_ece(conf.tolist(), (pred == labels).tolist(), 10)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(100 * ref10, abs=1e-9)


def test_ece_edge_confidences():
    """Confidences exactly on the (float32) bin edges, just above them, 1.0, and 1/n_cls, in both rules'
    bins (lower < c <= upper)."""
    edges = [float(e) for e in torch.linspace(0, 1, 21)]
    tops = [e for e in edges if e >= 0.5] + [math.nextafter(e, 2.0) for e in edges[10:20]] + [0.5, 1.0, 0.75]
    probs = torch.tensor([[c, 1 - c] for c in tops], dtype=torch.float64)
    labels = torch.tensor([i % 2 for i in range(len(tops))])
    conf, pred = probs.max(-1)
    ref = _ctpt_ece(conf.tolist(), (pred == labels).tolist(), 20)
    assert expected_calibration_error(probs, labels) == pytest.approx(100 * ref, abs=1e-9)
    uniform = torch.full((4, 20), 1 / 20, dtype=torch.float64)  # 0.05 in float64 lies below float32's 0.05
    lab = torch.tensor([0, 1, 2, 3])
    conf, pred = uniform.max(-1)
    assert expected_calibration_error(uniform, lab) == pytest.approx(
        100 * _ctpt_ece(conf.tolist(), (pred == lab).tolist(), 20), abs=1e-9)
    assert expected_calibration_error(uniform, lab) == pytest.approx(100 * abs(0.25 - 0.05), abs=1e-9)
    perfect = torch.eye(3, dtype=torch.float64)
    assert expected_calibration_error(perfect, torch.arange(3)) == 0.0
    assert expected_calibration_error(perfect, torch.tensor([1, 2, 0])) == pytest.approx(100.0)


def test_shipped_world_sweep(monkeypatch):
    """configs/sweeps/world_tta.yaml: the six rows of the world's test-time table on registered world targets
    (domain-shifted sets and cross-dataset targets), TPT+CoOp started from a 4-token CoOp."""
    from pathlib import Path

    from vlprompt.config import read_yaml
    from vlprompt.tasks.sweep import _template_for, load_sweep
    from vlprompt.tasks.test_time import resolve_targets

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    sw = load_sweep(repo / "configs/sweeps/world_tta.yaml")
    assert (sw.protocol, sw.views, sw.methods) == ("tta", 64, ["zeroshot", "tpt", "ctpt", "zero", "mta", "tpt+coop"])
    assert resolve_targets(sw.targets) == sw.targets
    assert {f"world_shapes_{s}" for s in ("sketch", "cartoon", "painting", "pixelated", "noisy")} <= set(sw.targets)
    coop = read_yaml(_template_for(sw, "coop"))["method"]
    assert (coop["name"], coop["n_ctx"]) == ("coop", 4)  # TPT loads only a CoOp context of its n_ctx (4)
    assert _template_for(sw, "tpt+coop") == _template_for(sw, "tpt") == "configs/world/tta_world.yaml"


def test_views_are_the_methods_choice_unless_augment_is_given(tiny_imagefolder, tmp_path, probe):
    """TPT's rule (the dataset's registered kind: AugMix for an image folder) is the default; Zero and MTA take
    crops on every dataset (their authors' transforms); ``augment`` overrides both and enters the digest."""
    from vlprompt import tta

    kinds = {}
    for name in (probe, "zero", "mta"):
        result = tta(_cfg(tiny_imagefolder, {"name": name}), "imagefolder", tmp_path / name, n_views=8)
        kinds[name] = result["per_target"]["imagefolder"]["views"]
    assert kinds == {probe: "augmix", "zero": "crop", "mta": "crop"}
    forced = tta(_cfg(tiny_imagefolder, {"name": probe}), "imagefolder", tmp_path / "forced", n_views=8,
                 augment="crop")
    assert forced["per_target"]["imagefolder"]["views"] == "crop"
    with pytest.raises(ConfigError, match="another setup"):
        tta(_cfg(tiny_imagefolder, {"name": probe}), "imagefolder", tmp_path / probe, n_views=8, augment="crop")
    with pytest.raises(ConfigError, match="--augment"):
        tta(_cfg(tiny_imagefolder, {"name": probe}), "imagefolder", tmp_path / "bad", n_views=8, augment="mix")


@pytest.mark.parametrize("protocol", ["base2new", "xd"])
def test_batch_protocols_refuse_a_method_that_adapts_at_test_time(tiny_imagefolder, tmp_path, capsys, protocol):
    cfg = _write_cfg(tmp_path / "cfg.yaml", tiny_imagefolder, {"name": "zero"})
    out = tmp_path / "out"
    args = ["protocol", protocol, "-c", str(cfg), "--seeds", "1", "-o", str(out)]
    assert main(args + (["--targets", "imagefolder"] if protocol == "xd" else [])) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "adapts at test time" in err and "protocol tta" in err
    assert not out.exists() or not any(out.rglob("*"))


def test_our_averages_sit_next_to_the_papers_published_averages():
    """The shipped TPT README averages (ImageNet and its shifts) appear beside our averages over other targets,
    for the same method label; a method the paper does not publish gets '-'."""
    from vlprompt.report.papers import load_paper_results
    from vlprompt.report.tables import tta_published_averages

    everything = load_paper_results()
    paper = [e for e in everything if e.paper == "tpt"]
    published = {e.method: e.values["accuracy"] for e in paper if e.setting == "tta" and e.dataset == "average"}
    assert {"tpt", "tpt+coop", "zeroshot"} <= set(published)
    ours = {f"{m}|world-rn": {"average": {"accuracy": acc, "ece": 5.0, "targets": ["world_shapes", "world_scenes"]}}
            for m, acc in (("tpt", 70.0), ("zero", 60.0), ("zeroshot", 65.0))}
    (table,) = tta_published_averages(ours, paper)
    rows = {r[0]: r for r in table.rows}
    assert table.columns[-1] == "tpt accuracy %" and "not a like-for-like" in table.title
    assert rows["tpt"][1:] == ["70.00", "5.00", f"{published['tpt']:.2f}"]
    assert rows["zero"][-1] == "-" and rows["zeroshot"][-1] == f"{published['zeroshot']:.2f}"
    assert tta_published_averages(ours, None) == []
    (both,) = tta_published_averages(ours, everything)  # TDA's README averages too: one column per paper
    assert both.columns[-2:] == ["tda accuracy %", "tpt accuracy %"]
    tda_avg = next(e for e in everything if e.paper == "tda" and e.method == "zeroshot" and e.dataset == "average")
    assert {r[0]: r for r in both.rows}["zeroshot"][-2] == f"{tda_avg.values['accuracy']:.2f}"
