"""Readers for the OOD benchmark sets of ImageNet-1k, in the layouts their distributors and the papers use.

Each set is test-only and holds one class, the set itself (``classnames == [display name]``, label 0):
``vlprompt ood`` relabels every OOD image anyway, and a set's own sub-classes (NINCO's 64, the DTD
textures) are not OOD labels. Each is registered with its group (``register_dataset(..., ood_group=...)``),
which ``vlprompt ood`` averages apart.

==============  =====  ========================================================================================
registry name   group  layouts read under ``data.root`` (tried in this order; ``data.options.layout`` picks one)
==============  =====  ========================================================================================
inaturalist     far    ``benchmark_imglist/imagenet/test_inaturalist.txt`` + ``images_largescale/`` (OpenOOD);
                       ``iNaturalist/images/*`` (MOS subset as MCM, LoCoOp, GalLoP, NegLabel read it)
sun             far    ``benchmark_imglist/imagenet/test_sun.txt`` + ``images_largescale/`` (OpenOOD v1);
                       ``SUN/images/*``
places          far    ``benchmark_imglist/imagenet/test_places.txt`` + ``images_largescale/`` (OpenOOD v1);
                       ``Places/images/*``
textures        far    ``benchmark_imglist/imagenet/test_textures.txt`` + ``images_classic/`` (OpenOOD);
                       ``dtd/images/<class>/*`` (MCM, GalLoP) or ``Texture/images/<class>/*`` (LoCoOp)
openimage_o     far    ``benchmark_imglist/imagenet/test_openimage_o.txt`` + ``images_largescale/`` (OpenOOD,
                       its test part); ``openimage_o/**`` (every image, as NegRefine reads it)
ninco           near   ``benchmark_imglist/imagenet/test_ninco.txt`` + ``images_largescale/`` (OpenOOD);
                       ``NINCO/NINCO_OOD_classes/<class>/*`` or ``NINCO_OOD_classes/<class>/*`` (the NINCO
                       tarball; its ``NINCO_OOD_unit_tests`` and ``NINCO_popular_datasets_subsamples`` are
                       never read)
ssb_hard        near   ``benchmark_imglist/imagenet/test_ssb_hard.txt`` + ``images_largescale/`` (OpenOOD);
                       ``ssb_hard/<wnid>/*``
imagenet_o      near   ``imagenet-o/<wnid>/*`` (Hendrycks et al.'s tarball; its README.txt is not an image)
==============  =====  ========================================================================================

Sources of the layouts:

* MOS subsets: MCM ``utils/detection_util.py`` ``set_ood_loader_ImageNet`` (deeplearning-wisc/MCM @ 006fb40)
  reads ``ImageFolder(root/'iNaturalist')``, ``root/'SUN'``, ``root/'Places'``, ``root/'dtd'/'images'``: the MOS
  tarballs extract to ``iNaturalist/images/*.jpg`` etc., so ``images`` is the one "class" folder. LoCoOp
  ``utils/train_eval_util.py`` ``set_ood_loader_ImageNet`` (AtsuMiyai/LoCoOp @ 4624d52) reads the same, Textures
  from ``Texture/images``; GalLoP ``gallop/datasets/__init__.py:229-258`` (MarcLafon/gallop @ f75999e) from
  ``ood_data/{iNaturalist, SUN, Places, dtd/images}``; NegLabel ``custom_config/clip.py:35-58``
  (XueJiang16/NegLabel @ 3253db6) from ``ood_data/{iNaturalist,SUN,Places}/images`` (its Textures from a
  collated ``dtd/images_collate`` it does not ship: not read here).
* OpenOOD v1.5: ``openood/evaluation_api/datasets.py:275-306`` (Jingkang50/OpenOOD @ 3c35632) declares, for
  ImageNet-1k, ``near: [ssb_hard, ninco]`` and ``far: [inaturalist, textures, openimage_o]``, each an image list
  ``benchmark_imglist/imagenet/test_<set>.txt`` over ``images_largescale/`` (Textures: ``images_classic/``);
  ``openood/datasets/imglist_dataset.py:59-64`` reads a list line as ``<path relative to the data dir> <label>``
  (split at the first space). README.md:146-148 repeats the groups. OpenOOD v1 (same file @ c1e7f4c, line
  294) listed ``places`` and ``sun`` among ImageNet's far-OOD sets, with lists ``test_places.txt`` /
  ``test_sun.txt``; v1.5 dropped them (they overlap ImageNet classes, as NegRefine's README notes).
* NINCO: j-cb/NINCO ``data/paths_config.py`` / ``readme.md`` (the extracted folder holds ``NINCO_OOD_classes``,
  ``NINCO_OOD_unit_tests`` and ``NINCO_popular_datasets_subsamples``; ``data/NINCO_OOD_classes.csv`` lists
  ``NINCO_OOD_classes/<class>/<file>``, class names with spaces, .jpg / .jpeg / .png). NegRefine
  ``src/eval.py:26-31`` (ah-ansari/NegRefine @ 72e4b82) reads ``NINCO_OOD_classes/`` and ``openimage_o/``.
* ImageNet-O: CSP ``custom_config/ImageNet-vs-ImageNetO.py:57-60`` (MengyuanChen21/NeurIPS2024-CSP @ 3a7bdab)
  reads ``ImageNet-O/imagenet-o`` (wnid folders) as its hard OOD set for ImageNet-1k; OpenOOD's earlier
  ``configs/datasets/imagenet/imagenet_ood.yml:16-17`` (@ 0bf1fe2) listed ``imageneto`` under ``nearood``: near here.
  SUN / Places / iNaturalist / Textures as far follows OpenOOD (v1 for SUN and Places).

Options (:data:`OOD_OPTIONS`): ``layout`` (``auto``: an OpenOOD image list when it is there, else the folder
layout; ``openood``; ``folder``), ``allow_outside_root`` and ``check_files`` (as for the CoOp readers: list
entries must stay inside the data folder, listed images must exist). A root, folder or list that is missing
raises :class:`~vlprompt.core.errors.DataError` naming the layouts the set is read from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.data.coop_layouts import (
    COMMON_OPTIONS,
    check_files_exist,
    read_text_lines,
    require_root,
    resolve_entry,
    subfolders,
    take_options,
)
from vlprompt.data.images import list_images
from vlprompt.data.registry import TinyTree, register_dataset
from vlprompt.data.tiny_trees import write_class_images
from vlprompt.data.types import DatasetSplits, Datum

OOD_LAYOUTS = ("auto", "openood", "folder")
OOD_OPTIONS: dict[str, Any] = {**COMMON_OPTIONS, "layout": "auto"}
OPENOOD_LISTS = "benchmark_imglist/imagenet"
"""Where OpenOOD's ImageNet-1k image lists lie under its data root (``scripts/download/download.py``)."""


