"""Config loading: 1:1 mapping to dataclasses, every bad key/value/YAML named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlprompt.config import config_from_dict, load_config
from vlprompt.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_sections_map_onto_dataclasses(tmp_path):
    p = _write(tmp_path, """
method: {name: coop, n_ctx: 8, ctx_init: a photo of a, csc: true, class_token_position: middle}
backbone: {model: ViT-B-16-quickgelu, pretrained: openai}
data: {dataset: oxford_pets, root: /data, shots: 4}
optim: {lr: 0.002, max_epoch: 100}
train: {seed: 2, output_dir: runs/x}
""")
    cfg = load_config(p)
    assert cfg.method.name == "coop" and cfg.method.config.n_ctx == 8 and cfg.method.config.csc is True
    assert cfg.method.config.ctx_init == "a photo of a"
    assert cfg.backbone.model == "ViT-B-16-quickgelu" and cfg.data.shots == 4 and cfg.optim.max_epoch == 100
    assert cfg.train.seed == 2
    # the resolved dict round-trips
    assert config_from_dict(cfg.as_dict()).as_dict() == cfg.as_dict()


def test_overrides_are_parsed_as_yaml(tmp_path):
    p = _write(tmp_path, "method: {name: coop}\ndata: {dataset: dtd}\n")
    cfg = load_config(p, ["method.csc=true", "optim.lr=1e-3", "data.options.classnames_file=x.txt",
                          "method.ctx_init=a photo of a"])
    assert cfg.method.config.csc is True and cfg.optim.lr == 1e-3
    assert cfg.data.options == {"classnames_file": "x.txt"}
    assert cfg.method.config.ctx_init == "a photo of a"


@pytest.mark.parametrize("text,match", [
    ("method: {name: coop}\ndata: {dataset: dtd}\noptim: {lrr: 0.1}\n", r"unknown option 'optim.lrr'.*optim.lr"),
    ("method: {name: coop, nctx: 2}\ndata: {dataset: dtd}\n", r"unknown option 'method.nctx'"),
    ("method: {name: coop}\ndata: {dataset: dtd}\noptim: {lr: fast}\n", r"optim.lr must be a number"),
    ("method: {name: coop}\ndata: {dataset: dtd, shots: 0}\n", r"data.shots must be >= 1"),
    ("method: {name: coop}\ndata: {dataset: dtd}\ntrain: {precision: fp8}\n",
     r"train.compute_precision must be one of"),
    ("method: {name: coopp}\ndata: {dataset: dtd}\n", r"unknown method 'coopp'.*coop"),
    ("method: {name: coop}\ndatta: {dataset: dtd}\n", r"unknown config section 'datta'.*data"),
    ("method: {name: coop}\ndata: {}\n", r"data.dataset is required"),
    ("method: {name: coop}\ndata: {dataset: dtd}\noptim: {batch_size: true}\n", r"optim.batch_size must be an integer"),
])
def test_bad_values_are_named(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    p = _write(tmp_path, "method:\n  name: coop\ndata: {dataset: dtd\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml' at line \d+, column \d+"):
        load_config(p)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_output_dir_placeholders(tmp_path):
    cfg = load_config(None, ["data.dataset=dtd", "train.output_dir=runs/{method}/{dataset}/{shots}shots/seed{seed}"])
    assert cfg.resolve_output_dir() == "runs/coop/dtd/16shots/seed1"
    cfg = load_config(None, ["data.dataset=dtd", "train.output_dir=runs/{bogus}"])
    with pytest.raises(ConfigError, match="placeholder"):
        cfg.resolve_output_dir()


def test_every_shipped_config_loads(monkeypatch, tmp_path):
    files = sorted(f for f in (REPO / "configs").rglob("*.yaml") if "sweeps" not in f.parts)
    assert len(files) >= 110
    for f in files:
        load_config(f)
    import itertools

    from vlprompt.tasks.sweep import build_config, load_sweep

    monkeypatch.chdir(REPO)  # sweep files name their configs relative to the repository
    sweeps = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert {f.stem for f in sweeps} >= {"coop_fewshot", "cocoop_base2new", "cocoop_dg", "cocoop_xd",
                                         "upl_unsupervised", "locoop_ood", "world_fewshot"}
    for f in sweeps:
        sw = load_sweep(f)
        assert sw.datasets and sw.seeds
        for method, bb, dataset, shots in itertools.product(sw.methods, sw.backbones, sw.datasets, sw.shots):
            cfg = build_config(sw, method, bb, dataset, shots, 1, tmp_path / "run")  # every combination resolves
            assert cfg.data.dataset == dataset and (method is None or cfg.method.name == method)


def test_shipped_configs_are_in_sync_with_their_generator():
    script = "make_configs"
    import importlib.util

    spec = importlib.util.spec_from_file_location(script, REPO / "scripts" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, text in module.expected_files().items():
        assert path.read_text() == text, f"{path} is stale: run python scripts/{script}.py"


def test_paper_settings():
    cfg = load_config(REPO / "configs/coop/imagenet/vit_b16_16shots.yaml")
    assert cfg.optim.max_epoch == 50 and cfg.backbone.model == "ViT-B-16-quickgelu"
    cfg = load_config(REPO / "configs/coop/dtd/rn50_2shots.yaml")
    assert (cfg.optim.max_epoch, cfg.data.shots, cfg.method.config.n_ctx) == (100, 2, 16)
    cfg = load_config(REPO / "configs/cocoop/base2new/dtd_cocoop_vit_b16.yaml")
    assert (cfg.method.name, cfg.method.config.n_ctx, cfg.optim.max_epoch, cfg.data.subsample_classes) == (
        "cocoop", 4, 10, "base")
