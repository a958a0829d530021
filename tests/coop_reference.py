"""An independent re-implementation of the reference's few-shot split (CoOp's dataset readers on Dassl's
``DatasetBase``), and small trees in every CoOp layout to compare vlprompt with it (issue 18).

It reads the trees as CoOp's readers do and samples as Dassl does, with the *global* ``random``
module seeded by ``random.seed`` exactly like the reference; it shares no code with vlprompt.
Sources (KaiyangZhou/CoOp ff61507, KaiyangZhou/Dassl.pytorch c61a1b5):

* CoOp ``datasets/oxford_pets.py`` L122-138 ``read_split`` (all 9 split-file datasets use it),
  L33-52 (few-shot train, then val with ``min(K, 4)``, then ``subsample_classes``),
  L140-186 ``subsample_classes``;
* CoOp ``datasets/fgvc_aircraft.py`` L22-31, L56-71; ``datasets/imagenet.py`` L41-61 (train only,
  val = test), L64-91 (sorted class folders, ``os.listdir`` order inside each);
* CoOp ``train.py`` L130-132 (``set_random_seed`` before anything else), Dassl ``dassl/utils/tools.py``
  L73-77 (``random.seed``);
* Dassl ``dassl/data/datasets/base_dataset.py`` L167-209 ``generate_fewshot_dataset`` (``repeat=False``),
  L211-223 ``split_dataset_by_label``.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from pathlib import Path

from data_trees import (
    SPLIT_JSON_DATASETS,
    make_fgvc_aircraft,
    make_imagenet,
    make_split_json_dataset,
    write_json,
)

SEEDS = (1, 2, 3)
SHOTS = (1, 2, 4, 8, 16)
CLASSES = ("class_a", "class_b", "class_c", "class_d")  # base: a, b; new: c, d
VARIANTS = ("707-320", "A300B4", "Boeing 747", "Cessna 172")
WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark", "n01491361": "tiger shark"}
PER_SPLIT = {"train": 17, "val": 5, "test": 1}
SHORT = {"train": 5, "val": 3}  # the last class keeps only this many: kept whole at K = 8, 16 (val: K >= 4)
COOP_LAYOUTS = (*SPLIT_JSON_DATASETS, "fgvc_aircraft")


# ------------------------------------------------------------------ the trees
def _reorder(entries: list, order: str, salt: int) -> list:
    if order == "shuffled":
        entries = list(entries)
        random.Random(salt).shuffle(entries)
    return entries


def build_tree(root: Path, name: str, order: str) -> None:
    """CoOp's layout for ``name`` with 4 classes, the last one short; split lists sorted or shuffled."""
    if name in SPLIT_JSON_DATASETS:
        split = make_split_json_dataset(root, name, CLASSES, PER_SPLIT)
        for s, n in SHORT.items():
            split[s] = [e for e in split[s] if e[1] != 3] + [e for e in split[s] if e[1] == 3][:n]
        split = {s: _reorder(rows, order, i) for i, (s, rows) in enumerate(split.items())}
        ds_dir, _, split_file = SPLIT_JSON_DATASETS[name]
        write_json(root / ds_dir / split_file, split)
    elif name == "fgvc_aircraft":
        base = make_fgvc_aircraft(root, VARIANTS, PER_SPLIT)
        for i, s in enumerate(("train", "val")):
            path = base / f"images_variant_{s}.txt"
            lines = path.read_text().splitlines()
            last = [ln for ln in lines if ln.endswith(VARIANTS[3])]
            lines = [ln for ln in lines if not ln.endswith(VARIANTS[3])] + last[: SHORT[s]]
            path.write_text("\n".join(_reorder(lines, order, i)) + "\n")
    else:  # imagenet: the order is the file system's (os.listdir)
        base = make_imagenet(root, WNIDS, train_per_class=PER_SPLIT["train"], val_per_class=2)
        short_dir = base / "images" / "train" / sorted(WNIDS)[3]
        for p in sorted(short_dir.iterdir())[SHORT["train"]:]:
            p.unlink()