@dataclass(frozen=True)
class OodSet:
    """One OOD benchmark set and the layouts it is read from.

    Attributes:
        name: registry name (``"ninco"``).
        display: the set's name in papers (``"NINCO"``): its one class name.
        group: ``"near"`` or ``"far"`` (:data:`vlprompt.data.registry.OOD_GROUPS`).
        folders: candidate folders under the root (first that exists wins), each ``(path, kind)`` with kind
            ``"flat"`` (images directly in it), ``"classes"`` (one sub-folder per class, images in each) or
            ``"tree"`` (every image below it).
        openood: ``(list file name, data folder)`` of OpenOOD's layout, or None.
        aliases: other registry names.
    """

    name: str
    display: str
    group: str
    folders: tuple[tuple[str, str], ...]
    openood: tuple[str, str] | None = None
    aliases: tuple[str, ...] = ()

    def layouts(self) -> list[str]:
        """The layouts, as the error messages name them."""
        out = []
        if self.openood:
            out.append(f"<root>/{OPENOOD_LISTS}/{self.openood[0]} listing images under <root>/{self.openood[1]}/ "
                       "(OpenOOD)")
        shown = {"flat": "*", "classes": "<class>/*", "tree": "**"}
        out += [f"<root>/{path}/{shown[kind]}" for path, kind in self.folders]
        return out

    def hint(self) -> str:
        return f"Expected layout of OOD set '{self.name}' ({self.display}): " + "; or ".join(self.layouts()) + "."


