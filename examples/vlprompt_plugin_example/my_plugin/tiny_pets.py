# my_plugin/tiny_pets.py
"""tiny_pets: <root>/tiny_pets/images/<class>/*.png, listed by <root>/tiny_pets/split.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.data.coop_layouts import read_split_zhou, require_file, require_root
from vlprompt.data.registry import TinyTree, register_dataset
from vlprompt.data.tiny_trees import write_class_images
from vlprompt.data.types import DatasetSplits

CLASSES = ("abyssinian", "beagle")


def tiny_tree(folder: Path) -> TinyTree:
    """A minimal tree of the layout: 2 classes, 3 train / 2 val / 1 test images each."""
    images = folder / "tiny_pets" / "images"
    split = {
        name: [[path.relative_to(images).as_posix(), label, cls]
               for label, cls in enumerate(CLASSES)
               for path in write_class_images(images / cls, label, count, prefix=name, ext=".png")]
        for name, count in {"train": 3, "val": 2, "test": 1}.items()
    }
    (folder / "tiny_pets" / "split.json").write_text(json.dumps(split))
    return TinyTree(str(folder))


@register_dataset("tiny_pets", "TinyPets", template="a photo of a {}, a type of pet.", sampler="reference",
                  tiny_tree=tiny_tree)
def read_tiny_pets(root: str | None = None, **options: Any) -> DatasetSplits:
    """Read <root>/tiny_pets: split.json maps train / val / test to [relative path, label, class name] rows."""
    if options:
        raise DataError(f"dataset 'tiny_pets' takes no data.options, got: {', '.join(sorted(options))}.")
    base = os.path.join(require_root(root, "tiny_pets"), "tiny_pets")
    split_file = require_file(os.path.join(base, "split.json"), "split file", "Expected <root>/tiny_pets/split.json.")
    classnames, splits = read_split_zhou(split_file, os.path.join(base, "images"))
    return DatasetSplits("tiny_pets", classnames, splits["train"], splits["val"], splits["test"])
