"""Plain data records shared by every dataset reader.

A dataset is a :class:`DatasetSplits`: class names (index == label) plus lists of
:class:`Datum` for train / val / test, the dataset's zero-shot template, and the function that
turns a ``Datum.path`` into a PIL image (:func:`file_loader`, files on disk, by default; generated
images for the synthetic world).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Datum:
    """One labelled image. ``path`` is absolute for files on disk (or a world key)."""

    path: str
    label: int
    classname: str


def file_loader(path: str) -> Image.Image:
    """The default ``DatasetSplits.loader``: ``path`` is an image file (:func:`vlprompt.data.images.load_image`)."""
    from vlprompt.data.images import load_image

    return load_image(path)


@dataclass
class DatasetSplits:
    """A classification dataset with its splits.

    Attributes:
        name: registry name, e.g. ``"oxford_pets"``.
        classnames: human-readable class names; ``classnames[label]``.
        train / val / test: the splits (``val`` may be empty).
        template: the dataset's hand-crafted zero-shot template, with ``{}``; None (what a reader
            usually leaves) is filled in by ``build_dataset`` with the template registered with the
            reader (:class:`vlprompt.data.registry.DatasetInfo`).
        loader: maps ``Datum.path`` to an RGB PIL image.
    """

    name: str
    classnames: list[str]
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    template: str | None = None
    loader: Callable[[str], Image.Image] = field(default=file_loader, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)
