"""DPE: Dual Prototype Evolving for test-time generalization of VLMs (Zhang, Stepputtis, Sycara, Xie; NeurIPS 2024).

zhangce01/DPE-CLIP@fecae5a, ``main_dpe.py`` ``run_test_dpe`` (lines 197-303) with ``utils.py``. The state carried
across the test stream (capability ``adaptation="online"``):

* the **textual prototypes** ``T [n_cls, E]`` (the authors' ``clip_weights_global [E, n_cls]``), initially the
  class text features: each class's prompt ensemble, the dataset's templates plus, with ``cupl_prompts``, its CuPL
  sentences, each text feature normalised, averaged and normalised (``utils.py`` l.89-128);
* the **visual prototypes**: a priority queue per class of at most ``shot_capacity`` (feature, normalised
  entropy) pairs, kept in ascending entropy (``update_cache``, ``main_dpe.py`` l.40-52); a class's visual
  prototype is the mean of its queued features (``cache_key_value`` l.133-152);
* ``num_avg``, the number of prototype updates so far (l.209, 292).

For one test image with views ``[V, 3, H, W]`` (``views[0]`` the original; 63 AugMix views + the original on the
ImageNet sets, the original alone elsewhere: ``utils.py`` l.166-179, 201-215), ``s`` CLIP's logit scale (the
authors' constant 100, ``utils.py`` l.146):

1. per-sample residuals start at zero, ``R_t [n_cls, E]`` on the textual prototypes (``TextResidue``,
   l.159-171) and, once the cache is updated, ``R_v [K, E]`` on the K visual prototypes (``PositiveCacheResidue``,
   l.173-182); ``W = normalise(T + R_t)`` per class (l.166-167);
2. ``get_clip_logits`` (``utils.py`` l.132-163) on all views: ``l_v = s f_v . W`` for the normalised view features
   ``f_v``; with more than one view, the ``int(0.1 V)`` views of lowest softmax entropy are kept (l.148-152):
   ``f = mean of their features`` (not renormalised), ``l = mean of their logits``, the image's entropy is that of
   their averaged probabilities (``avg_entropy``, l.55-60), the pseudo-label ``y = argmax l``; with one view,
   ``f = f_0``, ``l = l_0``, entropy ``H(softmax l_0)``;
3. the cache update (``main_dpe.py`` l.224-227): ``(f, H / log2(n_cls))`` enters class ``y``'s queue
   (``get_entropy``, ``utils.py`` l.46-48: the entropy in nats over ``log2`` of the class count): appended while
   the queue is short, else it replaces the last (largest-entropy) entry if strictly smaller; the queue is
   re-sorted by entropy (a stable sort). The K classes with a queue, ascending, give the visual prototypes
   ``P [K, E]`` (not normalised here; ``normalise(P + R_v)`` is, per class, l.180-181);
4. one optimisation step (``steps = 1``, l.231-262): ``logits = l + alpha * exp(-beta (1 - f . normalise(P + R_v)))
   @ onehot [K, n_cls]`` (``compute_cache_logits`` l.154-157), loss = ``H(softmax logits)`` (``avg_entropy`` of one
   row) ``+ align * InfoNCE(normalise(P + R_v), W[classes])`` with temperature 0.01 and the other classes of the
   cache as negatives (l.36-38, 240-241; info-nce-pytorch 0.1.4 ``info_nce``: cross-entropy of the cosine matrix
   / 0.01 against the diagonal); the gradient reaches ``R_t`` through ``l`` and the alignment term, ``R_v`` through
   the cache logits and the alignment term; one AdamW step from zero (a new optimiser per image: lr ``text`` /
   ``image``, ``eps = 1e-3``, ``weight_decay = 0.1``, l.248-262);
5. the prediction (l.264-277), without gradients: ``W' = normalise(T + R_t)``, the original image's
   ``l' = s f_0 . W'`` and ``f' = f_0`` (with ``predict_on_all_views``, the authors' ImageNet-A rule of l.270-271:
   step 2 again on all views with ``W'``), ``logits = l' + alpha * exp(-beta (1 - f' . normalise(P + R_v)))
   @ onehot``;
6. the textual prototype evolution (l.283-293): if ``H(softmax logits) / log2(n_cls) < 0.1``, ``num_avg += 1`` and
   ``T = T num_avg / (num_avg + 1) + W' / (num_avg + 1)`` (a cumulative average in which the initial prototypes
   count as one sample; ``T`` is not renormalised, every use normalises it).

With ``positive.enabled`` false there is no cache: the loss is the entropy of ``l``, only ``R_t`` is optimised and
the prediction is ``l'`` (l.242-243, 252-255, 274-275). The residuals are per image (new at zero for every image,
l.217-218, 228); what crosses images is ``T``, the queues and ``num_avg``, all in :meth:`DPE.adaptation_state`.
A test image costs ``V`` image forwards (the views' features are computed once and reused by step 5), no text pass
(the prompts are encoded once for the stream) and one backward pass, over the residuals only.

Where vlprompt differs from the authors' code, and why:

* fp32 on any device instead of fp16 autocast with fp16 residuals on the GPU (l.163, 177, 198);
* the image tower runs once per image: the authors encode the views again in step 5 (the same features; their
  ``get_clip_logits`` also runs with gradients enabled and the backward pass goes on into the frozen image
  tower's parameters, whose gradients are never used); here the view features are computed once without a graph,
  which changes no value;
* with ``2 <= V < 10`` views the authors keep ``int(0.1 V) = 0`` views (a NaN mean); here at least one is kept;
* the views of lowest entropy are chosen by a stable sort (the authors' ``argsort`` is not stable: only views of
  exactly equal entropy can differ), the pseudo-label by ``argmax`` (their ``topk(1)``; equal only on exact ties);
* the logit scale is the backbone's (CLIP's is exactly the authors' 100; a SigLIP tower adds its bias);
* the CuPL sentences are not shipped with vlprompt: ``cupl_prompts`` reads the authors' JSON files (the shipped
  configs leave it null, so their text prototypes are the templates' ensemble alone unless a file is given).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import DataError
from vlprompt.methods.base import Adapted, MethodContext, PromptMethod
from vlprompt.methods.tda.cache import ClassCache
from vlprompt.methods.view_entropy import average_prediction_entropy, select_confident_views
from vlprompt.methods.view_features import ViewFeatureMethod

#: ``get_clip_logits``: the confident fraction of the views (``utils.py`` l.150).
CONFIDENT_FRACTION = 0.1
#: The textual prototypes evolve after an image whose normalised entropy is below this (``main_dpe.py`` l.288).
EVOLVE_THRESHOLD = 0.1
#: ``InfoNCELoss``'s temperature (``main_dpe.py`` l.37).
INFONCE_TEMPERATURE = 0.01
#: AdamW's ``eps`` and ``weight_decay`` for both residuals (``main_dpe.py`` l.249-250, 254); betas: torch's defaults.
ADAMW_EPS, ADAMW_WEIGHT_DECAY, ADAMW_BETAS = 1e-3, 1e-1, (0.9, 0.999)


def adamw_first_step(grad: Tensor, lr: float) -> Tensor:
    """The value of a zero-initialised parameter after one step of a fresh AdamW (``torch.optim.AdamW`` with
    ``eps = 1e-3``, ``weight_decay = 0.1``, betas (0.9, 0.999)): the decay of zero is zero and both moments' bias
    corrections give back ``g`` and ``g^2``, so the step is ``-lr g / (|g| + eps)``."""
    return -lr * grad / (grad.abs() + ADAMW_EPS)


def read_cupl(path: str | Path) -> dict[str, list[str]]:
    """A CuPL prompt file: JSON ``{class name: [sentence, ...]}`` (``gpt3_prompts/CuPL_prompts_*.json``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"CuPL prompt file '{p}' does not exist (option method.cupl_prompts)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"CuPL prompt file '{p}' is not readable JSON ({exc}) (option method.cupl_prompts)") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v) for k, v in data.items()):
        raise DataError(f"CuPL prompt file '{p}' must map class names to lists of sentences (option "
                        "method.cupl_prompts)")
    return data


@torch.no_grad()
def ensemble_text_features(backbone: Backbone, texts: list[list[str]], chunk: int) -> Tensor:
    """Each class's prompt ensemble ``[n_cls, E]``: its texts encoded, normalised, averaged, normalised
    (``utils.py`` l.121-125); ``texts[c]`` the texts of class ``c``, encoded ``chunk`` at a time."""
    flat = [(c, t) for c, group in enumerate(texts) for t in group]
    sums: Tensor | None = None
    for start in range(0, len(flat), chunk):
        part = flat[start:start + chunk]
        ids = backbone.tokenize([t for _, t in part], what="the prompt")
        f = F.normalize(backbone.encode_text(ids).float(), dim=-1)
        if sums is None:
            sums = torch.zeros(len(texts), f.shape[-1], device=f.device)
        sums.index_add_(0, torch.tensor([c for c, _ in part], device=f.device), f)
    assert sums is not None
    counts = torch.tensor([len(g) for g in texts], device=sums.device, dtype=sums.dtype)
    return F.normalize(sums / counts[:, None], dim=-1)


class DPE(ViewFeatureMethod):
    """Dual prototype evolving (see the module docstring): evolving textual prototypes, a priority queue of confident
    features per class and per-image residuals on both, optimised by one AdamW step."""

    def __init__(self, backbone: Backbone, classnames: list[str], config: Any,
                 context: MethodContext | None = None) -> None:
        super().__init__(backbone, classnames, config, context)
        if config.cupl_prompts is not None:  # utils.py l.89-93: the templates, then the class's CuPL sentences
            cupl = read_cupl(config.cupl_prompts)
            texts = []
            for name in self.classnames:
                name = name.replace("_", " ")
                if name not in cupl:
                    raise DataError(f"CuPL prompt file '{config.cupl_prompts}' has no sentences for class '{name}' "
                                    "(option method.cupl_prompts)")
                texts.append([t.format(name) for t in self.templates] + list(cupl[name]))
            self.classifier = ensemble_text_features(backbone, texts, config.class_chunk).to(self.classifier.device)
        self.reset_adaptation()

    # ------------------------------------------------------------------ the state carried across the stream
    def reset_adaptation(self) -> None:
        """The initial state: textual prototypes = the class text features, empty queues, no update yet."""
        cap, dim = int(self.config.positive["shot_capacity"]), int(self.classifier.shape[-1])
        self._text = self.classifier.detach().float().clone()  # T [n_cls, E]
        self._num_avg = 0
        # the per-class queues, ascending in entropy: update_cache (main_dpe.py l.40-52) is TDA's, entropy policy
        self._cache = ClassCache(self.n_cls, cap, dim, device=self.classifier.device)
        self.last_residuals: dict[str, Tensor] = {}

    def adaptation_state(self) -> dict[str, Tensor]:
        """``text_prototypes [n_cls, E]``, ``num_avg []``, and the queued entries in class order, each class's
        in ascending entropy: ``cache_features [N, E]``, ``cache_entropy [N]``, ``cache_classes [N]``."""
        cache = self._cache.state("cache_")
        return {"text_prototypes": self._text.detach().cpu().clone(),
                "num_avg": torch.tensor(self._num_avg, dtype=torch.long),
                "cache_features": cache.pop("cache_keys"), **cache}

    def load_adaptation_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`adaptation_state` (``ValueError`` for a state of another shape or method)."""
        expected = {"text_prototypes", "num_avg", "cache_features", "cache_entropy", "cache_classes"}
        if set(state) != expected:
            raise ValueError(f"a DPE state has the tensors {sorted(expected)}, got {sorted(state)}")
        text = state["text_prototypes"]
        if tuple(text.shape) != tuple(self._text.shape):
            raise ValueError(f"DPE state: text prototypes {tuple(text.shape)}, expected {tuple(self._text.shape)}")
        self.reset_adaptation()
        self._cache.load_state({"cache_classes": state["cache_classes"], "cache_keys": state["cache_features"],
                                "cache_entropy": state["cache_entropy"]}, "cache_")
        self._text = text.to(self._text.device, torch.float32).clone()
        self._num_avg = int(state["num_avg"])

    def adaptation_size(self) -> int:
        """Features in the queues now (at most ``shot_capacity`` per class)."""
        return self._cache.size()

    # ------------------------------------------------------------------ views and starting points
    def test_time_views(self, dataset_views: str) -> str:
        """AugMix views: ``utils.py`` l.166-179 (``AugMixAugmenter(..., n_views=63, augmix=True)``) on the ImageNet
        sets; elsewhere the authors use the original image alone (l.212-215), so the kind only matters with
        ``--views``."""
        return "augmix"

    def test_time_view_count(self, dataset_views: str) -> int | None:
        """64 (63 AugMix views + the original) on the ImageNet sets (registered kind ``"crop"``), 1 elsewhere
        (``utils.py`` l.201-215: the CLIP preprocess alone on the cross-dataset targets)."""
        return 64 if dataset_views == "crop" else 1

    def start_from(self, source: PromptMethod) -> None:
        """Start the textual prototypes from a CoOp-family (or MaPLe-like, views then encoded by it) prompt's text
        features (the authors' ``--coop``, ``utils.py`` l.72-115); image-conditional prompts (CoCoOp) give no
        fixed prototypes to evolve and are refused."""
        if source.capabilities.image_conditional:
            raise ValueError(f"method '{self.method_name}' cannot start from a '{source.method_name}' prompt file: "
                             "its text features depend on the image, DPE evolves fixed class prototypes")
        super().start_from(source)
        self.reset_adaptation()

    # ------------------------------------------------------------------ one test image
    def _cache_logits(self, feature: Tensor, keys: Tensor, classes: Tensor) -> Tensor:
        """``compute_cache_logits`` (``main_dpe.py`` l.154-157): ``alpha exp(-beta (1 - f . keys)) @ onehot``:
        feature ``[E]``, normalised keys ``[K, E]`` of the classes ``[K]`` -> ``[n_cls]``."""
        pos = self.config.positive
        affinity = keys @ feature  # [K]
        values = pos["alpha"] * torch.exp(-(pos["beta"] - pos["beta"] * affinity))
        return torch.zeros(self.n_cls, device=feature.device, dtype=values.dtype).index_add(0, classes, values)

    def _image_logits(self, feats: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``get_clip_logits`` (``utils.py`` l.132-163) on view features ``[V, E]`` against class weights
        ``[n_cls, E]``: (feature ``[E]``, logits ``[n_cls]``, entropy ``[]``)."""
        logits = self.scaled(feats @ weights.t())  # [V, n_cls]
        if feats.shape[0] == 1:
            return feats[0], logits[0], average_prediction_entropy(logits[:1])
        keep = select_confident_views(logits.detach(), CONFIDENT_FRACTION)
        return feats[keep].mean(0), logits[keep].mean(0), average_prediction_entropy(logits[keep])

    def adapt_and_predict(self, views: Tensor) -> Adapted:
        """``views [V, 3, H, W] -> Adapted(logits [n_cls], cost)`` (steps 1-6 of the module docstring)."""
        cfg_pos, cfg_lr = self.config.positive, self.config.learning_rate
        with torch.no_grad():
            feats = self.view_features(views).float()  # [V, E], normalised (the image tower under the run's autocast)
        with torch.autocast(device_type=feats.device.type, enabled=False):  # DPE's own math in fp32
            log2_cls = math.log2(self.n_cls)
            text = self._text
            with torch.enable_grad():
                r_text = torch.zeros_like(text, requires_grad=True)  # TextResidue (l.218)
                weights = F.normalize(text + r_text, dim=-1)  # [n_cls, E]
                feature, logits, entropy = self._image_logits(feats, weights)
                label = int(logits.detach().argmax())
                params, lrs = [r_text], [cfg_lr["text"]]
                if cfg_pos["enabled"]:
                    with torch.no_grad():
                        cache = self._cache
                        cache.insert(label, feature.detach(), float(entropy.detach() / log2_cls))  # l.225-226
                        classes = (cache.counts > 0).nonzero().flatten()  # [K], ascending (l.139)
                        counts = cache.counts[classes, None].to(cache.keys.device, cache.keys.dtype)
                        classes = classes.to(cache.keys.device)
                        protos = cache.keys[classes].sum(1) / counts  # [K, E] (empty slots are zero)
                    r_image = torch.zeros_like(protos, requires_grad=True)  # PositiveCacheResidue (l.228)
                    keys = F.normalize(protos + r_image, dim=-1)
                    final = logits + self._cache_logits(feature, keys, classes)  # l.234-237
                    align = F.cross_entropy(keys @ weights[classes].t() / INFONCE_TEMPERATURE,
                                            torch.arange(classes.shape[0], device=keys.device))  # l.240 (info_nce)
                    loss = average_prediction_entropy(final[None]) + align * cfg_lr["align"]
                    params, lrs = [r_text, r_image], [cfg_lr["text"], cfg_lr["image"]]
                else:
                    loss = average_prediction_entropy(logits[None])  # l.243
                grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                residuals = [adamw_first_step(g, lr) for g, lr in zip(grads, lrs)]  # l.248-262
                #: this image's optimised residuals, for inspection: "text" [n_cls, E], "image" [K, E] (with the cache)
                self.last_residuals = dict(zip(("text", "image"), residuals))
                weights = F.normalize(text + residuals[0], dim=-1)  # l.269
                if self.config.predict_on_all_views:  # l.270-271 (ImageNet-A)
                    feature, logits, _ = self._image_logits(feats, weights)
                else:  # l.273: the original image
                    feature, logits = feats[0], self.scaled(feats[0] @ weights.t())
                final = logits
                if cfg_pos["enabled"]:
                    keys = F.normalize(protos + residuals[1], dim=-1)
                    final = logits + self._cache_logits(feature, keys, classes)  # l.274-277
                if float(average_prediction_entropy(final[None]) / log2_cls) < EVOLVE_THRESHOLD:  # l.283-293
                    self._num_avg += 1
                    self._text = text * (self._num_avg / (self._num_avg + 1)) + weights * (1 / (self._num_avg + 1))
        return Adapted(final.detach(), {"image_forward": int(views.shape[0]), "text_forward": 0, "backward": 1})