OOD_SETS: dict[str, OodSet] = {s.name: s for s in (
    OodSet("inaturalist", "iNaturalist", "far", (("iNaturalist/images", "flat"),),
           ("test_inaturalist.txt", "images_largescale")),
    OodSet("sun", "SUN", "far", (("SUN/images", "flat"),), ("test_sun.txt", "images_largescale")),
    OodSet("places", "Places", "far", (("Places/images", "flat"),), ("test_places.txt", "images_largescale")),
    OodSet("textures", "Textures", "far", (("dtd/images", "classes"), ("Texture/images", "classes")),
           ("test_textures.txt", "images_classic"), aliases=("texture",)),
    OodSet("openimage_o", "OpenImage-O", "far", (("openimage_o", "tree"),),
           ("test_openimage_o.txt", "images_largescale")),
    OodSet("ninco", "NINCO", "near", (("NINCO/NINCO_OOD_classes", "classes"), ("NINCO_OOD_classes", "classes")),
           ("test_ninco.txt", "images_largescale")),
    OodSet("ssb_hard", "SSB-hard", "near", (("ssb_hard", "classes"),), ("test_ssb_hard.txt", "images_largescale")),
    OodSet("imagenet_o", "ImageNet-O", "near", (("imagenet-o", "classes"),)),
)}
"""The ImageNet-1k OOD benchmark sets by registry name."""


def _spelling(name: str) -> str:
    return name.strip().strip("/\\").replace("\\", "/").lower().replace("-", "_")


# The names the papers' code and vlprompt's folder arguments give the sets (``--ood-sets iNaturalist``,
# ``dtd/images``, LoCoOp's ``places365`` / ``Texture``, OpenOOD's ``openimageo``) -> registry name.
_SPELLINGS: dict[str, str] = {
    **{_spelling(k): s.name for s in OOD_SETS.values() for k in (s.name, s.display, *s.aliases)},
    **{_spelling(path): s.name for s in OOD_SETS.values() for path, _ in s.folders},
    **{_spelling(path.split("/")[0]): s.name for s in OOD_SETS.values() for path, _ in s.folders
       if path.split("/")[0] != "dtd"},  # "dtd" alone is CoOp's DTD dataset
    "places365": "places", "openimageo": "openimage_o", "imageneto": "imagenet_o",
}


def canonical_ood_set(name: str) -> str:
    """The registry name of an OOD benchmark set as runs and papers spell it (``iNaturalist``,
    ``iNaturalist/images``, ``dtd/images``, ``Texture``, ``SSB-hard``, ``places365`` -> ``inaturalist``, ...);
    any other name comes back as given (``world_ood_novel``, a folder of one's own)."""
    return _SPELLINGS.get(_spelling(name), name)


# ------------------------------------------------------------------------------------------ reading


def _read_openood(s: OodSet, root: str, opts: dict[str, Any]) -> list[str] | None:
    """The listed images of OpenOOD's layout (None when its list is not under ``root``)."""
    assert s.openood is not None
    list_path = os.path.join(root, OPENOOD_LISTS, s.openood[0])
    if not os.path.isfile(list_path):
        return None
    data_dir = os.path.join(root, s.openood[1])
    if not os.path.isdir(data_dir):
        raise DataError(f"image list '{list_path}' is there but its image folder '{data_dir}' is not. {s.hint()}")
    lines = read_text_lines(list_path, "image list")
    if not lines:
        raise DataError(f"image list '{list_path}' lists no images. {s.hint()}")
    paths = [
        resolve_entry(data_dir, line.split()[0], allow_outside_root=opts["allow_outside_root"],
                      where=partial("image list '{}', line {}".format, list_path, n))
        for n, line in lines
    ]
    if opts["check_files"]:
        check_files_exist(paths, lambda i: f"image list '{list_path}', line {lines[i][0]}",
                          f"Extract the images into '{data_dir}'. {s.hint()}")
    return paths


