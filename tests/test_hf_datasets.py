"""`data.dataset: hf:<source>`: a Hugging Face dataset saved with `save_to_disk`, as parquet files, or cached as a
dataset id, read offline with its ClassLabel names and split names; trained on with few-shot sampling; clear errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")

from vlprompt.cli.main import main  # noqa: E402
from vlprompt.core.errors import DataError  # noqa: E402
from vlprompt.data.registry import build_dataset, get_dataset_info  # noqa: E402
from vlprompt.data.tiny_trees import class_color  # noqa: E402
from vlprompt.engine.features import encode_items  # noqa: E402

from conftest import tiny_config, write_config  # noqa: E402

CLASSES = ["red_thing", "green_thing", "blue_thing"]
COUNTS = {"train": 4, "validation": 2, "test": 2}


def _dataset_dict(shift: int = 0) -> object:
    """3 colour classes (ClassLabel), an image column, a text column; ``shift`` changes every pixel."""
    from PIL import Image

    features = datasets.Features({"picture": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES),
                                  "caption": datasets.Value("string")})
    parts = {}
    for split, count in COUNTS.items():
        rows: dict[str, list] = {"picture": [], "label": [], "caption": []}
        for label in range(len(CLASSES)):
            for i in range(count):
                rng = np.random.default_rng(100 * label + i + 7 * shift)
                px = np.clip(np.array(class_color(label)) + rng.integers(-12, 13, (16, 16, 3)) + shift, 0, 255)
                rows["picture"].append(Image.fromarray(px.astype(np.uint8)))
                rows["label"].append(label)
                rows["caption"].append(f"{CLASSES[label]} {i}")
        parts[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(parts)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """The same dataset saved with ``save_to_disk`` and as parquet files (a Hub repository's ``data/`` layout)."""
    root = tmp_path_factory.mktemp("hf_data")
    dd = _dataset_dict()
    dd.save_to_disk(str(root / "disk"))
    for split, ds in dd.items():
        (root / "parquet" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "parquet" / "data" / f"{split}-00000-of-00001.parquet"))
    return {"disk": root / "disk", "parquet": root / "parquet"}


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    """datasets' preparation cache and the hub cache in the test's folder, never the user's."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)


def _pixels(splits, items) -> list[np.ndarray]:
    return [np.asarray(splits.loader(d.path)) for d in items]


def test_save_to_disk_and_parquet_read_alike(saved):
    disk = build_dataset(f"hf:{saved['disk']}")
    pq = build_dataset(f"hf:{saved['parquet']}")
    for s in (disk, pq):
        assert s.classnames == CLASSES  # ClassLabel.names, as written
        assert [len(s.train), len(s.val), len(s.test)] == [12, 6, 6]  # val: the 'validation' split
        assert [d.label for d in s.train] == [c for c in range(3) for _ in range(4)]
        assert all(d.classname == CLASSES[d.label] for d in s.train + s.val + s.test)
        image = s.loader(s.test[0].path)
        assert image.mode == "RGB" and image.size == (16, 16)
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(disk, disk.test), _pixels(pq, pq.test)))
    # one dataset's cache keys never name another's images (features are cached by key)
    assert not {d.path for d in disk.train} & {d.path for d in pq.train}
    assert get_dataset_info(f"hf:{saved['disk']}").name == "hf" and disk.name == f"hf:{saved['disk']}"


def test_other_content_at_the_same_path_gets_other_keys_and_features(tmp_path, vit_backbone):
    folder = tmp_path / "ds"
    _dataset_dict().save_to_disk(str(folder))
    first = build_dataset(f"hf:{folder}")
    shutil.rmtree(folder)
    _dataset_dict(shift=60).save_to_disk(str(folder))
    second = build_dataset(f"hf:{folder}")
    assert {d.path for d in first.test}.isdisjoint({d.path for d in second.test})
    transform = vit_backbone.eval_transform()
    a, _ = encode_items(vit_backbone.encode_image, first.test, first.loader, transform, cache_owner=vit_backbone)
    b, _ = encode_items(vit_backbone.encode_image, second.test, second.loader, transform, cache_owner=vit_backbone)
    assert not torch.allclose(a, b)


def test_cached_dataset_id_is_read_offline(saved, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "datasets--someone--colours" / "snapshots" / ("ab" * 20)
    shutil.copytree(saved["parquet"], snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("ab" * 20)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    s = build_dataset("hf:someone/colours")
    assert s.classnames == CLASSES and len(s.test) == 6
    with pytest.raises(DataError) as err:
        build_dataset("hf:someone/missing")
    assert str(err.value) == (f"hf:someone/missing is not in the local Hugging Face cache ({cache}); fetch it with: "
                              "hf download someone/missing --repo-type dataset")


def test_options_columns_and_splits(saved):
    s = build_dataset("hf", str(saved["disk"]), val_split="test", test_split="validation", image_column="picture")
    assert (len(s.val), len(s.test)) == (6, 6)
    strings = build_dataset(f"hf:{saved['disk']}", label_column="caption")  # string labels: sorted train labels
    assert strings.classnames == sorted({f"{c} {i}" for c in CLASSES for i in range(4)})
    with pytest.raises(DataError, match="label 'red_thing 2', which is not a class of its train split"):
        build_dataset(f"hf:{saved['disk']}", label_column="caption", train_split="validation", val_split="train")


@pytest.mark.parametrize("options, message", [
    ({"test_split": "eval"}, re.escape("has no split 'eval' (data.options.test_split); its splits are: train, "
                                       "validation, test")),
    ({"val_split": "dev"}, re.escape("has no split 'dev' (data.options.val_split)")),
    ({"label_column": "y"}, re.escape("has no column 'y' (data.options.label_column); its columns are: picture, "
                                      "label, caption")),
    ({"image_column": "caption"}, "column 'caption' of Hugging Face dataset '.*' is not an image column "
                                  r"\(Value\(string\)\); its image columns: picture"),
    ({"image_column": "label"}, "column 'label' .* is not an image column"),
    ({"colour": 1}, "unknown option 'colour'"),
])
def test_errors(saved, options, message):
    with pytest.raises(DataError, match=message):
        build_dataset(f"hf:{saved['disk']}", **options)


def test_errors_of_sources(tmp_path, saved):
    with pytest.raises(DataError, match="is not a folder or file .* nor a dataset id"):
        build_dataset(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="needs a source"):
        build_dataset("hf")
    with pytest.raises(DataError, match="names no source"):
        build_dataset("hf:")
    datasets.load_from_disk(str(saved["disk"]))["train"].save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DataError, match="one split saved with Dataset.save_to_disk"):
        build_dataset(f"hf:{tmp_path / 'one'}")


def test_train_and_evaluate_few_shot_through_the_cli(saved, tmp_path, capsys):
    cfg = tiny_config(tmp_path, saved["disk"], data={"dataset": f"hf:{saved['parquet']}", "root": None, "shots": 2},
                      optim={"max_epoch": 1}, train={"output_dir": str(tmp_path / "runs" / "{dataset}")})
    config = write_config(tmp_path / "cfg.yaml", **cfg)
    assert main(["train", "-c", str(config)]) == 0
    run = next((tmp_path / "runs").iterdir())
    assert run.name.startswith("hf_") and ":" not in run.name and (run / "prompt.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == f"hf:{saved['parquet']}" and metrics["test"]["n"] == 6
    few = json.loads((run / "fewshot.json").read_text())
    assert sorted(label for _, label, _ in few["train"]) == [0, 0, 1, 1, 2, 2]  # [path, label, class name]
    assert main(["eval", "--run", str(run)]) == 0
    assert [p.name for p in run.glob("eval_hf_*_test.json")]
    bad = write_config(tmp_path / "bad.yaml", **{**cfg, "data": {**cfg["data"], "options": {"test_split": "eval"}}})
    capsys.readouterr()
    assert main(["zeroshot", "-c", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "its splits are: train, validation, test" in err[0]


@pytest.mark.slow
@pytest.mark.subprocess
def test_vlprompt_works_without_datasets():
    """Importing vlprompt and listing datasets never imports `datasets`; without it, hf: names the extra."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'datasets' or name.startswith('datasets.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from vlprompt.data.registry import build_dataset, list_datasets\n"
        "assert 'hf' in list_datasets()\n"
        "try:\n"
        "    build_dataset('hf:/x')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
        "assert 'datasets' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "DataError" in out.stdout and 'pip install -e ".[hf-datasets]"' in out.stdout
