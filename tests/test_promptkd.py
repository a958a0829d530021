"""PromptKD (Li et al., CVPR 2024) against an independent re-implementation of the authors' student forward and
distillation loss (zhengli97/PromptKD at ec244f7, trainers/promptkd.py; clip/model.py), written from reading their
code: teacher = a CoOp prompt on the tiny ResNet tower, student = deep vision prompts + the two-layer projector on
the tiny ViT tower, same random weights. Plus: the labels never reach the loss, the student's prompt file predicts
base / new subsets without the teacher, a teacher prompt file on another backbone, the teacher trained inside the
run, and the transductive base-to-new protocol."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.openclip import load_backbone
from vlprompt.core.errors import ConfigError
from vlprompt.engine.checkpoint import load_prompt, save_prompt
from vlprompt.methods.registry import build_method, get_method

from conftest import tiny_config, write_config

NAMES = ["red thing", "green thing", "blue thing", "cyan thing"]


@pytest.fixture(scope="module")
def towers(vit_backbone):
    return load_backbone("vlprompt-test-rn"), vit_backbone


class RefTwoLayer(nn.Module):
    """trainers/promptkd.py l.22-36: 1x1 conv, BatchNorm2d, ReLU, 1x1 conv on ``[B, E, 1, 1]``."""

    def __init__(self, e_in, e_out):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(e_in, e_out, 1), nn.BatchNorm2d(e_out), nn.ReLU(inplace=True),
                                   nn.Conv2d(e_out, e_out, 1))

    def forward(self, x):
        return self.conv1(x.unsqueeze(-1).unsqueeze(-1)).squeeze(-1).squeeze(-1)


def ref_vit_ivlp(visual, images, first, deep):
    """clip/model.py VisionTransformer.forward l.385-421 with ResidualAttentionBlock_IVLP l.191-256: prompts appended
    after the patch tokens before ln_pre; at blocks 1..J-1 the last n tokens are replaced by that block's prompts."""
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    n = first.shape[0]
    x = torch.cat([x, first.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    batch_first = getattr(visual.transformer, "batch_first", True)
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :-n], deep[i - 1].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
    return visual.ln_post(x[:, 0]) @ visual.proj


def _teacher(rn):
    torch.manual_seed(1)
    teacher = build_method("coop", rn, NAMES, n_ctx=2)
    with torch.no_grad():
        teacher.prompt_learner.ctx.add_(0.5 * torch.randn_like(teacher.prompt_learner.ctx))
    return teacher.eval()


def _student(vit, teacher, **options):
    torch.manual_seed(2)
    student = build_method("promptkd", vit, NAMES, n_ctx_vision=2, prompt_depth_vision=2, temperature=2.0,
                           kd_weight=7.0, **options)
    student.set_teacher(teacher)
    with torch.no_grad():
        for _, p in student.learned_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student


def test_forward_loss_and_gradients_match_the_authors(towers):
    rn, vit = towers
    teacher = _teacher(rn)
    student = _student(vit, teacher).train()
    images = torch.randn(5, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3, 0])
    out = student.training_loss(student.encode_images(images), labels)
    out.total().backward()

    # reference: the teacher's stored text features and logits (CustomCLIP_teacher.forward l.270-286)
    with torch.no_grad():
        tea_text = F.normalize(teacher.text_features().float(), dim=-1)
        timg = F.interpolate(images, size=(rn.image_size,) * 2, mode="bicubic", align_corners=False)
        tea_img = F.normalize(rn.encode_image(timg).float(), dim=-1)
        tea_logits = rn.logit_scale * tea_img @ tea_text.t()
    # reference student (CustomCLIP.forward l.250-257) with the same prompts and projector weights
    ctx = student.vision_ctx.detach().clone().requires_grad_(True)
    deep = [p.detach().clone().requires_grad_(True) for p in student.vision_deep]
    proj = RefTwoLayer(vit.embed_dim, tea_text.shape[1]).train()
    lin1, bn, _, lin2 = student.projector
    with torch.no_grad():
        proj.conv1[0].weight.copy_(lin1.weight[:, :, None, None])
        proj.conv1[0].bias.copy_(lin1.bias)
        proj.conv1[1].weight.copy_(bn.weight)
        proj.conv1[1].bias.copy_(bn.bias)
        proj.conv1[3].weight.copy_(lin2.weight[:, :, None, None])
        proj.conv1[3].bias.copy_(lin2.bias)
    feats = proj(ref_vit_ivlp(vit.model.visual, images, ctx, deep))
    feats = feats / feats.norm(dim=-1, keepdim=True)
    stu_logits = vit.logit_scale * feats @ tea_text.t()  # the student's logit scale (l.251, l.408)
    t = 2.0
    l_ukd = F.kl_div(F.log_softmax(stu_logits / t, dim=1), F.softmax(tea_logits / t, dim=1),
                     reduction="sum") * (t * t) / stu_logits.numel()  # l.410-414
    loss = 7.0 * l_ukd  # KD_WEIGHT, l.416
    loss.backward()

    torch.testing.assert_close(out.logits, stu_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.total(), loss, rtol=1e-5, atol=1e-6)
    # gradients: near-zero elements get an absolute tolerance relative to the largest one (float32 summation order
    # differs between machines: a CI run differed by 1.25e-6 on a 1024-element projector gradient)
    for ours, ref in ((student.vision_ctx.grad, ctx.grad), (student.vision_deep[0].grad, deep[0].grad),
                      (lin1.weight.grad, proj.conv1[0].weight.grad[:, :, 0, 0])):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(bn.running_mean, proj.conv1[1].running_mean)  # BN statistics updated alike