# ------------------------------------------------------------------ independent re-implementation
Item = tuple  # (impath, label, classname), the three Datum fields the reference uses


def coop_read(root: Path, name: str) -> tuple[list[Item], list[Item], list[Item]]:
    """train, val, test as CoOp's reader for ``name`` lists them (see module doc)."""
    root = Path(os.path.abspath(root))
    if name in SPLIT_JSON_DATASETS:  # OxfordPets.read_split, L122-138
        ds_dir, image_dir, split_file = SPLIT_JSON_DATASETS[name]
        prefix = os.path.join(root, ds_dir, image_dir) if image_dir else os.path.join(root, ds_dir)
        with open(root / ds_dir / split_file) as f:
            split = json.load(f)
        return tuple(  # type: ignore[return-value]
            [(os.path.join(prefix, p), int(y), c) for p, y, c in split[s]] for s in ("train", "val", "test")
        )
    if name == "fgvc_aircraft":  # fgvc_aircraft.py L22-31, L56-71
        ds = root / "fgvc_aircraft"
        cname2lab = {c.strip(): i for i, c in enumerate((ds / "variants.txt").read_text().splitlines())}
        out = []
        for s in ("train", "val", "test"):
            rows = []
            for line in (ds / f"images_variant_{s}.txt").read_text().splitlines():
                parts = line.strip().split(" ")
                cname = " ".join(parts[1:])
                rows.append((os.path.join(ds, "images", parts[0] + ".jpg"), cname2lab[cname], cname))
            out.append(rows)
        return tuple(out)  # type: ignore[return-value]
    ds = root / "imagenet"  # imagenet.py L64-91
    names = {}
    for line in (ds / "classnames.txt").read_text().splitlines():
        parts = line.strip().split(" ")
        names[parts[0]] = " ".join(parts[1:])
    lists = []
    for s in ("train", "val"):
        split_dir = os.path.join(ds, "images", s)
        folders = sorted(f.name for f in os.scandir(split_dir) if f.is_dir())
        rows = []
        for label, folder in enumerate(folders):
            for imname in [f for f in os.listdir(os.path.join(split_dir, folder)) if not f.startswith(".")]:
                rows.append((os.path.join(split_dir, folder, imname), label, names[folder]))
        lists.append(rows)
    return lists[0], lists[1], lists[1]


def dassl_generate_fewshot(data_source: list[Item], num_shots: int) -> list[Item]:
    """``generate_fewshot_dataset`` with one data source and ``repeat=False`` (global ``random``)."""
    tracker: dict[int, list[Item]] = defaultdict(list)
    for item in data_source:
        tracker[item[1]].append(item)
    dataset: list[Item] = []
    for label in tracker:
        members = tracker[label]
        dataset += random.sample(members, num_shots) if len(members) >= num_shots else members
    return dataset


def coop_subsample(*lists: list[Item], subsample: str) -> list[list[Item]]:
    """``OxfordPets.subsample_classes``: labels of the first list sorted, first ceil(n/2) are base."""
    if subsample == "all":
        return [list(x) for x in lists]
    labels = sorted({item[1] for item in lists[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}
    return [[(p, relabel[y], c) for p, y, c in items if y in relabel] for items in lists]


def reference_run(root: Path, name: str, seed: int, shots: int, subsample: str) -> tuple[list[Item], list[Item]]:
    """The few-shot train and val a reference run with ``--seed seed`` ends up with."""
    train, val, test = coop_read(root, name)
    state = random.getstate()
    try:
        random.seed(seed)  # train.py L130-132 -> set_random_seed
        train = dassl_generate_fewshot(train, shots)
        if name == "imagenet":  # imagenet.py L52-61: only train is sampled; val = test
            train, test = coop_subsample(train, test, subsample=subsample)
            return train, test
        val = dassl_generate_fewshot(val, min(shots, 4))
    finally:
        random.setstate(state)
    train, val, _ = coop_subsample(train, val, test, subsample=subsample)
    return train, val


def as_items(data) -> list[Item]:
    return [(d.path, d.label, d.classname) for d in data]
