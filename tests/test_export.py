"""`vlprompt export`: classifiers as one ONNX / TorchScript graph give vlprompt's logits, and the world
classifier runs under onnxruntime alone (no torch in the process) with vlprompt's accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from vlprompt.backbones.openclip import load_backbone  # noqa: E402
from vlprompt.cli.main import main  # noqa: E402
from vlprompt.core.deploy import OnnxClassifier, preprocess  # noqa: E402
from vlprompt.data.images import load_image  # noqa: E402
from vlprompt.methods.registry import build_method  # noqa: E402
from vlprompt.tasks.export import TOLERANCE, export_classifier, open_exported  # noqa: E402

from docs_blocks import blocks  # noqa: E402

CLASSES = ["red thing", "green thing", "blue thing"]


def _images(folder: Path, sizes=((37, 50), (64, 64), (90, 31), (20, 20))) -> list[str]:
    """Random RGB(A) image files of odd sizes (the preprocessing must resize and crop them)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (w, h) in enumerate(sizes):
        mode, ch = ("RGBA", 4) if i == 1 else ("RGB", 3)
        img = Image.fromarray(rng.integers(0, 256, (h, w, ch), dtype=np.uint8), mode)
        files.append(str(folder / f"img{i}.png"))
        img.save(files[-1])
    return files


