"""The streaming test-time API: ``adapter = vlprompt.online(method, prompt_or_backbone, classnames)``.

For deployment, one unlabeled image after another (an online cache such as TDA grows as the stream goes by;
an episodic method such as TPT adapts to each image alone)::

    adapter = vlprompt.online("tda", "ViT-B-16", classnames, pretrained="openai")
    logits = adapter.predict(pil_images)      # [B, n_cls]: adapted and predicted one after the other
    adapter.save("stream.safetensors")        # the cache, the position, the cost so far (safetensors)
    adapter = vlprompt.online("tda", "ViT-B-16", classnames, pretrained="openai", state="stream.safetensors")

The object is a :class:`~vlprompt.engine.test_time.TestTimeAdapter`, the same per-image loop ``vlprompt protocol
tta`` runs: the views of the ``i``-th image of the stream are seeded by ``(seed, i)`` exactly as the protocol
seeds them by the image's index, so a stream given in the protocol's order gives the protocol's predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ConfigError, DataError
from vlprompt.engine.test_time import TestTimeAdapter, method_views


def online(method: str, prompt_or_backbone: str | Path | Backbone, classnames: Sequence[str], *,
           options: Mapping[str, Any] | None = None, pretrained: str | None = None,
           templates: Sequence[str] | None = None, views: int | None = None, augment: str | None = None,
           dataset_views: str = "augmix", seed: int = 0, device: str = "auto",
           state: str | Path | Mapping[str, Any] | None = None) -> TestTimeAdapter:
    """A streaming test-time adapter of ``method`` for ``classnames`` (module docstring).

    Args:
        method: a registered method (``tda``, ``dpe``, ``boostadapter``, ``tpt``, ``zero``, ``zeroshot`` ...).
        prompt_or_backbone: a built backbone, an open_clip model name (with ``pretrained``) or ``family:model``
            (``hf:<dir>``), or a prompt file (``.safetensors``) to start from (TDA on a CoOp prompt; the backbone
            is the prompt's).
        classnames: the classes to predict.
        options: the method's options (its config fields, e.g. ``{"positive": {...}}`` for TDA).
        pretrained: the open_clip pretrained tag or weights file of a model name.
        templates: hand-crafted templates of the class prompts (default ``"a photo of a {}."``).
        views: views per image, the original included (default: the method's own for ``dataset_views``, else 64).
        augment: ``"augmix"`` or ``"crop"`` views (default: the method's choice for ``dataset_views``).
        dataset_views: the kind of data the stream is (``"augmix"``: fine-grained sets; ``"crop"``: the ImageNet
            sets), as datasets register it.
        seed: seed of the views.
        device: ``auto``, ``cpu``, ``cuda``, ...
        state: a file written by :meth:`~vlprompt.engine.test_time.TestTimeAdapter.save` (or a state dict) to
            continue a stream.
    """
    from vlprompt.backbones.base import load_any_backbone
    from vlprompt.data.registry import TEST_TIME_VIEWS
    from vlprompt.engine.checkpoint import load_prompt
    from vlprompt.engine.run import resolve_device
    from vlprompt.methods.base import MethodContext
    from vlprompt.methods.registry import build_method

    names = [str(c) for c in classnames]
    if not names:
        raise ConfigError("classnames is empty: give the classes to predict")
    for value, option in ((augment, "augment"), (dataset_views, "dataset_views")):
        if value is not None and value not in TEST_TIME_VIEWS:
            raise ConfigError(f"{option} must be one of {', '.join(TEST_TIME_VIEWS)}, got {value!r}")
    if views is not None and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
        raise ConfigError(f"views must be a whole number >= 1 (the original image counts as one), got {views!r}")
    dev = resolve_device(device)
    context = MethodContext(templates=tuple(templates)) if templates else None
    source = prompt = None
    if isinstance(prompt_or_backbone, Backbone):
        backbone = prompt_or_backbone
    elif Path(prompt_or_backbone).suffix == ".safetensors" or Path(prompt_or_backbone).is_file():
        prompt = Path(prompt_or_backbone)
        if not prompt.is_file():
            raise DataError(f"prompt file '{prompt}' does not exist (argument prompt_or_backbone)")
        source = load_prompt(prompt, None, names, allow_new_classes=True, context=context, device=dev)
        backbone = source.backbone
    else:
        backbone = load_any_backbone(str(prompt_or_backbone), pretrained, device=dev)
    built = build_method(method, backbone, names, context=context, **dict(options or {})).to(backbone.device)
    if source is not None:
        try:
            built.start_from(source)
        except ValueError as exc:
            raise ConfigError(f"{exc} (prompt file '{prompt}')") from exc
    adapter = TestTimeAdapter(built, method_views(built, dataset_views, n_views=views, augment=augment, seed=seed)[0])
    if state is not None:
        adapter.load(state)
    return adapter
