"""The method contract, checked for every registered method on both tiny towers (timm-style).

A method added later is covered by these tests without writing them again (the parametrisation is the
registry's list at collection time: a built-in or a plugin's; tests/test_docs_examples.py proves it with the
docs' ``gain`` installed in a plugin package, collected here like a built-in method): registration gives it its
identity and its capabilities, it builds from its defaults and a build context, predicts ``[B, n_cls]``,
sends gradients only to its learned tensors, survives save -> load with identical logits, resumes after a
kill to the uninterrupted result, gives the same gradients when a global batch is split over two ranks
(simulated here; a real torchrun run covers a subset in ``test_method_contract_torchrun``), and runs under
``vlprompt protocol base2new`` (class-specific methods, by capability with their options, are refused there
with one error line, before anything is trained). The registration rules themselves (names, duplicates,
identity, ``capabilities_for``) are tested at the end.
"""

from __future__ import annotations

import json

import pytest
import torch

import vlprompt.engine.loop as loop_mod
import vlprompt.engine.trainer as trainer_mod
import vlprompt.methods.registry as registry
from vlprompt.backbones.build import build_backbone
from vlprompt.config import BackboneConfig, config_from_dict
from vlprompt.core.errors import ConfigError, ModelError, VlpromptError
from vlprompt.engine.checkpoint import load_prompt, read_prompt, save_prompt
from vlprompt.engine.loss_step import backward_terms, local_objectives
from vlprompt.methods.base import MethodContext, PromptMethod
from vlprompt.methods.registry import build_method, get_method, list_methods, make_method_config

from conftest import TINY_MODELS, tiny_config, write_config

METHODS = list_methods()
NAMES = ["red thing", "green thing", "blue thing"]
#: class descriptions (data.descriptions_file): CoPrompt needs them, the other methods ignore them; one sentence per
#: class, so that CoPrompt's drawn sentence is the same in every call of the simulated-ranks test
DESCRIPTIONS = {n: [f"a {n}, which has a colour."] for n in NAMES}
NEEDS_DESCRIPTIONS = {"coprompt"}
CONTEXT = MethodContext(templates=["a photo of a {}.", "a drawing of a {}."], descriptions=DESCRIPTIONS)
#: options that only make the contract runs smaller (never needed for correctness)
SMALL = {"coop": {"n_ctx": 2}, "kgcoop": {"n_ctx": 2, "ctx_init": None}, "prograd": {"n_ctx": 2},
         "locoop": {"n_ctx": 2, "top_k": 1}, "cocoop": {"n_ctx": 2}, "upl": {"n_ctx": 2, "n_prompts": 2},
         "sct": {"n_ctx": 2, "top_k": 1}, "negprompt": {"ctx_init": "a photo", "positive_epochs": 1},
         "tip_adapter": {"search_step": [20, 5], "augment_epoch": 2},
         "tip_adapter_f": {"search_step": [20, 5], "augment_epoch": 2}, "linear_probe": {"search_steps": 2},
         "idlike": {"n_ctx": 2, "n_ex_ctx": 2, "n_ex_prompts": 2, "n_crop": 4, "n_selection": 2, "crop_rounds": 1},
         "dept_coop": {"n_ctx": 2}, "dept_cocoop": {"n_ctx": 2}, "dept_kgcoop": {"n_ctx": 2, "ctx_init": None},
         # the linear projector: the two-layer one's BatchNorm normalises each rank's share of a batch by its own
         # statistics (as the authors' DataParallel), so split batches differ; it is checked in test_promptkd.py
         "promptkd": {"n_ctx_vision": 2, "prompt_depth_vision": 2, "projector": "linear"}}


@pytest.fixture(scope="module", params=TINY_MODELS)
def backbone(request):
    return build_backbone(BackboneConfig(request.param, None), shared=False)


def _images(backbone, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g)


