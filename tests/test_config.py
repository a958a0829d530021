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


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_configs", REPO / "scripts" / "make_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.world
def test_every_shipped_config_loads(monkeypatch, tmp_path):
    """Every shipped config goes through vlprompt's loader (each section and method option validated;
    nothing is built); a generated one (== the generator's text, next test) also runs the method its
    folder names and starts with a header naming its sources."""
    from vlprompt.methods.registry import list_methods

    files = sorted(f for f in (REPO / "configs").rglob("*.yaml") if "sweeps" not in f.parts)
    generated = set(_generator().expected_files())
    assert len(files) >= 600
    families = {f.relative_to(REPO / "configs").parts[0] for f in generated if "sweeps" not in f.parts}
    assert families >= {"coop", "cocoop", "upl", "locoop", "kgcoop", "prograd", "ivlp", "deep_language", "vpt_deep",
                        "maple", "promptsrc", "linear_probe", "clip_adapter", "tip_adapter", "tip_adapter_f",
                        "clip_lora"}
    # comparison runs shipped with a paper's configs; PromptKD's teachers (PromptSRC on ViT-L/14)
    also = {"cocoop": ("coop",), "prograd": ("coop",), "promptkd": ("promptsrc",)}
    for f in files:
        cfg = load_config(f)
        assert cfg.method.name in list_methods()
        if f in generated:
            family = f.relative_to(REPO / "configs").parts[0]
            assert cfg.method.name == family or cfg.method.name in also.get(family, ()), f
            assert f.read_text().startswith("#"), f"{f}: no header naming its source"
    import itertools

    from vlprompt.tasks.sweep import build_config, load_sweep, split_method

    monkeypatch.chdir(REPO)  # sweep files name their configs relative to the repository
    sweeps = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert {f.stem for f in sweeps} >= {"coop_fewshot", "cocoop_base2new", "cocoop_dg", "cocoop_xd",
                                         "upl_unsupervised", "locoop_ood", "world_fewshot", "kgcoop_base2new",
                                         "prograd_base2new", "prograd_fewshot", "maple_base2new", "maple_xd",
                                         "maple_dg", "promptsrc_base2new", "promptsrc_xd", "promptsrc_dg",
                                         "promptsrc_fewshot", "adapters_fewshot", "clip_lora_fewshot"}
    for f in sweeps:
        sw = load_sweep(f)
        assert sw.datasets and sw.seeds
        for method, bb, dataset, shots in itertools.product(sw.methods, sw.backbones, sw.datasets, sw.shots):
            cfg = build_config(sw, method, bb, dataset, shots, 1, tmp_path / "run")  # every combination resolves
            # "A+B" (tpt+coop): method A, starting from the prompt B learns
            assert cfg.data.dataset == dataset and (method is None or cfg.method.name == split_method(method)[0])


def test_shipped_configs_are_in_sync_with_their_generator():
    for path, text in _generator().expected_files().items():
        assert path.read_text() == text, f"{path} is stale: run python scripts/make_configs.py"