def test_labels_never_reach_the_loss(towers):
    rn, vit = towers
    student = _student(vit, _teacher(rn)).train()
    images = torch.randn(4, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(4))
    feats = student.encode_images(images).detach()
    grads = []
    for labels in (torch.tensor([0, 1, 2, 3]), torch.tensor([3, 3, 3, 3]), torch.tensor([-7, 99, 5, 1])):
        student.zero_grad()
        out = student.training_loss(feats.clone().requires_grad_(True), labels)
        out.total().backward()
        grads.append((float(out.total().detach()), [p.grad.clone() for _, p in student.learned_parameters()
                                           if p.grad is not None]))
    assert get_method("promptkd").capabilities_for().supervision == "none"
    for value, g in grads[1:]:
        assert value == grads[0][0]
        assert all(torch.equal(a, b) for a, b in zip(g, grads[0][1]))


def test_the_prompt_file_predicts_subsets_without_the_teacher(towers, tmp_path, monkeypatch):
    rn, vit = towers
    student = _student(vit, _teacher(rn), projector="linear").eval()
    path = save_prompt(tmp_path / "student.safetensors", student)
    import vlprompt.methods.promptkd.teacher as teacher_mod

    def no_teacher(_):
        raise AssertionError("the teacher was loaded to evaluate the student")

    monkeypatch.setattr(teacher_mod, "load_teacher", no_teacher)
    images = torch.randn(3, 3, vit.image_size, vit.image_size)
    new = load_prompt(path, vit, NAMES[2:], allow_new_classes=True)
    with torch.no_grad():
        torch.testing.assert_close(new(images), student(images)[:, 2:], rtol=0, atol=1e-6)
    other = load_prompt(path, vit, ["purple thing"], allow_new_classes=True)
    with pytest.raises(ConfigError, match="not for 'purple thing'"):
        other(images)


def test_a_teacher_prompt_file_on_the_other_backbone(towers, tmp_path):
    rn, vit = towers
    teacher = _teacher(rn)
    tpath = save_prompt(tmp_path / "teacher.safetensors", teacher)
    student = build_method("promptkd", vit, NAMES, teacher_prompt=str(tpath), n_ctx_vision=2).train()
    assert student.teacher().backbone.name == rn.name and student.teacher().method_name == "coop"
    torch.testing.assert_close(student.text_features(), F.normalize(teacher.text_features(), dim=-1))
    feats = student.encode_images(torch.randn(2, 3, vit.image_size, vit.image_size))
    assert feats.shape == (2, rn.embed_dim + len(NAMES))


def test_teacher_trained_in_the_run_then_transductive_base2new(tmp_path, tiny_imagefolder):
    """The teacher config is trained into <run>/teacher/ on the base classes (labels); the student on the unlabeled
    images of all classes; base and new are tested from that one prompt."""
    from vlprompt.cli.main import main

    teacher_cfg = write_config(tmp_path / "teacher.yaml", **tiny_config(
        tmp_path, tiny_imagefolder, method={"name": "coop", "n_ctx": 2},
        optim={"max_epoch": 1, "batch_size": 4}, train={"output_dir": "unused"}))
    raw = tiny_config(tmp_path, tiny_imagefolder, optim={"max_epoch": 1, "batch_size": 4},
                      data={"shots": 2, "augment": False}, train={"output_dir": str(tmp_path / "unused")})
    raw["method"] = {"name": "promptkd", "n_ctx_vision": 2, "prompt_depth_vision": 2, "projector": "linear",
                     "teacher_config": str(teacher_cfg)}
    out = tmp_path / "b2n"
    assert main(["protocol", "base2new", "-c", str(write_config(tmp_path / "s.yaml", **raw)), "--seeds", "1",
                 "-o", str(out)]) == 0
    run = out / "seed1"
    teacher_meta = json.loads((run / "teacher" / "prompt.json").read_text())
    student_meta = json.loads((run / "prompt.json").read_text())
    assert student_meta["classnames"] == ["blue thing", "green thing", "red thing"]  # all classes, unlabeled
    assert teacher_meta["method"] == "coop" and teacher_meta["classnames"] == ["blue thing", "green thing"]  # base
    assert student_meta["config"]["teacher_prompt"] == str(run / "teacher" / "prompt.safetensors")
    result = json.loads((out / "base2new_results.json").read_text())
    assert set(result["summary"]) == {"base", "new", "H"}
