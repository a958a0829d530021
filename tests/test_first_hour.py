"""A user's first hour: train without a YAML file, ``--method``, packaged configs by name, ``config show``,
``--threads`` (issue 32 §1)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from vlprompt.cli.main import DEFAULT_RUN_DIR, main, set_threads
from vlprompt.config import PACKAGED_CONFIGS, load_config, packaged_config_names, resolve_config_path

TINY = ["--model", "vlprompt-test-vit", "--set", "backbone.pretrained=null", "--set", "data.num_workers=0",
        "--set", "train.device=cpu", "--set", "train.tensorboard=false", "--no-progress"]


@pytest.mark.slow
def test_train_without_a_config_file_uses_method_defaults_and_a_default_run_folder(tiny_imagefolder, tmp_path,
                                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--method", "kgcoop", "--dataset", "imagefolder", "--root", str(tiny_imagefolder),
            "--shots", "2", "--set", "optim.max_epoch=1", "--set", "optim.batch_size=4", *TINY]
    assert main(argv) == 0
    run = tmp_path / DEFAULT_RUN_DIR.format(method="kgcoop", dataset="imagefolder", model="vlprompt-test-vit",
                                            shots=2, seed=1)
    assert str(run.relative_to(tmp_path)) in capsys.readouterr().out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    defaults = load_config(None, ["data.dataset=imagefolder"], method="kgcoop")
    assert saved["method"] == defaults.method.as_dict()  # kgcoop's own defaults, nothing of CoOp's
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0


def test_method_flag_starts_from_the_new_methods_defaults(tmp_path):
    path = tmp_path / "coop.yaml"
    path.write_text(yaml.safe_dump({"method": {"name": "coop", "n_ctx": 4, "csc": True},
                                    "data": {"dataset": "dtd"}, "optim": {"lr": 0.1}}))
    with pytest.raises(Exception, match=r"unknown option 'method\.(n_ctx|csc)'.*--method zeroshot"):
        load_config(path, ["method.name=zeroshot"])  # the old way: CoOp's options stay behind
    cfg = load_config(path, [], method="zeroshot")
    assert cfg.method.name == "zeroshot" and cfg.optim.lr == 0.1  # other sections kept
    same = load_config(path, ["method.n_ctx=8"], method="coop")  # same method: its options kept, --set applies
    assert same.method.config.csc is True and same.method.config.n_ctx == 8
    other = load_config(path, ["method.n_ctx=2"], method="kgcoop")
    assert other.method.config.n_ctx == 2 and other.method.config.csc is False


def test_packaged_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = packaged_config_names("coop/dtd/")
    assert "coop/dtd/vit_b16_16shots" in names and all(n.startswith("coop/dtd/") for n in names)
    for spec in ("coop/dtd/vit_b16_16shots", "configs/coop/dtd/vit_b16_16shots.yaml", "coop/dtd/vit_b16_16shots.yaml"):
        assert resolve_config_path(spec) == PACKAGED_CONFIGS / "coop/dtd/vit_b16_16shots.yaml"
    assert load_config("coop/dtd/vit_b16_16shots").optim.max_epoch == 200
    with pytest.raises(Exception, match="Did you mean: coop/dtd/vit_b16_16shots"):
        resolve_config_path("coop/dtd/vit_b16_16shot")
    with pytest.raises(Exception, match="does not exist"):
        resolve_config_path("../../../etc/passwd")
    # the repository's configs/ folder is the packaged one (a link), so both spellings are one file
    repo_configs = PACKAGED_CONFIGS.parents[2] / "configs"
    if repo_configs.exists():
        assert repo_configs.resolve() == PACKAGED_CONFIGS


def test_config_show_writes_a_config_that_loads_back_to_the_same(tmp_path, capsys):
    assert main(["config", "show", "coop/dtd/vit_b16_16shots", "--set", "optim.lr=0.01"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(text)
    again = load_config(tmp_path / "c.yaml")
    assert again.as_dict() == load_config("coop/dtd/vit_b16_16shots", ["optim.lr=0.01"]).as_dict()
    assert main(["config", "show", "tcp"]) == 0  # a method's defaults: the dataset is left for the user
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["method"]["name"] == "tcp" and shown["data"]["dataset"] == "REQUIRED"
    assert main(["config", "list", "world/"]) == 0
    assert "world/coop_world" in capsys.readouterr().out.split()


def test_threads_option_sets_torch_and_the_environment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert set_threads(None) == 1  # default: $OMP_NUM_THREADS (now 1)
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert set_threads(None) == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)
    assert main(["zeroshot", "--threads", "0", "--dataset", "x"]) == 2