def test_new_paper_settings():
    """A few values of each new family, as the authors' files give them (see each file's header)."""
    cfg = load_config(REPO / "configs/kgcoop/base2new/dtd_vit_b16.yaml")
    kg, optim = cfg.method.config, cfg.optim
    assert (kg.w, kg.n_ctx, kg.ctx_init, optim.batch_size, optim.max_epoch) == (8.0, 4, "a photo of a", 128, 100)
    assert cfg.data.subsample_classes == "base" and cfg.data.templates == ["a photo of a {}, a type of texture."]
    assert load_config(REPO / "configs/prograd/fewshot/dtd/rn50_16shots.yaml").method.config.lambda_value == 0.8
    assert load_config(REPO / "configs/prograd/fewshot/dtd/rn50_4shots.yaml").method.config.lambda_value == 1.0
    cfg = load_config(REPO / "configs/prograd/base2new/imagenet_rn50_4shots.yaml")
    assert (cfg.data.shots, cfg.optim.max_epoch, cfg.backbone.model) == (4, 50, "RN50-quickgelu")
    cfg = load_config(REPO / "configs/maple/xd_imagenet_vit_b16.yaml")
    assert (cfg.method.config.prompt_depth, cfg.optim.lr, cfg.optim.max_epoch, cfg.optim.batch_size) == (
        3, 0.0026, 2, 4)
    cfg = load_config(REPO / "configs/promptsrc/fewshot/dtd/vit_b16_1shots.yaml")
    assert (cfg.method.config.gpa_mean, cfg.method.config.gpa_std, cfg.optim.max_epoch) == (45.0, 5.0, 50)
    assert load_config(REPO / "configs/promptsrc/fewshot/sun397/vit_b16_8shots.yaml").method.config.gpa_mean == 30.0
    cfg = load_config(REPO / "configs/tip_adapter/fgvc_aircraft/rn50_2shots.yaml")
    assert (cfg.method.config.search_scale, cfg.method.config.init_alpha) == ([30.0, 30.0], 5.0)
    assert load_config(REPO / "configs/tip_adapter/imagenet/rn50_1shots.yaml").data.templates == "imagenet_select"
    cfg = load_config(REPO / "configs/tip_adapter_f/eurosat/rn50_16shots.yaml")
    assert (cfg.optim.name, cfg.optim.max_epoch, cfg.optim.batch_size, cfg.optim.warmup_epoch) == ("adamw", 100, 256, 0)
    assert (cfg.optim.eps, cfg.optim.scheduler_step) == (1e-4, "iteration")  # Tip-Adapter main.py l.72-73
    cfg = load_config(REPO / "configs/ape_t/food101/rn50_2shots.yaml")  # APE configs/food101.yaml l.16
    assert (cfg.optim.eps, cfg.optim.scheduler_step) == (0.01, "iteration")
    assert load_config(REPO / "configs/ape_t/food101/rn50_4shots.yaml").optim.eps == 0.001
    cfg = load_config(REPO / "configs/clip_lora/imagenet/vit_b16_16shots.yaml")
    assert (cfg.optim.lr, cfg.optim.max_epoch, cfg.optim.iterations, cfg.method.config.r, cfg.backbone.model) == (
        2e-4, None, 8000, 2, "ViT-B-16-quickgelu")
    assert (cfg.optim.eps, cfg.optim.scheduler_step) == (None, "iteration")  # CLIP-LoRA lora.py l.75-76
    cfg = load_config(REPO / "configs/clip_adapter/dtd/rn50_1shots.yaml")
    assert (cfg.method.config.ratio, cfg.optim.max_epoch) == (0.2, 50)


def test_promptsrc_sweep_runs_promptsrc_own_ivlp(monkeypatch):
    """PromptSRC's README IVLP row (README.md l.105-112) comes from its own configs/trainers/IVLP/
    vit_b16_c2_ep20_batch4_4+4ctx.yaml (N_CTX 4+4 l.34-35, depth 9 l.38-39, LR 0.0025 l.18, 20 epochs l.19,
    batch 4 l.4), not the MaPLe repository's 2+2-context, 5-epoch file: the sweep resolves to the former."""
    from vlprompt.tasks.sweep import build_config, load_sweep

    monkeypatch.chdir(REPO)
    sw = load_sweep(REPO / "configs/sweeps/promptsrc_base2new.yaml")
    for dataset in ("imagenet", "dtd"):
        cfg = build_config(sw, "ivlp", None, dataset, 16, 1, REPO / "runs" / "unused")
        m, o = cfg.method.config, cfg.optim
        assert (cfg.method.name, m.n_ctx_text, m.n_ctx_vision, m.ctx_init, m.prompt_depth_text,
                m.prompt_depth_vision) == ("ivlp", 4, 4, "a photo of a", 9, 9)
        assert (o.name, o.lr, o.max_epoch, o.batch_size, o.warmup_epoch, o.warmup_lr) == ("sgd", 0.0025, 20, 4, 1, 1e-5)
        assert (cfg.data.dataset, cfg.data.shots, cfg.data.subsample_classes) == (dataset, 16, "base")
        shipped = load_config(REPO / f"configs/ivlp/base2new/{dataset}_vit_b16_promptsrc.yaml")
        assert (shipped.method, shipped.optim) == (cfg.method, cfg.optim)  # the sweep runs the shipped file
    # the MaPLe repository's IVLP stays what maple_base2new runs
    maple = load_config(REPO / "configs/ivlp/base2new/dtd_vit_b16.yaml")
    assert (maple.method.config.n_ctx_text, maple.method.config.prompt_depth_text, maple.optim.max_epoch) == (2, 12, 5)