def test_deploy_preprocessing_equals_open_clip_eval_transform(tmp_path, tiny_backbone):
    """core/deploy's Pillow resize + crop, then /255 and the normalisation in the graph, gives exactly the
    tensor open_clip's evaluation transform gives (bicubic shortest-side resize, centre crop)."""
    cfg = tiny_backbone.preprocess_cfg
    mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
    for f in _images(tmp_path):
        img = load_image(f)
        ours = preprocess(img, tiny_backbone.image_size, interpolation=cfg["interpolation"],
                          resize_mode=cfg["resize_mode"])
        x = (torch.from_numpy(ours.copy()).permute(2, 0, 1).float() / 255.0 - mean) / std
        assert torch.allclose(x, tiny_backbone.eval_transform()(img), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("model, method, fmt", [
    ("vlprompt-test-vit", "coop", "onnx"),
    ("vlprompt-test-rn", "upl", "torchscript"),
    ("vlprompt-test-rn", "locoop", "torchscript"),
    ("vlprompt-test-vit", "cocoop", "onnx"),  # image-conditional: encoder, Meta-Net and text encoder path
])
def test_exported_logits_equal_vlprompt(tmp_path, model, method, fmt):
    backbone = load_backbone(model)
    torch.manual_seed(0)
    m = build_method(method, backbone, CLASSES).eval()
    out = tmp_path / ("clf.onnx" if fmt == "onnx" else "clf.pt")
    info = export_classifier(m, out, fmt=fmt)
    assert info["classnames"] == CLASSES and info["image_conditional"] == m.capabilities.image_conditional
    files = _images(tmp_path / "img")
    clf = open_exported(out)
    got = clf.logits(np.stack([clf.preprocess(load_image(f)) for f in files]))
    with torch.no_grad():  # vlprompt's own path: open_clip transform, encode_images, logits
        x = torch.stack([backbone.eval_transform()(load_image(f)) for f in files])
        feats = m.encode_images(x)
        conditional = m.capabilities.image_conditional
        want = (m.forward_features(feats) if conditional else m.logits(feats, m.text_features())).numpy()
    assert got.shape == (len(files), len(CLASSES))
    assert np.abs(got - want).max() <= TOLERANCE * float(backbone.logit_scale)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "error:" in capsys.readouterr().err
    prompt_dir = tmp_path / "run"
    prompt_dir.mkdir()
    assert main(["export", str(prompt_dir), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "no prompt.safetensors" in capsys.readouterr().err
    m = build_method("coop", load_backbone("vlprompt-test-rn"), CLASSES)
    with pytest.raises(Exception, match="must end with .pt"):
        export_classifier(m, tmp_path / "m.onnx", fmt="torchscript")


# ------------------------------------------------------------------------------------ the world classifier
def _docs_example() -> str:
    """The deployment example of docs/deploy.md (its first python block)."""
    found = [b for b in blocks("deploy.md") if b.lang == "python"]
    assert found, "docs/deploy.md has no python example"
    return found[0].code


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    """CoOp learned on world_shapes (2 shots, 2 epochs) with the shipped world CLIP, exported to ONNX."""
    from vlprompt.config import config_from_dict
    from vlprompt.engine.trainer import train

    root = tmp_path_factory.mktemp("world_export")
    cfg = config_from_dict({
        "method": {"name": "coop", "n_ctx": 4},
        "backbone": {"model": "vlprompt-world-rn", "pretrained": "world"},
        "data": {"dataset": "world_shapes", "shots": 2, "num_workers": 0, "augment": False},
        "optim": {"max_epoch": 2, "batch_size": 8, "lr": 0.002},
        "train": {"output_dir": str(root / "run"), "device": "cpu", "progress": False, "tensorboard": False},
    })
    metrics = train(cfg)
    model = root / "model.onnx"  # the name the docs' example opens
    assert main(["export", str(root / "run"), "--format", "onnx", "-o", str(model)]) == 0
    return root, metrics, model


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.world
def test_world_classifier_under_onnxruntime_alone_has_vlprompt_accuracy(world_run):
    from vlprompt.data.registry import build_dataset

    root, metrics, model = world_run
    splits = build_dataset("world_shapes")
    img_dir = root / "test_images"
    img_dir.mkdir(exist_ok=True)
    labels = {}
    for i, d in enumerate(splits.test):
        name = f"{i:04d}.png"
        splits.loader(d.path).save(img_dir / name)  # PNG: lossless, the same pixels vlprompt evaluated
        labels[name] = splits.classnames[d.label]
    (root / "labels.json").write_text(json.dumps(labels))
    script = _docs_example() + f"""
import json, sys
truth = json.load(open({str(root / 'labels.json')!r}))
files = sorted(truth)
predicted = classify([{str(img_dir)!r} + "/" + f for f in files])
acc = 100.0 * sum(p == truth[f] for p, f in zip(predicted, files)) / len(files)
assert "torch" not in sys.modules and "vlprompt" not in sys.modules, "the deployment imported torch / vlprompt"
print(json.dumps({{"accuracy": acc, "n": len(files), "predicted": dict(zip(files, predicted))}}))
"""
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == metrics.test["n"] == len(splits.test)
    # the same images right (vlprompt computes the percentage in float32: compare counts)
    assert round(result["accuracy"] * result["n"] / 100) == round(metrics.test["accuracy"] * result["n"] / 100)
    assert result["accuracy"] > 100.0 / len(splits.classnames) + 20  # a real classifier, not chance
    from vlprompt.tasks.api import predict  # and image by image the same class as vlprompt with the prompt file

    ours = predict(root / "run" / "prompt.safetensors", [str(img_dir)], topk=1, device="cpu")
    assert {Path(r["image"]).name: r["top"][0][0] for r in ours} == result["predicted"]


@pytest.mark.slow
@pytest.mark.world
def test_predict_accepts_the_exported_file(world_run, tmp_path, capsys):
    root, _, model = world_run
    from vlprompt.data.registry import build_dataset

    splits = build_dataset("world_shapes")
    files = []
    for i, d in enumerate(splits.test[:6]):
        files.append(str(tmp_path / f"{i}.png"))
        splits.loader(d.path).save(files[-1])
    assert main(["predict", *files, "--prompt", str(root / "run" / "prompt.safetensors"), "--device", "cpu",
                 "--json", str(tmp_path / "ours.json")]) == 0
    assert main(["predict", *files, "--prompt", str(model), "--json", str(tmp_path / "onnx.json")]) == 0
    ours = json.loads((tmp_path / "ours.json").read_text())
    onnx = json.loads((tmp_path / "onnx.json").read_text())
    for a, b in zip(ours, onnx):
        assert a["image"] == b["image"] and a["top"][0][0] == b["top"][0][0]
        for (ca, pa), (cb, pb) in zip(a["top"], b["top"]):
            assert ca == cb and pa == pytest.approx(pb, abs=1e-4)
    clf = OnnxClassifier(model)
    assert clf.classnames == splits.classnames and clf.meta["method"] == "coop"
    capsys.readouterr()
