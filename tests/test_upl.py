"""UPL: top-K selection rules, prompt ensemble == mean of independent CoOp prompts, CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from vlprompt.cli.main import main
from vlprompt.methods.registry import build_method
from vlprompt.tasks.pseudo_label import select_top_k

from conftest import tiny_config, write_config

CLASSES = ["red thing", "green thing", "blue thing"]


def test_selection_top_k_per_class_unique_and_stable():
    probs = torch.tensor([
        [0.90, 0.05, 0.05],  # 0 -> class 0
        [0.60, 0.30, 0.10],  # 1 -> class 0
        [0.90, 0.05, 0.05],  # 2 -> class 0 (tie with 0: dataset order)
        [0.10, 0.80, 0.10],  # 3 -> class 1
        [0.20, 0.70, 0.10],  # 4 -> class 1
        [0.30, 0.30, 0.40],  # 5 -> class 2
    ])
    idx, lab = select_top_k(probs, 2)
    assert idx == [0, 2, 3, 4, 5] and lab == [0, 0, 1, 1, 2]
    idx, lab = select_top_k(probs, 1)
    assert idx == [0, 3, 5]
    assert len(set(select_top_k(probs, 10)[0])) == 6


@pytest.mark.parametrize("seed", range(3))
def test_selection_matches_a_brute_force_reference(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(200, 7, generator=g).softmax(dim=1)
    probs[::5] = probs[1::5][: len(probs[::5])]  # exact ties
    idx, lab = select_top_k(probs, 4)
    conf, pred = probs.max(1)
    for c in range(7):
        cand = [i for i in range(200) if pred[i] == c]
        expected = sorted(cand, key=lambda i: (-float(conf[i]), i))[:4]
        assert [i for i, lb in zip(idx, lab) if lb == c] == expected


def test_ensemble_is_the_mean_of_independent_prompts(vit_backbone):
    torch.manual_seed(0)
    upl = build_method("upl", vit_backbone, CLASSES, n_ctx=4, n_prompts=3).eval()
    feats = torch.randn(5, vit_backbone.embed_dim)
    singles = []
    for n in range(3):
        coop = build_method("coop", vit_backbone, CLASSES, n_ctx=4)
        with torch.no_grad():
            coop.prompt_learner.ctx.copy_(upl.ctx[n])
        singles.append(coop.forward_features(feats))
    with torch.no_grad():
        torch.testing.assert_close(upl.forward_features(feats), torch.stack(singles).mean(0), rtol=1e-5, atol=1e-4)
    # training: each prompt gets exactly its own CoOp gradient
    upl.train()
    labels = torch.tensor([0, 1, 2, 0, 1])
    upl.loss(upl.forward_features(feats), labels).backward()
    coop = build_method("coop", vit_backbone, CLASSES, n_ctx=4)
    with torch.no_grad():
        coop.prompt_learner.ctx.copy_(upl.ctx[1])
    coop.loss(coop.forward_features(feats), labels).backward()
    torch.testing.assert_close(upl.ctx.grad[1], coop.ctx.grad, rtol=1e-3, atol=2e-5)
    assert (upl.ctx.grad[0] - coop.ctx.grad).abs().max() > 1e-3  # another prompt gets another gradient


@pytest.mark.slow
def test_pseudo_label_then_train_then_eval(tmp_path, tiny_imagefolder, capsys):
    raw = tiny_config(tmp_path, tiny_imagefolder, method={"name": "upl", "n_ctx": 4, "n_prompts": 2},
                      optim={"max_epoch": 2}, data={"augment": False})
    raw["method"] = {"name": "upl", "n_ctx": 4, "n_prompts": 2}
    cfg = write_config(tmp_path / "upl.yaml", **raw)
    pseudo = tmp_path / "pseudo.json"
    assert main(["pseudo-label", "-c", str(cfg), "-o", str(pseudo), "--topk", "3",
                 "--backbones", "vlprompt-test-vit:none,vlprompt-test-rn:none", "--no-progress"]) == 0
    split = json.loads(pseudo.read_text())
    assert len(split["train"]) <= 3 * 3 and len({p for p, _, _ in split["train"]}) == len(split["train"])
    report = json.loads((tmp_path / "pseudo_report.json").read_text())
    truth = {str(p): p.parent.name for p in (tiny_imagefolder / "train").rglob("*.png")}
    correct = sum(truth[p] == name for p, _, name in split["train"])
    assert report["pseudo_label_accuracy"] == pytest.approx(100 * correct / len(split["train"]))
    assert len(list((tmp_path / "pseudo_cache").glob("probs_*.safetensors"))) == 2
    assert main(["train", "-c", str(cfg), "--set", f"data.fewshot_file={pseudo}"]) == 0
    used = json.loads((tmp_path / "run" / "fewshot.json").read_text())
    assert used["train"] == split["train"]
    assert main(["eval", "--run", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "pseudo-label accuracy" in capsys.readouterr().out
