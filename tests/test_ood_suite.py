"""`vlprompt ood` beyond MCM / GL-MCM of the frozen tower (issue 29): methods that prompt the image tower score
with their own features, a training-free method's own score is used by default, sets declare near / far groups,
test-time methods are refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config as _tiny_config
from data_trees import make_imagefolder


def tiny_config(tmp_path, root, method):
    """The tiny config with ``method`` as the whole method section (not merged into CoOp's)."""
    return {**_tiny_config(tmp_path, root), "method": method}


def _mcm(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """MCM at T = 1 (Ming et al. 2022): max_c softmax_c(cos(f, t_c)); written here apart from core.ood."""
    cos = F.normalize(features.double(), dim=-1) @ F.normalize(text.double(), dim=-1).t()
    return cos.softmax(dim=-1).max(dim=-1).values


def _images(items, backbone):
    from vlprompt.data.images import load_image

    tf = backbone.eval_transform()
    return torch.stack([tf(load_image(d.path)) for d in items])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ivlp", "maple", "promptsrc"])
def test_methods_prompting_the_image_tower_score_ood_with_their_prompted_features(tmp_path, tiny_imagefolder, name):
    from vlprompt.backbones.build import build_backbone
    from vlprompt.config import config_from_dict
    from vlprompt.core.errors import VlpromptError
    from vlprompt.core.ood import ood_metrics
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.engine.checkpoint import save_prompt
    from vlprompt.methods.registry import build_method
    from vlprompt.tasks.ood import ood_evaluate, resolve_ood_set

    cfg = config_from_dict(tiny_config(tmp_path, tiny_imagefolder, method={"name": name}))
    backbone = build_backbone(cfg.backbone, device="cpu")
    splits = load_dataset(cfg.data)
    torch.manual_seed(3)
    method = build_method(name, backbone, splits.classnames, config=cfg.method.config).eval()
    with torch.no_grad():  # learned prompts far from their init, so prompted != frozen features
        for p in method.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    prompt = save_prompt(tmp_path / "p.safetensors", method)
    ood = make_imagefolder(tmp_path / "ood", classes=("x", "y"), per_class=2, size=32) / "train"

    result = ood_evaluate(cfg, prompt, [f"{ood}:near"], progress=False)
    assert result["scores"] == ["mcm"]  # no patch features from a prompted tower: GL-MCM is not a default

    with torch.no_grad():
        text = method.text_features()
        id_f = method.encode_images(_images(splits.test, backbone))
        _, items, _ = resolve_ood_set(str(ood), cfg)
        ood_f = method.encode_images(_images(items, backbone))
        frozen = backbone.encode_image(_images(splits.test, backbone))
    assert not torch.allclose(id_f, frozen, atol=1e-3)  # the prompts change the image features
    expected = ood_metrics(_mcm(id_f, text).numpy(), _mcm(ood_f, text).numpy())
    got = result["per_set"]["train"]["mcm"]
    assert got == pytest.approx(expected, abs=1e-6)
    assert result["groups"] == {"train": "near"} and result["group_average"]["near"]["mcm"] == pytest.approx(expected)
    with pytest.raises(VlpromptError, match="patch features"):
        ood_evaluate(cfg, prompt, [str(ood)], scores=["glmcm"], progress=False)


def test_ood_groups_average_their_sets_and_the_table_shows_them(tmp_path, tiny_imagefolder, capsys):
    from vlprompt.cli.main import main

    from conftest import write_config

    a = make_imagefolder(tmp_path / "a", classes=("x",), per_class=2, size=32) / "train"
    b = make_imagefolder(tmp_path / "b", classes=("y",), per_class=3, size=32) / "train"
    c = make_imagefolder(tmp_path / "c", classes=("z",), per_class=2, size=32) / "train"
    cfg = write_config(tmp_path / "c.yaml", **tiny_config(tmp_path, tiny_imagefolder, method={"name": "zeroshot"}))
    out = tmp_path / "o"
    sets = f"{a}:near,{b}:far,{c}:FAR"
    assert main(["ood", "-c", str(cfg), "--ood-sets", sets, "--scores", "mcm", "-o", str(out)]) == 0
    r = json.loads((out / "ood_results.json").read_text())
    names = list(r["per_set"])
    assert names == ["train", "b/train", "c/train"]  # absolute folders named by as many components as tell them apart
    assert [r["groups"][n] for n in names] == ["near", "far", "far"]
    far = [r["per_set"][n]["mcm"]["auroc"] for n in names[1:]]
    assert r["group_average"]["far"]["mcm"]["auroc"] == pytest.approx(sum(far) / 2)
    assert r["group_average"]["near"]["mcm"]["auroc"] == pytest.approx(r["per_set"][names[0]]["mcm"]["auroc"])
    table = (out / "ood_results.md").read_text()
    assert "near-OOD average" in table and "far-OOD average" in table and "(far)" in table
    assert main(["ood", "-c", str(cfg), "--ood-sets", f"{a},{a}", "-o", str(out)]) == 2
    assert "given twice" in capsys.readouterr().err


def test_a_training_free_ood_method_is_built_from_the_config_and_scored_with_its_own_score(tmp_path, tiny_imagefolder,
                                                                                        monkeypatch):
    """A probe training-free method with its own score ("probe": minus the max cosine to a fixed direction): ``vlprompt
    ood`` builds it from the config, uses its own score first by default and records what it reports."""
    from dataclasses import dataclass

    from vlprompt.config import config_from_dict
    from vlprompt.core.ood import ood_metrics
    from vlprompt.methods import registry
    from vlprompt.methods.base import PromptMethod, template_text_features
    from vlprompt.methods.capabilities import Capabilities
    from vlprompt.methods.registry import register_method

    registry.list_methods()
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # the probe is forgotten after the test

    @dataclass
    class ProbeConfig:
        pass

    class OodProbe(PromptMethod):
        def __init__(self, backbone, classnames, config, context=None):
            super().__init__(backbone, classnames, config, context)
            self.register_buffer("t", template_text_features(backbone, classnames, ["a photo of a {}."]),
                                 persistent=False)

        def text_features(self):
            return self.t

        def ood_score(self, features, kind, *, temperature=1.0):
            if kind != "probe":
                return super().ood_score(features, kind, temperature=temperature)
            g = features[:, 0] if features.dim() == 3 else features  # packed [B, 1 + P, E] when GL-MCM is asked
            return -(F.normalize(g.float(), dim=-1)[:, :3]).sum(-1)

        def ood_record(self):
            return {"corpus": "probe-words", "version": "1"}

    register_method("ood_probe", ProbeConfig, OodProbe,
                    capabilities=Capabilities(training="none", supervision="none", ood_scores=("probe",)))
    ood = make_imagefolder(tmp_path / "ood", classes=("x",), per_class=3, size=32) / "train"
    cfg = config_from_dict(tiny_config(tmp_path, tiny_imagefolder, method={"name": "ood_probe"}))
    import vlprompt

    r = vlprompt.ood(cfg, None, [str(ood)], progress=False)  # the public API
    assert r["method"] == "ood_probe" and r["scores"][:2] == ["probe", "mcm"]
    assert r["method_record"] == {"corpus": "probe-words", "version": "1"}
    from vlprompt.backbones.build import build_backbone
    from vlprompt.data.pipeline import load_dataset
    from vlprompt.tasks.ood import resolve_ood_set

    backbone = build_backbone(cfg.backbone, device="cpu")
    splits = load_dataset(cfg.data)
    _, items, _ = resolve_ood_set(str(ood), cfg)
    with torch.no_grad():
        score = [-(F.normalize(backbone.encode_image(_images(x, backbone)), dim=-1)[:, :3]).sum(-1)
                 for x in (splits.test, items)]
    assert r["per_set"]["train"]["probe"] == pytest.approx(ood_metrics(score[0].numpy(), score[1].numpy()), abs=1e-6)


def test_test_time_methods_are_refused_with_the_reason(tmp_path, tiny_imagefolder):
    from vlprompt.config import config_from_dict
    from vlprompt.core.errors import VlpromptError
    from vlprompt.tasks.ood import ood_evaluate

    cfg = config_from_dict(tiny_config(tmp_path, tiny_imagefolder, method={"name": "tpt"}))
    with pytest.raises(VlpromptError, match="protocol tta"):
        ood_evaluate(cfg, None, [str(tmp_path)], progress=False)


def test_the_report_averages_near_and_far_groups_over_seeds(tmp_path):
    """Two seeds' results with groups: the report's OOD table has a near- and a far-OOD average row, each the mean
    over seeds of the runs' group averages, and the comparison table a column per group."""
    import numpy as np

    from test_sweep_report import write_ood
    from vlprompt.report.build import make_report

    rng = np.random.default_rng(0)
    expected: dict[str, list[float]] = {"near": [], "far": []}
    for seed in (1, 2):
        folder = tmp_path / "runs" / f"seed{seed}" / "ood"
        r = write_ood(folder, "locoop", seed, rng, sets=("twin", "shapes", "textures"), save_scores=False)
        r["groups"] = {"twin": "near", "shapes": "near", "textures": "far"}
        r["group_average"] = {g: {s: {m: float(np.mean([r["per_set"][n][s][m] for n in r["groups"]
                                                        if r["groups"][n] == g])) for m in ("fpr95", "auroc", "aupr")}
                                  for s in r["scores"]} for g in ("near", "far")}
        (folder / "ood_results.json").write_text(json.dumps(r))
        for g in expected:
            expected[g].append(r["group_average"][g]["mcm"]["auroc"])
        write_ood(tmp_path / "runs" / "zs" / f"seed{seed}" / "ood", "zeroshot", seed, rng, save_scores=False)
    md = make_report(tmp_path / "runs", tmp_path / "rep")["markdown"]
    table = md[md.index("OOD: locoop"):]
    table = table[table.index("score MCM"):]
    for g, values in expected.items():
        line = next(x for x in table.splitlines() if x.startswith(f"| {g}-OOD average"))
        assert f"{np.mean(values):.2f} ± {np.std(values):.2f}" in line.split("|")[3]  # the AUROC column
    assert "near AUROC↑" in md and "far FPR95↓" in md


def test_ood_sets_find_their_group_however_the_papers_spell_them(tmp_path):
    """A folder named as MCM / LoCoOp name them (``iNaturalist``, ``dtd/images``) or a paper's spelling of a registered
    set (``SSB-hard``) gets the registered set's group; ``:near`` / ``:far`` overrides; one's own folder: none."""
    from vlprompt.tasks.ood import ood_group

    assert ood_group("iNaturalist") == "far" and ood_group("/data/iNaturalist/images") == "far"
    assert ood_group("dtd/images") == "far" and ood_group("SSB-hard") == "near" and ood_group("NINCO") == "near"
    assert ood_group("world_near_ood") == "near" and ood_group("world_ood_textures") == "far"
    assert ood_group("iNaturalist:near") == "near" and ood_group(str(tmp_path / "mine")) is None
