"""Import of checkpoints written by the published CoOp / CoCoOp code (Dassl layout), read safely."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from vlprompt.core.errors import CheckpointError
from vlprompt.tasks.import_coop import import_dassl_prompt, read_dassl_prompt

CLASSES = ["cat", "dog", "bird"]


class ConstantWarmupScheduler(LRScheduler):  # Dassl's, enough to reproduce its state_dict layout
    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        return [self.cons_lr for _ in self.base_lrs]


def _dassl_checkpoint(path, ctx, extra=None):
    params = [torch.nn.Parameter(ctx.clone())]
    optim = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    sched = ConstantWarmupScheduler(optim, CosineAnnealingLR(optim, T_max=50), 1, 1e-5)
    state = {"ctx": ctx, "token_prefix": torch.randn(3, 1, ctx.shape[-1]),
             "token_suffix": torch.randn(3, 60, ctx.shape[-1]), **(extra or {})}
    torch.save({"state_dict": state, "epoch": 50, "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                "val_result": None}, path)


def test_coop_checkpoint_imports_and_predicts_like_the_learned_context(tmp_path, vit_backbone):
    ctx = torch.randn(16, vit_backbone.text_width) * 0.02
    path = tmp_path / "model.pth.tar-50"
    _dassl_checkpoint(path, ctx)
    method, tensors, info = read_dassl_prompt(path)
    assert method == "coop" and info["epoch"] == 50 and info["dropped"] == ["token_prefix", "token_suffix"]
    model = import_dassl_prompt(path, vit_backbone, CLASSES)
    torch.testing.assert_close(model.ctx, ctx)
    assert model.text_features().shape == (3, vit_backbone.embed_dim)


def test_cocoop_checkpoint_imports(tmp_path, vit_backbone):
    e, d = vit_backbone.embed_dim, vit_backbone.text_width
    extra = {"meta_net.linear1.weight": torch.randn(e // 16, e), "meta_net.linear1.bias": torch.randn(e // 16),
             "meta_net.linear2.weight": torch.randn(d, e // 16), "meta_net.linear2.bias": torch.randn(d)}
    path = tmp_path / "model.pth.tar-10"
    _dassl_checkpoint(path, torch.randn(4, d), extra)
    model = import_dassl_prompt(path, vit_backbone, CLASSES)
    assert model.method_name == "cocoop"
    torch.testing.assert_close(model.meta_net.linear2.bias, extra["meta_net.linear2.bias"])


def test_wrong_backbone_and_malicious_files_are_refused(tmp_path, vit_backbone):
    path = tmp_path / "wide.pth.tar-1"
    _dassl_checkpoint(path, torch.randn(16, 512))
    with pytest.raises(CheckpointError, match="another backbone"):
        import_dassl_prompt(path, vit_backbone, CLASSES)

    class Boom:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    evil = tmp_path / "evil.pth.tar-1"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {"ctx": Boom()}}, f)
    with pytest.raises(CheckpointError):
        read_dassl_prompt(evil)
    assert not (tmp_path / "PWNED").exists()


def test_import_coop_cli_then_eval(tmp_path, tiny_imagefolder, vit_backbone):
    from vlprompt.cli.main import main

    from conftest import tiny_config, write_config

    cfg = write_config(tmp_path / "c.yaml", **tiny_config(tmp_path, tiny_imagefolder))
    ckpt = tmp_path / "model.pth.tar-50"
    _dassl_checkpoint(ckpt, torch.randn(16, vit_backbone.text_width) * 0.02)
    out = tmp_path / "imported.safetensors"
    assert main(["import-coop", str(ckpt), "-c", str(cfg), "-o", str(out)]) == 0
    assert main(["eval", "-c", str(cfg), "--prompt", str(out), "--no-progress"]) == 0
    assert (tmp_path / "eval_imagefolder_test.json").exists()
