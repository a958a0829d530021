"""ID-Like against an independent re-implementation of what the authors' code computes; options; shipped configs.

The reference (:class:`AuthorsIDLike`) is written here from ycfate/ID-like@9acb908 (the authors' upload; cited
file:line) on the open_clip model's own modules: the crops encoded by ``model.visual`` and ranked per image
against ``"a photo of a {label}."`` (``utils/id_like.py`` l.18-27, 38-55), the ID and OOD prompts built as full
77-token sequences through the text transformer (``utils/id_like_utils.py`` l.25-45, 95-112, 173-193, 273-282; no
shared prefix), the loss with its pairwise ``cosine_embedding_loss`` loop (``utils/id_like_loss.py`` l.12-46) and
the score of ``get_result`` (``utils/id_like.py`` l.141-162), negated as ``utils/common.py`` l.158 does before its
metrics. The authors run fp16 on GPU; both sides here run fp32 on CPU. vlprompt's side runs its own code paths:
``fit`` on a FitData, ``training_loss`` on the batch images' features, the shared-prefix text pass, ``ood_score``.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.core.errors import ConfigError
from vlprompt.engine.loss_step import backward_terms
from vlprompt.methods.registry import build_method

REPO = Path(__file__).resolve().parents[1]
NAMES = ["red thing", "green thing", "blue thing"]
OPTS = {"n_ctx": 4, "n_ex_ctx": 3, "n_ex_prompts": 5, "n_crop": 10, "n_selection": 3, "crop_rounds": 2,
        "lam_in": 1.0, "lam_out": 0.3, "lam_diff": 0.2}
TOL = {"rtol": 1e-4, "atol": 2e-5}  # the shared-prefix text pass and the full one differ by float rounding only


class AuthorsIDLike:
    """What ycfate/ID-like@9acb908 computes, on an open_clip ``model`` (see the module doc)."""

    def __init__(self, model, classnames: list[str], ctx: Tensor, ex_ctx: Tensor, ex_cls: Tensor, *,
                 n_selection: int, lam_in: float, lam_out: float, lam_diff: float) -> None:
        self.model, self.classnames = model, classnames
        self.ctx, self.ex_ctx, self.ex_cls = ctx, ex_ctx, ex_cls
        self.k, self.lam = n_selection, (lam_in, lam_out, lam_diff)
        m, m_ex = ctx.shape[0], ex_ctx.shape[0]
        # id_like_utils.py l.80, 93, 104-112: "X .. X name." (ID), "X .. X X." with a learned class token (OOD)
        self.id_tokens = open_clip.tokenize([" ".join(["X"] * m) + f" {c}." for c in classnames])
        self.ex_tokens = open_clip.tokenize([" ".join(["X"] * m_ex) + " X."] * ex_cls.shape[0])
        with torch.no_grad():
            self.id_emb = model.token_embedding(self.id_tokens)
            self.ex_emb = model.token_embedding(self.ex_tokens)

    def _text_encoder(self, prompts: Tensor, tokens: Tensor) -> Tensor:
        """TextEncoder.forward, id_like_utils.py l.34-45 (open_clip's blocks are batch-first)."""
        x = prompts + self.model.positional_embedding
        x = self.model.transformer(x, attn_mask=self.model.attn_mask)
        x = self.model.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.model.text_projection

    def text_features(self) -> Tensor:
        """get_text_features (l.273-282), normalised as id_like.py l.103-104: ``[n_cls + n_ex, E]``."""
        n, m = len(self.classnames), self.ctx.shape[0]
        ids = torch.cat([self.id_emb[:, :1], self.ctx.unsqueeze(0).expand(n, -1, -1), self.id_emb[:, 1 + m:]], 1)
        n_ex, m_ex = self.ex_cls.shape[0], self.ex_ctx.shape[0]
        oods = torch.cat([self.ex_emb[:, :1], self.ex_ctx.unsqueeze(0).expand(n_ex, -1, -1), self.ex_cls,
                          self.ex_emb[:, 1 + m_ex + 1:]], 1)  # l.110: the suffix after the class token
        t = self._text_encoder(torch.cat([ids, oods]), torch.cat([self.id_tokens, self.ex_tokens]))
        return t / t.norm(dim=-1, keepdim=True)

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()

    @torch.no_grad()
    def select(self, crop_images: Tensor, label: int) -> tuple[Tensor, Tensor]:
        """get_in_out for one image (id_like.py l.38-55): its crops ``[V, 3, H, W]`` -> (ID, ID-like) ``[k, E]``."""
        prompt = open_clip.tokenize([f"a photo of a {self.classnames[label]}."])  # l.41-44
        text = self.model.encode_text(prompt)
        text = text / text.norm(dim=-1, keepdim=True)
        feats = self.model.visual(crop_images)
        feats = feats / feats.norm(dim=-1, keepdim=True)  # l.49-50
        sim = torch.max(feats @ text.t(), dim=1, keepdim=True)[0]  # l.52-53
        idx_in = torch.topk(sim, dim=0, k=self.k)[1].squeeze()  # select_in_out l.20-23
        idx_out = torch.topk(-sim, dim=0, k=self.k)[1].squeeze()
        return feats.index_select(0, idx_in), feats.index_select(0, idx_out)

    def loss(self, f_in: Tensor, f_out: Tensor, targets: Tensor) -> Tensor:
        """get_loss (id_like_loss.py l.12-46) on the concatenated crops of a batch."""
        text, scale = self.text_features(), self.logit_scale()
        n_cls = len(self.classnames)
        loss_in = F.cross_entropy(scale * f_in @ text.t(), targets)
        probs = F.softmax(scale * f_out @ text.t(), dim=1)
        flag = torch.tensor([0] * n_cls + [1] * (text.shape[0] - n_cls))
        loss_out = torch.mean(torch.log(torch.sum(probs * (1 - flag), dim=1) + 1e-16))
        loss_diff = self.diversity(text[n_cls:])
        return (loss_in * self.lam[0] + loss_out * self.lam[1] + loss_diff * self.lam[2]).squeeze()

    @staticmethod
    def diversity(out_text: Tensor) -> Tensor:
        """loss_diff, id_like_loss.py l.36-43: the pairwise cosine_embedding_loss (target -1) loop."""
        loss_diff = torch.zeros(1)
        for p in range(out_text.shape[0] - 1):
            for q in range(p + 1, out_text.shape[0]):
                loss_diff = loss_diff + F.cosine_embedding_loss(out_text[p:p + 1], out_text[q:q + 1],
                                                                target=torch.tensor([-1]))
        if out_text.shape[0] > 1:
            loss_diff = loss_diff / (out_text.shape[0] * (out_text.shape[0] - 1) / 2.0)
        return loss_diff

    @torch.no_grad()
    def scores(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """get_result (id_like.py l.141-168): (the score as their metrics read it, i.e. negated; ID logits)."""
        text = self.text_features()
        feats = self.model.visual(images)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        out = self.logit_scale() * feats @ text.t()
        n_cls = len(self.classnames)
        score = torch.sum(F.softmax(out, dim=1)[:, n_cls:], dim=1) - 1
        return -score, out[:, :n_cls]


class _CropFit:
    """FitData for ``fit``: ``rounds x n_crop`` crop images of each of ``N`` images, through the method's encoder."""

    def __init__(self, method, crops: Tensor, full: Tensor, labels: Tensor) -> None:
        self.method, self.crops, self.full, self.labels = method, crops, full, labels  # [RV, N, 3, H, W], [N, ...]
        self.asked: tuple | None = None

    def features(self, split):
        with torch.no_grad():
            return self.method.encode_images(self.full), self.labels

    def augmented_features(self, views, crop_scale=(0.08, 1.0)):
        self.asked = (views, tuple(crop_scale))
        with torch.no_grad():
            return torch.stack([self.method.encode_images(c) for c in self.crops[:views]]), self.labels

    def log(self, msg):
        pass


def _setup(backbone, seed=0):
    torch.manual_seed(seed)
    method = build_method("idlike", backbone, NAMES, **OPTS)
    with torch.no_grad():  # away from the initial values, the class tokens included
        for _, p in method.learned_parameters():
            p.add_(0.05 * torch.randn_like(p))
    s, n = backbone.image_size, 4
    g = torch.Generator().manual_seed(seed + 1)
    crops = torch.randn(OPTS["crop_rounds"] * OPTS["n_crop"], n, 3, s, s, generator=g)
    full = torch.randn(n, 3, s, s, generator=g)
    labels = torch.tensor([0, 2, 1, 2])
    fit = _CropFit(method, crops, full, labels)
    method.fit(fit)
    ref = AuthorsIDLike(backbone.model, NAMES,
                        *(method.prompt_learner.ctx.detach().clone().requires_grad_(True),
                          method.ood_prompt_learner.ctx.detach().clone().requires_grad_(True),
                          method.ood_prompt_learner.cls.detach().clone().requires_grad_(True)),
                        n_selection=OPTS["n_selection"],
                        **{k: OPTS[k] for k in ("lam_in", "lam_out", "lam_diff")})
    return method, ref, fit


@pytest.mark.slow
def test_crop_selection_loss_and_gradients_equal_the_authors(vit_backbone):
    method, ref, fit = _setup(vit_backbone)
    assert fit.asked == (OPTS["crop_rounds"] * OPTS["n_crop"], (0.08, 1.0))
    v = OPTS["n_crop"]
    params = [p for _, p in method.learned_parameters()]
    assert [n for n, _ in method.learned_parameters()] == ["prompt_learner.ctx", "ood_prompt_learner.ctx",
                                                           "ood_prompt_learner.cls"]
    for rnd, batch in ((0, [3, 0]), (1, [1, 2, 0])):  # epoch 2 takes the second round of crops
        assert int(method.crop_round) == rnd
        sel = [ref.select(fit.crops[rnd * v:(rnd + 1) * v, i], int(fit.labels[i])) for i in batch]
        for i, (f_in, f_out) in zip(batch, sel):  # the authors' crops, as vlprompt selected them
            torch.testing.assert_close(method.id_crops[rnd, i], f_in, **TOL)
            torch.testing.assert_close(method.ood_crops[rnd, i], f_out, **TOL)
        f_in, f_out = torch.cat([s[0] for s in sel]), torch.cat([s[1] for s in sel])
        targets = fit.labels[batch].repeat_interleave(OPTS["n_selection"])
        expected = ref.loss(f_in, f_out, targets)
        ref_grads = torch.autograd.grad(expected, [ref.ctx, ref.ex_ctx, ref.ex_cls])
        with torch.no_grad():
            batch_feats = method.encode_images(fit.full[batch])  # what the trainer hands over
        out = method.training_loss(batch_feats, fit.labels[batch])
        assert set(out.terms) == {"in", "out", "diff"} and out.logits.shape == (len(batch), len(NAMES))
        torch.testing.assert_close(out.total(), expected, **TOL)
        backward_terms(method, out, params)
        for p, g in zip(params, ref_grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
        method.on_epoch_end(rnd, 2)


def test_the_diversity_loss_equals_the_authors_loop_with_negative_cosines_too():
    from vlprompt.methods.idlike.model import ood_prompt_diversity

    text = F.normalize(torch.randn(7, 16, generator=torch.Generator().manual_seed(5)), dim=-1)  # cosines of both signs
    cos = text @ text.t()
    assert bool((cos < 0).any()) and bool((cos.triu(1) > 0).any())
    torch.testing.assert_close(ood_prompt_diversity(text), AuthorsIDLike.diversity(text).squeeze(), **TOL)
    assert float(ood_prompt_diversity(text[:1])) == 0.0 == float(AuthorsIDLike.diversity(text[:1]))


def test_the_score_and_the_classifier_equal_the_authors(vit_backbone):
    method, ref, fit = _setup(vit_backbone, seed=3)
    images = torch.randn(5, 3, vit_backbone.image_size, vit_backbone.image_size,
                         generator=torch.Generator().manual_seed(9))
    expected, id_logits = ref.scores(images)
    with torch.no_grad():
        feats = method.ood_features(images)
        torch.testing.assert_close(method.ood_score(feats, "idlike"), expected, **TOL)
        torch.testing.assert_close(method.eval()(images), id_logits, **TOL)
        # the generic scores read the ID prompts alone
        mcm = (F.normalize(feats, dim=-1) @ method.text_features().t()).softmax(-1).max(-1).values
        torch.testing.assert_close(method.ood_score(feats, "mcm"), mcm, **TOL)
        before = method.ood_score(feats, "idlike")
        method.ood_prompt_learner.cls.mul_(-3.0)  # a changed prompt is re-encoded, never served from the cache
        assert not torch.allclose(method.ood_score(feats, "idlike"), before)
    assert method.capabilities.ood_scores == ("idlike",) and method.capabilities.training == "fit+sgd"


def test_training_needs_the_fitted_crops_and_the_batch_classes(vit_backbone):
    method = build_method("idlike", vit_backbone, NAMES, **OPTS)
    feats = torch.randn(2, vit_backbone.embed_dim)
    with pytest.raises(RuntimeError, match="fit the method first"):
        method.training_loss(feats, torch.tensor([0, 1]))
    method.train_labels = torch.tensor([0, 0])
    method.train_features = torch.randn(2, vit_backbone.embed_dim)
    method.id_crops = method.ood_crops = torch.randn(1, 2, 1, vit_backbone.embed_dim)
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        method.training_loss(feats, torch.tensor([0, 1]))


@pytest.mark.parametrize("bad, match", [({"n_selection": 300}, "n_selection"), ({"n_crop": 0}, "n_crop"),
                                        ({"lam_out": -1}, "lam_out"), ({"select_template": "a photo"}, "one '{}'"),
                                        ({"crop_scale": [0.5, 2]}, "crop_scale"), ({"crop_rounds": 0}, "crop_rounds")])
def test_bad_options_are_refused(vit_backbone, bad, match):
    with pytest.raises(ConfigError, match=match):
        build_method("idlike", vit_backbone, NAMES, **bad)


def test_shipped_configs_hold_the_authors_values():
    from vlprompt.config import load_config

    cfg = load_config(REPO / "configs/idlike/imagenet.yaml")
    m, o = cfg.method.config, cfg.optim
    assert (m.n_crop, m.n_selection, m.n_ex_prompts, m.n_ctx, m.n_ex_ctx) == (256, 32, 100, 16, 16)
    assert (m.lam_in, m.lam_out, m.lam_diff, m.crop_scale, m.crop_rounds) == (1.0, 0.3, 0.2, [0.08, 1.0], 3)
    assert (o.name, o.lr, o.weight_decay, o.max_epoch, o.batch_size, o.lr_scheduler, o.warmup_epoch) == (
        "adamw", 0.005, 0.01, 3, 1, "constant", 0)
    assert (cfg.data.shots, cfg.data.augment, cfg.train.seed, cfg.backbone.model) == (1, False, 1, "ViT-B-16-quickgelu")
    world = load_config(REPO / "configs/world/idlike_world.yaml")
    assert world.method.name == "idlike" and world.data.dataset == "world_shapes" and not world.data.augment


@pytest.mark.slow
def test_trains_through_the_trainer_on_exactly_matched_images(tmp_path, tiny_imagefolder, monkeypatch):
    """`vlprompt train`'s path: fit draws the crops, every step finds its images' own cached features (cosine 1),
    the three terms are logged, the epochs walk through the crop rounds."""
    import vlprompt.methods.idlike.model as idlike_model
    from vlprompt.config import config_from_dict
    from vlprompt.engine.trainer import train

    from conftest import tiny_config

    matched: list[float] = []
    rounds: list[int] = []
    original = idlike_model.IDLike.image_indices

    def spy(self, features, labels):
        idx = original(self, features, labels)
        matched.extend((F.normalize(features.float(), dim=-1) * self.train_features[idx]).sum(-1).tolist())
        rounds.append(int(self.crop_round))
        return idx

    monkeypatch.setattr(idlike_model.IDLike, "image_indices", spy)
    raw = tiny_config(tmp_path, tiny_imagefolder, data={"shots": 2, "augment": False},
                      optim={"name": "adamw", "lr": 0.005, "max_epoch": 3, "batch_size": 2, "warmup_epoch": 0,
                             "lr_scheduler": "constant"})
    raw["method"] = {"name": "idlike", "n_ctx": 2, "n_ex_ctx": 2, "n_ex_prompts": 3, "n_crop": 4, "n_selection": 2,
                     "crop_rounds": 2}
    result = train(config_from_dict(raw))
    assert matched and min(matched) > 1 - 1e-5
    assert sorted(set(rounds)) == [0, 1, 2]  # crop round r % 2: 0, 1, 0
    assert result.fit == {"images": 6, "crops": 8, "selected": 2}
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert len(hist) == 3 and all({"loss_in", "loss_out", "loss_diff"} <= set(h) for h in hist)