class _Fit:
    """Few-shot data for ``fit``: random images of 3 classes through the method's own encoder."""

    def __init__(self, method):
        self.method = method
        self.labels = torch.arange(3).repeat_interleave(2)

    def features(self, split):
        with torch.no_grad():
            return self.method.encode_images(_images(self.method.backbone, 6, seed=1 if split == "train" else 2)), \
                self.labels

    def augmented_features(self, views, crop_scale=(0.5, 1.0)):
        with torch.no_grad():
            feats = [self.method.encode_images(_images(self.method.backbone, 6, seed=10 + v)) for v in range(views)]
        return torch.stack(feats), self.labels

    def log(self, msg):
        pass


def _refusal(name, backbone) -> str | None:
    """The documented refusal when ``name`` cannot run on ``backbone`` (deep vision prompts on a ResNet image
    tower), else None: such a pair is checked to fail with that one clear message instead of running."""
    try:
        build_method(name, backbone, NAMES, context=CONTEXT, **SMALL.get(name, {}))
    except ModelError as exc:
        return str(exc)
    return None


@pytest.fixture(autouse=True)
def _refused_pairs_give_the_documented_error(request):
    """Method x tower pairs that cannot run: the refusal names the model and the way out, then the test ends."""
    if "name" not in request.fixturenames or "backbone" not in request.fixturenames:
        return
    name, backbone = request.getfixturevalue("name"), request.getfixturevalue("backbone")
    message = _refusal(name, backbone)
    if message is not None:
        assert backbone.name in message and "not a vision transformer" in message and "use a ViT model" in message
        pytest.skip(f"{name} refuses {backbone.name} (documented): {message[:80]}...")


def _caps(name):
    """The capabilities of ``name`` with the options the contract runs use (before anything is built)."""
    return get_method(name).capabilities_for(make_method_config(name, SMALL.get(name, {})))