def test_clip_adapter_configs_run_fp32_as_the_authors():
    """CLIP-Adapter casts CLIP to fp32 (gaopengcuhk/CLIP-Adapter clip_adapter.py l.128 ``clip_model.float()``, no
    autocast): every shipped CLIP-Adapter config computes in fp32 with fp32 weights, and says why."""
    files = sorted((REPO / "configs" / "clip_adapter").rglob("*.yaml"))
    assert len(files) == 55
    for f in files:
        cfg = load_config(f)
        assert (cfg.train.compute_precision, cfg.backbone.weight_dtype) == ("fp32", "fp32"), f
        text = f.read_text()
        assert "clip_model.float()" in text and "PREC fp16" not in text, f


def test_paper_settings():
    cfg = load_config(REPO / "configs/coop/imagenet/vit_b16_16shots.yaml")
    assert cfg.optim.max_epoch == 50 and cfg.backbone.model == "ViT-B-16-quickgelu"
    cfg = load_config(REPO / "configs/coop/dtd/rn50_2shots.yaml")
    assert (cfg.optim.max_epoch, cfg.data.shots, cfg.method.config.n_ctx) == (100, 2, 16)
    cfg = load_config(REPO / "configs/cocoop/base2new/dtd_cocoop_vit_b16.yaml")
    assert (cfg.method.name, cfg.method.config.n_ctx, cfg.optim.max_epoch, cfg.data.subsample_classes) == (
        "cocoop", 4, 10, "base")


def test_iterations_are_rounded_up_to_whole_epochs():
    from vlprompt.config import OptimConfig
    from vlprompt.core.errors import ConfigError
    from vlprompt.engine.features import train_batches
    from vlprompt.engine.optim import epochs_for

    def steps(n_train: int, batch_size: int = 32) -> int:  # what the trainer passes: its loaders' batches
        return len(train_batches(n_train, batch_size))

    # CLIP-LoRA on ImageNet, 16 shots: 8000 iterations of 16000 // 32 = 500 steps -> 16 epochs
    assert epochs_for(OptimConfig(iterations=8000, batch_size=32), "imagenet", 16, steps(16_000)) == 16
    # 47 classes x 4 shots = 188 images: 5 steps per epoch (drop_last), 2000 iterations -> 400 epochs
    assert steps(188) == 5 and epochs_for(OptimConfig(iterations=2000), "dtd", 4, steps(188)) == 400
    assert epochs_for(OptimConfig(iterations=7), "dtd", 1, steps(10)) == 7  # fewer images than a batch: one step
    assert epochs_for(OptimConfig(iterations=11, batch_size=5), "dtd", 1, steps(10, 5)) == 6  # >= 11 steps: 12
    assert epochs_for(OptimConfig(max_epoch=3), "dtd", 1, steps(10)) == 3
    assert epochs_for(OptimConfig(), "dtd", 16, steps(752)) == 200  # CoOp's rule
    with pytest.raises(ConfigError, match="optim.max_epoch and optim.iterations"):
        OptimConfig(max_epoch=3, iterations=100)
    with pytest.raises(ConfigError, match="optim.iterations"):
        OptimConfig(iterations=0)
