"""Zero-shot prompt templates.

* a dataset's own hand-crafted template (CoOp's ``CUSTOM_TEMPLATES`` of ``trainers/zsclip.py`` for
  its datasets) is declared where the dataset is registered
  (:class:`vlprompt.data.registry.DatasetInfo`; :data:`DEFAULT_TEMPLATE` when it declares none).
* :data:`IMAGENET_TEMPLATES` — CLIP's 80 ImageNet prompt templates, taken from
  ``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES`` (loaded lazily: importing open_clip
  imports torch).
* :data:`IMAGENET_TEMPLATES_SELECT` — the 7 templates CoOp's ``ZeroshotCLIP2`` ensembles.

:func:`get_templates` turns a template spec (``"dataset"``, ``"imagenet80"``,
``"imagenet_select"`` or an explicit list) into a list of format strings with one ``{}`` each.
"""

from __future__ import annotations

import functools
import string
from typing import Any

from vlprompt.core.errors import DataError

DEFAULT_TEMPLATE = "a photo of a {}."
"""Template of a dataset that declares none (custom ImageFolder / CSV data without option ``template``)."""

IMAGENET_TEMPLATES_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
"""The 7 ImageNet templates CoOp's ``ZeroshotCLIP2`` ensembles (``trainers/imagenet_templates.py``)."""

TEMPLATE_SPECS = ("dataset", "imagenet80", "imagenet_select")


@functools.lru_cache(maxsize=1)
def imagenet_templates() -> tuple[str, ...]:
    """CLIP's 80 ImageNet templates as format strings (from open_clip's lambdas)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def __getattr__(name: str) -> Any:  # PEP 562: IMAGENET_TEMPLATES is computed on first access
    if name == "IMAGENET_TEMPLATES":
        return imagenet_templates()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_template(template: Any, where: str = "template") -> str:
    """Return ``template`` if it is a string with exactly one ``{}`` placeholder, else raise DataError."""
    if not isinstance(template, str):
        raise DataError(f"{where} {template!r} must be a string containing one '{{}}' for the class name.")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise DataError(
            f"{where} '{template}' is not a valid format string ({exc}); write literal braces as "
            f"'{{{{' and '}}}}' and put exactly one '{{}}' where the class name goes."
        ) from None
    if fields != [""]:
        raise DataError(
            f"{where} '{template}' must contain exactly one '{{}}' (where the class name goes) and "
            f"no other placeholders; found {len(fields)} placeholder(s)."
        )
    return template


def get_templates(
    spec: str | list[str] | tuple[str, ...], dataset: str, *, template: str | None = None
) -> list[str]:
    """Resolve a template spec to a list of format strings.

    Args:
        spec: ``"dataset"`` (the dataset's CoOp template), ``"imagenet80"`` (CLIP's 80 ImageNet
            templates), ``"imagenet_select"`` (CoOp's ``ZeroshotCLIP2``: the 7 selected templates
            plus the dataset template, which CoOp leaves out for ImageNet itself), a single template
            string containing ``{}``, or an explicit list of templates.
        dataset: registry name (or alias) of the dataset.
        template: the dataset's own template (``DatasetSplits.template``; custom datasets may set
            their own); when None, the template registered with the dataset.

    Raises:
        DataError: unknown spec, empty list, or a template without exactly one ``{}``.
    """
    from vlprompt.data.registry import get_dataset_info  # the registry imports this module

    own = check_template(template, "dataset template") if template is not None else get_dataset_info(dataset).template
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "dataset":
            return [own]
        if key == "imagenet80":
            return list(imagenet_templates())
        if key == "imagenet_select":
            out = list(IMAGENET_TEMPLATES_SELECT)
            if get_dataset_info(dataset).name != "imagenet" and own not in out:  # zsclip.py: NAME != "ImageNet"
                out.append(own)
            return out
        if "{" in spec:
            return [check_template(spec, "prompt template")]
        raise DataError(
            f"unknown prompt template spec '{spec}'; use one of {', '.join(TEMPLATE_SPECS)} or a list "
            f"of templates each containing one '{{}}'."
        )
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise DataError("the list of prompt templates is empty; give at least one template with '{}'.")
        return [check_template(t, f"prompt template #{i}") for i, t in enumerate(spec)]
    raise DataError(
        f"prompt template spec must be one of {', '.join(TEMPLATE_SPECS)} or a list of strings, "
        f"got {type(spec).__name__}."
    )