def _build(name, backbone, names=NAMES):
    torch.manual_seed(0)
    method = build_method(name, backbone, names, context=CONTEXT, **SMALL.get(name, {}))
    if method.capabilities.fitted:
        method.fit(_Fit(method))
    return method


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_builds_and_predicts_one_logit_per_class(name, backbone):
    method = _build(name, backbone).eval()
    with torch.no_grad():
        logits = method(_images(backbone, 4))
    assert logits.shape == (4, len(NAMES)) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_only_the_learned_tensors(name, backbone):
    method = _build(name, backbone).train()
    caps = method.capabilities
    learned = dict(method.learned_parameters())
    others = [n for n, p in method.named_parameters() if n not in learned]
    assert not any(p.requires_grad for n, p in method.named_parameters() if n in others), "frozen tensors need grad"
    if not caps.uses_sgd:
        assert not learned, f"{name} is not trained by SGD but has learned parameters"
        return
    assert learned, f"{name} is trained by SGD but learns nothing"
    feats = method.encode_images(_images(backbone, 6, seed=3))
    out = method.training_loss(feats, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert out.logits.shape == (6, len(NAMES))
    backward_terms(method, out, list(learned.values()))
    grads = {n: p.grad for n, p in learned.items()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    assert any(float(g.abs().sum()) > 0 for g in grads.values())
    assert all(p.grad is None for n, p in method.named_parameters() if n not in learned)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_save_then_load_gives_identical_logits(name, backbone, tmp_path):
    method = _build(name, backbone)
    if method.capabilities.uses_sgd:  # move the learned tensors away from their initial values
        with torch.no_grad():
            for _, p in method.learned_parameters():
                p.add_(0.01 * torch.randn_like(p))
    path = save_prompt(tmp_path / "prompt.safetensors", method)
    loaded = load_prompt(path, backbone)
    images = _images(backbone, 5, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), method.eval()(images), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_two_simulated_ranks_give_the_single_process_gradient(name, backbone):
    """The trainer's reduction (global counts, local objectives, summed gradients) on a batch split in two."""
    caps = _caps(name)
    if not caps.uses_sgd:
        pytest.skip("nothing is trained by SGD")
    method = _build(name, backbone)
    # the same function on both "ranks": no dropout (eval), except that a method whose learned tensors sit in
    # the encoders trains on features encoded in train mode (PromptSRC packs prompted + frozen ones there)
    method.train(caps.modifies_encoders)
    for m in method.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    images = _images(backbone, 6, seed=5)
    frozen = None if caps.modifies_encoders else method.encode_images(images).detach()

    def loss(part):  # features through the (prompted) encoder when it learns, else the cached ones
        feats = method.encode_images(images[part]) if frozen is None else frozen[part]
        return method.training_loss(feats, labels[part])

    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    params = [p for _, p in method.learned_parameters()]
    backward_terms(method, loss(slice(0, 6)), params)
    single = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    outs = [loss(slice(0, 3)), loss(slice(3, 6))]
    counts = {k: sum(int(o.terms[k][1]) for o in outs) for k in outs[0].terms}
    per_rank = []
    for out in outs:
        objectives = local_objectives(out, counts)
        if caps.owns_gradient_step:
            per_rank.append({k: torch.autograd.grad(v, params, retain_graph=True, allow_unused=True,
                                                 materialize_grads=True)
                             for k, v in objectives.items()})
        else:
            per_rank.append({"all": torch.autograd.grad(sum(objectives.values()), params, allow_unused=True,
                                                                 materialize_grads=True)})
    summed = {k: [sum(r[k][i] for r in per_rank) for i in range(len(params))] for k in per_rank[0]}
    grads = method.combine_gradients(summed) if caps.owns_gradient_step else summed["all"]
    for p, a, b in zip(params, grads, single):
        # float32 summation order differs between the split and the whole batch: the absolute tolerance scales with
        # the gradient's size (PromptKD's projector gradients reach ~7; a CI machine differed by 3.3e-5 there)
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(torch.zeros_like(p) if a is None else a, b, rtol=1e-4, atol=3e-5 * scale)


# ------------------------------------------------------------------------------------ through the trainer
class _Killed(Exception):
    pass


def _run_cfg(tmp_path, root, name, model, out):
    raw = tiny_config(tmp_path, root, method={"name": name, **SMALL.get(name, {})},
                      backbone={"model": model, "pretrained": None},
                      data={"shots": 2, "augment": False}, optim={"max_epoch": 2, "batch_size": 2},
                      train={"output_dir": str(out)})
    raw["method"] = {"name": name, **SMALL.get(name, {})}  # no CoOp options for other methods
    if name in NEEDS_DESCRIPTIONS:
        (tmp_path / "descriptions.json").write_text(json.dumps(DESCRIPTIONS))
        raw["data"]["descriptions_file"] = str(tmp_path / "descriptions.json")
    return raw


def _kill_midway(monkeypatch, caps):
    """Kill an SGD run right after its first checkpoint, a fitted-only run before it writes its results."""
    if caps.uses_sgd:
        original = loop_mod.save_training_state

        def save_then_die(folder, epoch, *args, **kwargs):
            original(folder, epoch, *args, **kwargs)
            raise _Killed()

        monkeypatch.setattr(loop_mod, "save_training_state", save_then_die)
    else:
        def die(*args, **kwargs):
            raise _Killed()

        monkeypatch.setattr(trainer_mod, "_finish", die)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_a_killed_run_resumes_to_the_uninterrupted_result(name, backbone, tmp_path, tiny_imagefolder, monkeypatch):
    caps = _caps(name)
    if not caps.trainable:
        pytest.skip("training-free: nothing to run")
    model = backbone.name
    full = trainer_mod.train(config_from_dict(_run_cfg(tmp_path, tiny_imagefolder, name, model, tmp_path / "full")))
    raw = _run_cfg(tmp_path, tiny_imagefolder, name, model, tmp_path / "killed")
    with monkeypatch.context() as m:
        _kill_midway(m, caps)
        with pytest.raises(_Killed):
            trainer_mod.train(config_from_dict(raw))
    if caps.uses_sgd:  # without --resume a half-trained run (it has a checkpoint) is protected
        with pytest.raises(VlpromptError, match="--resume"):
            trainer_mod.train(config_from_dict(raw))
    torch.manual_seed(123)  # the resumed process starts from another RNG state
    resumed = trainer_mod.train(config_from_dict(raw), resume=True)
    a, _ = read_prompt(tmp_path / "full" / "prompt.safetensors")
    b, meta = read_prompt(tmp_path / "killed" / "prompt.safetensors")
    assert a.keys() == b.keys() and meta["context"]["templates"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert resumed.test["accuracy"] == full.test["accuracy"]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history])
    if caps.fitted:
        assert resumed.fit == full.fit
    # the run's prompt file predicts image files (`vlprompt predict`)
    from vlprompt.tasks.api import predict

    images = sorted(str(f) for f in (tiny_imagefolder / "test").rglob("*.png"))[:3]
    preds = predict(tmp_path / "killed" / "prompt.safetensors", images, topk=2, backbone=backbone, device="cpu")
    assert [len(p["top"]) for p in preds] == [2, 2, 2]


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_runs_under_the_base2new_protocol(name, backbone, tmp_path, tiny_imagefolder, capsys):
    from vlprompt.cli.main import main

    caps = _caps(name)
    cfg = write_config(tmp_path / "cfg.yaml", **_run_cfg(tmp_path, tiny_imagefolder, name, backbone.name,
                                                         tmp_path / "unused"))
    out = tmp_path / "b2n"
    code = main(["protocol", "base2new", "-c", str(cfg), "--seeds", "1", "-o", str(out)])
    if caps.class_specific or caps.adapts_at_test_time:  # refused before anything runs
        assert code == 2
        err = capsys.readouterr().err
        why = "adapts at test time" if caps.adapts_at_test_time else "class-specific"
        assert err.count("error:") == 1 and why in err and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir()), "refused only after training"
        return
    assert code == 0
    result = json.loads((out / "base2new_results.json").read_text())
    assert result["method"] == name and set(result["summary"]) == {"base", "new", "H"}
    assert all(0 <= result["summary"][k]["mean"] <= 100 for k in ("base", "new", "H"))


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_registration_gives_the_identity_and_the_capabilities(name, backbone):
    """The name and the capabilities come from the registration alone; the built method carries them."""
    entry = get_method(name)
    assert entry.name == name and entry.model_cls.method_name == name
    method = _build(name, backbone)
    assert method.method_name == name
    assert method.capabilities == entry.capabilities_for(method.config) == _caps(name)
    assert entry.capabilities_for() == entry.capabilities_for(entry.config_cls())  # None: the defaults
    for mirrored in ("image_conditional", "modifies_encoders", "feature_kind", "is_class_specific"):
        assert not hasattr(method, mirrored), f"{name} declares {mirrored} outside its registration"


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_a_test_time_stream_is_reproducible_and_an_online_state_carries_it(name, backbone):
    """A method that adapts at test time: two passes over one stream give identical logits (episodic: reset per
    image; online: reset once per stream); an online method's ``adaptation_state`` after 3 images, loaded into a
    freshly built method, continues the stream with the uninterrupted logits (a mid-stream resume). A method that
    does not adapt keeps no test-time state and the stream predicts each original view as the method does."""
    from vlprompt.engine.test_time import TestTimeAdapter

    caps = _caps(name)
    method = _build(name, backbone)

    def run(adapter, images):
        return torch.stack([adapter.step(v).logits for v in images])

    if not caps.adapts_at_test_time:
        stream = [_images(backbone, 1, seed=100 + i) for i in range(2)]
        with torch.no_grad():
            plain = torch.cat([method.eval()(v) for v in stream]).float()
        torch.testing.assert_close(run(TestTimeAdapter(method), stream), plain, rtol=1e-4, atol=1e-4)
        assert method.adaptation_state() == {} and method.adaptation_size() == 0
        return
    stream = [_images(backbone, 10, seed=100 + i) for i in range(5)]  # 5 images of 10 views each (Zero keeps 10%)

    first = run(TestTimeAdapter(method), stream)
    assert first.shape == (5, len(NAMES)) and torch.isfinite(first).all()
    torch.testing.assert_close(run(TestTimeAdapter(method), stream), first, rtol=0, atol=1e-6)
    if caps.adaptation != "online":
        assert method.adaptation_state() == {}  # episodic methods carry nothing across images
        return
    head = TestTimeAdapter(method)
    run(head, stream[:3])
    state = {k: v.clone() for k, v in head.state_dict().items()}
    assert method.adaptation_size() >= 0
    resumed = TestTimeAdapter(_build(name, backbone))
    resumed.load_state_dict(state)
    assert resumed.position == 3
    torch.testing.assert_close(run(resumed, stream[3:]), first[3:], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ registration rules
def test_engine_tasks_and_report_read_the_capabilities_not_method_attributes():
    """No hidden rule: no ``getattr`` hook, no mirrored attribute, no second class-specific mechanism."""
    import re
    from pathlib import Path

    import vlprompt

    root = Path(vlprompt.__file__).parent
    hidden = re.compile(r"getattr\((self\.)?method\b|\bmethod\.(image_conditional|modifies_encoders|feature_kind|"
                        r"local_features|class_specific|owns_gradient_step)\b|is_class_specific|model_cls\.")
    hits = [f"{path.relative_to(root)}:{i}: {line.strip()}"
            for part in ("engine", "tasks", "report") for path in sorted((root / part).rglob("*.py"))
            for i, line in enumerate(path.read_text().splitlines(), 1) if hidden.search(line)]
    assert not hits, hits


def test_every_hook_the_engine_calls_is_a_documented_method_with_a_default(vit_backbone):
    hooks = ("encode_images", "training_loss", "combine_gradients", "fit", "after_training", "on_epoch_end",
             "learned_parameters", "fitted_buffers", "text_features", "logits", "forward_features",
             "reset_adaptation", "adapt_and_predict", "start_from", "test_time_views", "adaptation_state",
             "load_adaptation_state", "adaptation_size", "test_time_view_count", "training_transform")
    for hook in hooks:
        assert getattr(PromptMethod, hook).__doc__, hook
    method = build_method("coop", vit_backbone, NAMES, n_ctx=2)
    assert method.fit(_Fit(method)) == {} and method.after_training(_Fit(method)) == {}
    assert method.on_epoch_end(0, 1) is None


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are forgotten after it (the built-ins stay)."""
    list_methods()
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))


def _new_method_class(qualname="Scratch"):
    """A fresh, unregistered PromptMethod subclass (and its config dataclass)."""
    import dataclasses

    @dataclasses.dataclass
    class ScratchConfig:
        class_gains: bool = False

    cls = type(qualname, (PromptMethod,), {"__module__": __name__, "__qualname__": qualname,
                                             "text_features": lambda self: torch.zeros(self.n_cls, 4)})
    return ScratchConfig, cls


@pytest.mark.parametrize("bad", ["CoOp", "1st", "my-method", "", "a b", "_x", "ünï", 3])
def test_a_malformed_name_is_refused(scratch_registry, bad):
    config_cls, cls = _new_method_class()
    with pytest.raises(ConfigError, match="lower case letters, digits and underscores"):
        registry.register_method(bad, config_cls, cls)
    assert bad not in registry._METHODS


def test_a_taken_name_or_a_class_under_a_second_name_is_refused(scratch_registry):
    config_cls, cls = _new_method_class()
    with pytest.raises(ConfigError, match="'coop' is already registered for vlprompt.methods.coop.model.CoOp"):
        registry.register_method("coop", config_cls, cls)
    assert get_method("coop").model_cls.__name__ == "CoOp"
    registry.register_method("scratch_a", config_cls, cls)
    with pytest.raises(ConfigError, match="already registered as 'scratch_a'"):
        registry.register_method("scratch_b", config_cls, cls)
    registry.register_method("scratch_a", config_cls, cls)  # the same declaration again: no change
    _, again = _new_method_class()  # the same class defined anew (its module imported again) replaces it
    registry.register_method("scratch_a", config_cls, again)
    assert get_method("scratch_a").model_cls is again and again.method_name == "scratch_a"
    with pytest.raises(ConfigError, match="subclass of PromptMethod"):
        registry.register_method("scratch_c", config_cls, object)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a dataclass"):
        registry.register_method("scratch_c", dict, _new_method_class("Other")[1])


def test_an_unregistered_class_has_no_name_and_cannot_be_built(scratch_registry):
    from vlprompt.methods.coop import CoOp, CoOpConfig

    _, cls = _new_method_class()
    with pytest.raises(TypeError, match="Scratch is not registered: register it with register_method"):
        cls.method_name  # noqa: B018

    class MyCoOp(CoOp):  # a subclass does not inherit its parent's name
        pass

    with pytest.raises(TypeError, match="not registered"):
        MyCoOp.method_name  # noqa: B018
    with pytest.raises(TypeError, match="not registered"):
        MyCoOp(None, NAMES, CoOpConfig())  # type: ignore[arg-type]


def test_the_decorator_form_registers_the_class(scratch_registry, vit_backbone):
    from vlprompt.methods.registry import Capabilities, register_method

    config_cls, _ = _new_method_class()

    @register_method("scratch_decorated", config_cls, capabilities=Capabilities(image_conditional=True))
    class Decorated(PromptMethod):
        def text_features(self):
            return torch.zeros(self.n_cls, vit_backbone.embed_dim)

    assert get_method("scratch_decorated").model_cls is Decorated and Decorated.method_name == "scratch_decorated"
    method = build_method("scratch_decorated", vit_backbone, NAMES)
    assert method.capabilities.image_conditional and method.method_name == "scratch_decorated"


def test_capabilities_that_depend_on_options_come_from_the_registered_function(scratch_registry, vit_backbone):
    from vlprompt.methods.registry import Capabilities

    coop = get_method("coop")
    assert coop.capabilities_for(make_method_config("coop", {"csc": True})).class_specific
    assert not coop.capabilities_for(make_method_config("coop", {"csc": False})).class_specific
    assert not coop.capabilities_for().class_specific
    assert build_method("coop", vit_backbone, NAMES, n_ctx=2, csc=True).capabilities.class_specific
    assert build_method("kgcoop", vit_backbone, NAMES, n_ctx=2, ctx_init=None, csc=True).capabilities.class_specific
    config_cls, cls = _new_method_class()
    registry.register_method("scratch_caps", config_cls, cls,
                             capabilities=lambda cfg: Capabilities(class_specific=cfg.class_gains))
    entry = get_method("scratch_caps")
    assert entry.capabilities_for(config_cls(class_gains=True)).class_specific
    assert not entry.capabilities_for().class_specific
    _, broken = _new_method_class("Broken")
    registry.register_method("scratch_broken", config_cls, broken, capabilities=lambda cfg: {"class_specific": True})
    with pytest.raises(TypeError, match="returned .* not Capabilities"):
        get_method("scratch_broken").capabilities_for()


def test_base2new_refuses_coop_with_class_specific_context_before_training(tmp_path, tiny_imagefolder, capsys):
    from vlprompt.cli.main import main

    raw = _run_cfg(tmp_path, tiny_imagefolder, "coop", "vlprompt-test-vit", tmp_path / "unused")
    raw["method"] = {"name": "coop", "n_ctx": 2, "csc": True}
    cfg = write_config(tmp_path / "cfg.yaml", **raw)
    out = tmp_path / "b2n"
    assert main(["protocol", "base2new", "-c", str(cfg), "--seeds", "1", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "'coop'" in err and "class-specific" in err and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*")), "a run was trained before the refusal"