def _read_folder(s: OodSet, folder: str, kind: str) -> list[str]:
    """Images of one folder layout: ``flat``, ``classes`` (one level of class folders) or ``tree``."""
    if kind == "flat":
        images = list_images(folder)
    elif kind == "tree":
        images = list_images(folder, recursive=True)
    else:
        loose = list_images(folder)
        if loose:
            raise DataError(f"folder '{folder}' holds images directly (e.g. '{os.path.basename(loose[0])}'); "
                            f"they must lie in one sub-folder per class. {s.hint()}")
        images = [p for c in subfolders(folder) for p in list_images(os.path.join(folder, c))]
    if not images:
        raise DataError(f"folder '{folder}' holds no images. {s.hint()}")
    return images


def read_ood_set(name: str, root: str | None, options: dict[str, Any]) -> DatasetSplits:
    """Read OOD set ``name`` (a key of :data:`OOD_SETS`) from ``root``: its images as the test split, one class.

    Raises:
        DataError: no root, a bad option, no layout of the set under the root, an empty folder, a list entry
            outside its folder or naming a missing image.
    """
    s = OOD_SETS[name]
    opts = take_options(name, options, OOD_OPTIONS)
    if opts["layout"] not in OOD_LAYOUTS:
        raise DataError(f"data.options.layout (dataset '{name}') must be one of {', '.join(OOD_LAYOUTS)}; "
                        f"got {opts['layout']!r}.")
    root = require_root(root, name)
    paths = _read_openood(s, root, opts) if s.openood and opts["layout"] != "folder" else None
    if paths is None and opts["layout"] == "openood":
        if s.openood is None:
            raise DataError(f"OOD set '{name}' has no OpenOOD image list; use data.options.layout: folder. "
                            f"{s.hint()}")
        raise DataError(f"image list '{os.path.join(root, OPENOOD_LISTS, s.openood[0])}' not found. {s.hint()}")
    if paths is None:
        found = [(os.path.join(root, path), kind) for path, kind in s.folders
                 if os.path.isdir(os.path.join(root, path))]
        if not found:
            raise DataError(f"no folder of OOD set '{name}' under dataset root '{root}' (option data.root). "
                            f"{s.hint()}")
        paths = _read_folder(s, *found[0])
    test = [Datum(p, 0, s.display) for p in paths]
    return DatasetSplits(name=name, classnames=[s.display], train=[], val=[], test=test)


# ------------------------------------------------------------------------------------------ registering


def _tiny_tree(s: OodSet, folder: Path) -> TinyTree:
    """The set's first folder layout with 2 tiny images (in 2 class folders where the layout has classes)."""
    path, kind = s.folders[0]
    base = folder / path
    if kind == "flat":
        write_class_images(base, 0, 2, prefix=s.name)
    else:
        for i, cls in enumerate(("class a", "class_b")):
            write_class_images(base / cls if kind == "classes" else base / "images" / cls, i, 1, prefix=s.name)
    return TinyTree(str(folder))


def _register(s: OodSet) -> None:
    def reader(root: str | None = None, **options: Any) -> DatasetSplits:
        return read_ood_set(s.name, root, options)

    reader.__name__ = reader.__qualname__ = f"read_{s.name}"
    reader.__doc__ = f"Read the OOD set {s.display} ({s.group}), test only. {s.hint()}"
    register_dataset(s.name, *s.aliases, template="a photo of a {}.", tiny_tree=partial(_tiny_tree, s),
                     test_time_views="crop",
                     ood_group=s.group)(reader)


for _s in OOD_SETS.values():
    _register(_s)
