"""Every shell and Python snippet of README.md and docs/, executed.

Each ```` ```bash ```` / ```` ```sh ```` / ```` ```console ```` and ```` ```python ```` block of README.md and of
every page under docs/ (the tutorials included) runs here, in document order, one test per document, in a
temporary folder of its own that holds ``configs`` (a link to the repository's) and ``shared`` (see below):

* a shell line ``vlprompt ...`` (or ``python -m vlprompt ...``) runs the CLI in this process
  (``vlprompt.cli.main.main(argv)``) and must exit 0; lines joined by ``&&`` run one after the other, ``\\``
  continues a line, ``#`` starts a comment. Any other program is an error: such a line is substituted or its
  block skipped, below.
* a Python block runs as a script (its own globals).

What the docs name that cannot exist here (real weights, real datasets under ``/data``, a run folder written
as ``runs/.../seed1``) is replaced by the world data, the world's tiny models and small stand-ins, and long
work is shrunk (1 epoch, 1-2 shots, 1-2 seeds, a few test images per class): every such change is one entry of
:data:`SUBSTITUTIONS`, keyed by document and snippet, with its reason. Each entry's original text must occur in
its snippet, so a changed doc fails here until the table is updated. The blocks that cannot run here at all
(installs, the test suite, torchrun on GPUs, SLURM, downloads) are :data:`SKIPPED`, with their full text and
the reason; the python blocks of the docs' "how to add one" sections are run by tests/test_docs_examples.py
(with the example plugin installed) and are left to it.

``shared/`` is made once for the module (:func:`shared`): a CoOp run (``shared/coop``), world images as
folders (``shared/photos``: one ``world_shapes`` test image per class; ``shared/ood/{near,far}``: world OOD
images), two shrunk sweep files and a tiny random-init Hugging Face ``CLIPModel`` folder (``shared/hf_model``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_docs_examples import SNIPPETS as HOW_TO_SNIPPETS

from docs_blocks import DOCS, Block, blocks

ROOT = DOCS.parent
LANGS = ("bash", "sh", "console", "python")
#: shrinking of a world run: 1 epoch, 2 test images per class
SHRINK = "--set optim.max_epoch=1 --set data.options.n_test=2"
#: CoOp on the world with the shipped tiny CLIP, 1 shot, shrunk
WORLD_COOP = f"configs/world/coop_world.yaml --set data.shots=1 {SHRINK}"


@dataclass(frozen=True)
class Sub:
    """In one snippet, ``old`` (which must occur in it) is replaced by ``new``, for ``reason``."""

    old: str
    new: str
    reason: str


REAL_TO_WORLD = ("real weights / dataset -> the world's tiny CLIP on a world dataset, 1 shot, 1 epoch, 2 test images "
                 "per class")
SHARED_RUN = "a run folder the docs elide (runs/.../seed1) -> the shared CoOp run"
SWEEP = "the sweep's grid -> a world grid (zero-shot + CoOp, world_shapes, 1-2 shots, 2 seeds, 1 epoch)"
NOTHING = "removed, not run: "

#: document -> snippet number (1-based, counting that document's runnable blocks) -> substitutions, in order
SUBSTITUTIONS: dict[str, dict[int, list[Sub]]] = {
    "README.md": {
        3: [
            Sub("--config configs/coop/oxford_pets/rn50_16shots.yaml --root /data --seed 1",
                f"--config {WORLD_COOP} --seed 1 --output-dir "
                "runs/coop/oxford_pets/rn50_16shots_nctx16_cscFalse_ctpend/seed1",
                REAL_TO_WORLD + "; the run folder the next line evaluates named explicitly"),
            Sub("runs/.../seed1", "runs/coop/oxford_pets/rn50_16shots_nctx16_cscFalse_ctpend/seed1",
                "the elided run folder: the one trained on the first line"),
            Sub("my_photos/", "shared/photos/", "a folder of photos -> world images"),
            Sub("--config configs/coop/oxford_pets/rn50_16shots.yaml --root /data --templates",
                f"--config configs/world/coop_world.yaml {SHRINK} --templates", REAL_TO_WORLD),
            Sub("-c configs/cocoop/base2new/dtd_cocoop_vit_b16.yaml --root /data --seeds 1,2,3",
                f"-c {WORLD_COOP} --set method.name=cocoop --dataset world_positions --seeds 1,2 -o runs/b2n",
                REAL_TO_WORLD + "; CoCoOp, seeds 1,2; into runs/b2n, which README's report line reads"),
            Sub("-c configs/cocoop/dg_imagenet_cocoop_vit_b16.yaml --root /data",
                f"-c {WORLD_COOP} --set method.name=cocoop --seeds 1", REAL_TO_WORLD + "; CoCoOp, seed 1"),
            Sub("--targets imagenetv2,imagenet_sketch,imagenet_a,imagenet_r",
                "--targets world_shapes_sketch,world_shapes_cartoon", "ImageNet's shifts -> world_shapes' shifts"),
            Sub("-c CONFIG --root /data --targets imagenet_shifts",
                "-c configs/world/tta_world.yaml --set method.name=tpt --set data.options.n_test=1 --views 4 "
                "--targets world_shapes_sketch",
                "any config -> TPT on the world, 1 test image per class, 4 views; ImageNet's shifts -> one world "
                "shift"),
            Sub("-c configs/tda/imagenet_a.yaml --root /data --targets imagenet_a --orders 5",
                "-c configs/world/tta_world.yaml --set method.name=tda --set data.options.n_test=1 "
                "--targets world_shapes_sketch --orders 2",
                "TDA on ImageNet-A -> TDA on a world shift, 1 test image per class, 2 stream orders"),
            Sub("-c configs/upl/dtd_rn50.yaml --root /data",
                f"-c {WORLD_COOP} --set method.name=upl --dataset world_positions",
                REAL_TO_WORLD + "; UPL (its top-1 pseudo-labels per class)"),
            Sub("-c configs/locoop/imagenet_vit_b16_16shots.yaml --root /data",
                f"-c configs/world/locoop_world.yaml --shots 1 {SHRINK} --output-dir "
                "runs/locoop/imagenet/vit_b16_16shots/seed1", REAL_TO_WORLD + "; LoCoOp's run folder named"),
            Sub("--ood-sets /data/ood/iNaturalist,/data/ood/SUN,/data/ood/Places,/data/ood/dtd",
                "--ood-sets world_ood_shapes,world_ood_novel", "the OOD folders -> two world OOD sets"),
            Sub("-c configs/neglabel/imagenet.yaml --root /data",
                "-c configs/world/neglabel_world.yaml --set data.options.n_test=2",
                "NegLabel on ImageNet with WordNet -> on world_shapes with the world's word corpus, 2 test images per "
                "class"),
            Sub("--ood-sets ssb_hard,ninco,inaturalist,textures,openimage_o",
                "--ood-sets world_near_ood,world_ood_novel", "ImageNet's OOD sets -> a near and a far world OOD set"),
        ],
        4: [
            Sub("--model ViT-B-16-quickgelu --pretrained openai             "
                "# OpenAI weights need the -quickgelu names\n"
                "--model ViT-B-16 --pretrained laion2b_s34b_b88k            # LAION weights\n"
                "--model RN50-quickgelu --pretrained /path/to/RN50.pt       # a local checkpoint file\n", "",
                NOTHING + "options of other commands, and they name downloaded weights"),
        ],
        5: [
            Sub("import vlprompt\n",
                "import vlprompt\nimport torch\n\nclassnames = ['circle', 'square', 'triangle']\n"
                "images = torch.randn(2, 3, 64, 64)\n",
                "the block's `classnames` and `images` (stand-ins: 3 names, 2 random images of the world's size)"),
            Sub('"ViT-B-16-quickgelu", pretrained="openai"', '"vlprompt-world-rn", pretrained="world"',
                "OpenAI's weights -> the world's tiny CLIP"),
            Sub('"configs/coop/dtd/rn50_16shots.yaml", ["data.root=/data", "train.seed=2"]',
                '"configs/world/coop_world.yaml", ["train.seed=2", "data.shots=1", "optim.max_epoch=1", '
                '"data.options.n_test=2", "train.output_dir=runs/api"]', REAL_TO_WORLD + "; run folder runs/api"),
            Sub("runs/.../prompt.safetensors", "runs/api/prompt.safetensors", "the elided run: the one trained above"),
            Sub('["photo.jpg"]', '["shared/photos/test/star/0.png"]', "a photo -> a world image"),
        ],
        6: [
            Sub("configs/sweeps/coop_fewshot.yaml --set data.root=/data",
                "shared/sweep_fewshot.yaml -o runs/sweeps/coop_fewshot", SWEEP + " into the doc's folder"),
            Sub("vlprompt sweep configs/sweeps/coop_fewshot.yaml --launcher slurm --partition gpu --max-parallel 20  "
                "# SLURM jobs\n", "", NOTHING + "submits SLURM jobs"),
            Sub("vlprompt import-coop output/.../prompt_learner/model.pth.tar-50 -c CFG -o prompt.safetensors\n", "",
                NOTHING + "needs a checkpoint of the published CoOp code: tests/test_import_coop.py writes one and "
                          "imports it"),
            Sub("vlprompt import-split DATA/dtd/split_fewshot/shot_16-seed_1.pkl --dataset dtd --root DATA -o "
                "dtd_16_1.json\n", "",
                NOTHING + "needs CoOp's pickled split and DTD: tests/test_reference_splits.py writes one and reads it"),
        ],
        7: [Sub("configs/sweeps/world_fewshot.yaml", "shared/sweep_fewshot.yaml -o runs/sweeps/world_fewshot",
                SWEEP + " (the full grid is 120 runs, about 2 minutes)")],
    },
    "backbones.md": {
        1: [
            Sub("vlprompt train -c my.yaml --model ViT-B-16-SigLIP2 --pretrained webli\n", "",
                NOTHING + "downloads SigLIP 2's weights and tokenizer"),
            Sub("-c my.yaml --model hf:/models/clip-vit-base-patch16",
                f"-c {WORLD_COOP} --model hf:shared/hf_model --output-dir runs/hf",
                "a downloaded transformers CLIP -> a tiny random-init CLIPModel folder (the hf family's test model) "
                "on the world, 1 shot, 1 epoch"),
        ],
    },
    "deploy.md": {
        1: [
            Sub('pip install -e ".[export]"               # in the vlprompt clone (in .[dev]): onnx, onnxscript, '
                "onnxruntime\n", "", NOTHING + "an install; .[dev] holds these packages"),
            Sub("runs/coop_eurosat_16shots", "shared/coop", "a run folder -> the shared CoOp run"),
            Sub("-c configs/coop/eurosat/vit_b16_16shots.yaml --root /data",
                "-c configs/world/coop_world.yaml --set data.options.n_test=2", REAL_TO_WORLD),
            Sub("photos/", "shared/photos/", "a folder of photos -> world images"),
        ],
        3: [
            Sub("runs/coop_eurosat_16shots --format hub -o eurosat-coop", "shared/coop --format hub -o eurosat-coop",
                "a run folder -> the shared CoOp run"),
            Sub("hf upload me/eurosat-coop eurosat-coop            # huggingface_hub's CLI (`hf auth login` first)\n",
                "", NOTHING + "an upload (network, an account)"),
            Sub("hf download me/eurosat-coop                       # into the local cache (HF_HUB_CACHE / HF_HOME)\n",
                "", NOTHING + "a download (network): the module's HF_HUB_CACHE already holds me/eurosat-coop as "
                "`hf download` leaves it, exported from the shared CoOp run"),
            Sub("photos/", "shared/photos/", "a folder of photos -> world images"),
            Sub("-c configs/coop/eurosat/vit_b16_16shots.yaml", "-c configs/world/coop_world.yaml --set "
                "data.options.n_test=2", REAL_TO_WORLD),
        ],
        4: [
            Sub('["photo.jpg"]', '["shared/photos/test/star/0.png"]', "a photo -> a world image"),
        ],
        2: [
            Sub('"model.onnx"', '"eurosat.onnx"', "the file the block above exported"),
            Sub("    return [names[i] for i in logits.argmax(axis=1)]",
                "    return [names[i] for i in logits.argmax(axis=1)]\n"
                "assert classify(['shared/photos/test/star/0.png', 'shared/photos/test/ring/0.png']) == "
                "['star', 'ring']",
                "the block defines classify(): called on two world images whose classes the run knows"),
        ],
    },
    "distributed.md": {
        3: [
            Sub("configs/sweeps/coop_fewshot.yaml --set data.root=/data", "shared/sweep_fewshot.yaml -o runs/shard",
                SWEEP),
            Sub("${SLURM_ARRAY_TASK_ID}/8", "0/8", "SLURM's array index -> shard 0"),
        ],
    },
    "methods.md": {
        2: [
            Sub("-c tpt.yaml --root /data", "-c configs/world/tta_world.yaml --set method.name=tpt --set "
                "data.options.n_test=1 --views 4", "a TPT config on real data -> TPT on the world, 1 test image per "
                "class, 4 views"),
            Sub("-c tpt.yaml", "-c configs/world/tta_world.yaml --set method.name=tpt --set data.options.n_test=1 "
                "--views 4", "as above"),
            Sub("--targets imagenet_shifts", "--targets world_shapes_sketch", "ImageNet's shifts -> a world shift"),
            Sub("--targets cross_dataset", "--targets world_scenes",
                "the 10 cross-dataset targets -> one world dataset"),
            Sub("--targets imagenet_a,imagenet_r", "--targets world_shapes_cartoon",
                "ImageNet-A / -R -> a world shift"),
            Sub("--prompt coop.safetensors", "--prompt shared/coop/prompt.safetensors",
                "a CoOp prompt -> the shared run's"),
            Sub("-c zeroshot.yaml --targets dtd --views 1",
                "-c configs/world/tta_world.yaml --set data.options.n_test=1 --targets world_positions --views 1",
                "a zero-shot config on DTD -> zero-shot on a world dataset, 1 test image per class"),
        ],
        3: [
            Sub('adapter = vlprompt.online("tda", "ViT-B-16", classnames, pretrained="openai", dataset_views="crop")',
                "import vlprompt\nfrom vlprompt.world.datasets import build_world_dataset\n"
                "shapes = build_world_dataset('world_shapes', n_test=1)\nclassnames = shapes.classnames\n"
                "images = [shapes.loader(d.path) for d in shapes.test]\n"
                "stream = [images[:6], images[6:]]\n"
                'adapter = vlprompt.online("tda", "vlprompt-world-rn", classnames, pretrained="world", '
                'dataset_views="crop")',
                "the block's `classnames` and `stream` -> world_shapes' test images in two batches; OpenAI's "
                "ViT-B/16 -> the world's tiny CLIP"),
        ],
        4: [
            Sub("--run runs/locoop -o runs/locoop/ood --root /data --ood-sets inaturalist,sun,places,textures",
                "--run shared/coop -o runs/locoop/ood --ood-sets world_ood_shapes,world_ood_novel",
                "a LoCoOp run on ImageNet -> the shared CoOp run (MCM / GL-MCM score any prompt); its OOD sets -> "
                "two world OOD sets"),
            Sub("-c configs/neglabel/imagenet.yaml --root /data --ood-sets "
                "ssb_hard,ninco,inaturalist,textures,openimage_o",
                "-c configs/world/neglabel_world.yaml --set data.options.n_test=2 --ood-sets "
                "world_near_ood,world_ood_novel",
                "NegLabel on ImageNet -> on world_shapes with the world's corpus; a near and a far world OOD set"),
            Sub("-c cfg.yaml --prompt p.safetensors --ood-sets /data/my_near_set:near,/data/my_far_set:far",
                "-c configs/world/coop_world.yaml --set data.options.n_test=2 --prompt shared/coop/prompt.safetensors "
                "--ood-sets shared/ood/near:near,shared/ood/far:far",
                "a config and prompt -> the shared CoOp run's; image folders -> folders of world OOD images"),
        ],
        6: [
            Sub("-c configs/coop/dtd/rn50_16shots.yaml", "-c configs/world/coop_world.yaml --set optim.max_epoch=1",
                "CoOp's DTD recipe on a real backbone -> the world's tiny CLIP, 1 epoch (on the doc's hf:colours, "
                "which the block above saved)"),
        ],
    },
    "reports.md": {
        1: [
            Sub("configs/sweeps/coop_fewshot.yaml --set data.root=/data",
                "shared/sweep_fewshot.yaml -o runs/sweeps/coop_fewshot", SWEEP),
            Sub("--run runs/sweeps/coop_fewshot/locoop/.../seed1 --ood-sets iNaturalist/images,SUN/images",
                "--run runs/sweeps/coop_fewshot/coop/default/world_shapes/1shots/seed1 --ood-sets "
                "world_ood_shapes,world_ood_novel", "a LoCoOp run of the sweep -> a CoOp run of the world sweep; "
                "the OOD folders -> two world OOD sets"),
            Sub("vlprompt report runs/b2n --paper cocoop", "vlprompt report runs/sweeps/coop_fewshot --paper cocoop",
                "a base-to-new folder -> the world sweep's (no CoCoOp number matches it: the report says so)"),
        ],
        2: [Sub("runs/coop/dtd/16shots/seed1/metrics.json", "shared/coop/metrics.json", SHARED_RUN)],
    },
    "sweep_format.md": {
        1: [Sub("configs/sweeps/world_fewshot.yaml", "shared/sweep_fewshot.yaml -o runs/sweeps/world_fewshot",
                SWEEP + " (the full grid is 120 runs, about 2 minutes)")],
    },
    "world_results.md": {
        1: [Sub("vlprompt sweep configs/sweeps/world_ood.yaml",
                "vlprompt sweep shared/sweep_ood.yaml -o runs/sweeps/world_ood",
                "the OOD grid (9 methods x 3 seeds) -> zero-shot + CoOp, 1 seed, 1 shot, 1 epoch, two OOD sets")],
    },
}

#: document -> snippet number -> (the snippet's full text, why it does not run here)
SKIPPED: dict[str, dict[int, tuple[str, str]]] = {
    "README.md": {
        1: ('python3.11 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[dev]" && .venv/bin/vlprompt '
            "demo\n", "creates a venv and installs (network), then the 4-minute demo: .ci/run installs exactly so, "
                      "tests/test_demo.py runs the demo"),
        2: (".venv/bin/python -m pytest\n", "the test suite itself"),
    },
    "index.md": {
        1: ('python3.11 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[dev]" && .venv/bin/vlprompt '
            "demo\n", "README.md's set-up command (see there)"),
    },
    "backbones.md": {
        2: ("vlprompt models                                                  # families: ... toy  --model toy:...\n"
            "vlprompt zeroshot -c my.yaml --model toy:vlprompt-test-vit --pretrained none\n"
            "pytest tests/test_backbone_contract.py -k toy                    # the family contract on toy's test "
            "model\n", "needs the docs' plugin package installed: tests/test_docs_examples.py installs it, lists the "
                       "families, trains with toy:vlprompt-test-vit and runs the contract tests on it"),
    },
    "distributed.md": {
        1: ("# 4 GPUs of one machine (NCCL); the same command with --nproc_per_node=1 is an ordinary run\n"
            "torchrun --standalone --nproc_per_node=4 -m vlprompt train "
            "-c configs/coop/eurosat/vit_b16_16shots.yaml \\\n"
            "    --root /data -o runs/coop_4gpu\n\n"
            "# CPU only (gloo), e.g. to check a setup: train.device cpu\n"
            "torchrun --standalone --nproc_per_node=2 -m vlprompt train -c cfg.yaml --device cpu -o runs/cpu2\n",
            "torchrun on 4 GPUs; the 2-process gloo run is tests/test_distributed.py's"),
        2: ('pip install -e ".[slurm]"      # in the vlprompt clone (in .[dev]): submitit\n'
            "vlprompt sweep configs/sweeps/coop_fewshot.yaml --set data.root=/data --launcher slurm "
            "--partition gpu \\\n"
            "    --account mylab --gpus-per-run 1 --cpus-per-task 8 --mem-gb 32 --time 240 --max-parallel 20\n",
            "an install and SLURM submission: tests/test_launchers.py runs the launcher against a fake sbatch"),
    },
    "reproducing.md": {
        1: ("# use the pickle directly ...\n"
            "vlprompt train -c configs/coop/dtd/rn50_16shots.yaml --root /data \\\n"
            "    --set data.fewshot_file=/data/dtd/split_fewshot/shot_16-seed_1.pkl\n"
            "# ... or convert it once to vlprompt's few-shot JSON\n"
            "vlprompt import-split /data/dtd/split_fewshot/shot_16-seed_1.pkl --dataset dtd --root /data -o "
            "dtd_16_1.json\n"
            "vlprompt train -c configs/coop/dtd/rn50_16shots.yaml --root /data --set data.fewshot_file=dtd_16_1.json\n",
            "needs DTD and the reference code's pickled split: tests/test_reference_splits.py writes such a pickle "
            "for a DTD-layout tree and reads it both ways"),
    },
    "tutorials/huggingface_model.md": {
        1: ('hf download openai/clip-vit-base-patch16 --include "*.json" --include "*.txt" --include "*.safetensors" '
            "\\\n    --local-dir models/clip-vit-b16\n",
            "a download; the page goes on with a folder converted from the world ViT, which runs here as written"),
    },
}


def documents() -> list[str]:
    """README.md and every page of docs/ (as names relative to docs/, README as ``../README.md``)."""
    return ["../README.md", *sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))]


def _name(doc: str) -> str:
    return doc.removeprefix("../")


def snippets(doc: str) -> list[tuple[int, Block]]:
    """The runnable blocks of ``doc``, numbered from 1 (a python block naming a file is a file, not a snippet)."""
    found = [b for b in blocks(doc) if b.lang in LANGS and b.path is None]
    return list(enumerate(found, start=1))


def _is_how_to(block: Block) -> bool:
    return any(block.doc == s.doc and block.line == s.line for s in HOW_TO_SNIPPETS)


def substituted(doc: str, number: int, block: Block) -> str:
    code = block.code
    for sub in SUBSTITUTIONS.get(_name(doc), {}).get(number, []):
        assert sub.old in code, (f"{block.where}: substitution of {sub.old!r} no longer matches the doc; "
                                 "update the table")
        code = code.replace(sub.old, sub.new)
    return code


def commands(code: str) -> list[str]:
    """The command lines of a shell block: continuations joined, comments dropped, ``&&`` split."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        out.extend(part.strip() for part in line.split("&&") if part.strip())
    return out


# ------------------------------------------------------------------------------------ the tables
def test_every_runnable_block_is_run_skipped_or_left_to_the_examples_test():
    """The tables name existing snippets, skipped ones still read as recorded, and no snippet is both."""
    names = {_name(d): d for d in documents()}
    for table in (SUBSTITUTIONS, SKIPPED):
        for doc, entries in table.items():
            assert doc in names, f"{doc} is not a document"
            numbered = dict(snippets(names[doc]))
            for number in entries:
                assert number in numbered, f"{doc} has no snippet {number}"
    for doc, entries in SKIPPED.items():
        numbered = dict(snippets(names[doc]))
        for number, (text, reason) in entries.items():
            assert numbered[number].code == text, (f"{numbered[number].where} changed: update SKIPPED (or run it)\n"
                                                    f"now:\n{numbered[number].code}")
            assert reason and number not in SUBSTITUTIONS.get(doc, {})
    for doc, entries in SUBSTITUTIONS.items():
        for number, subs in entries.items():
            block = dict(snippets(names[doc]))[number]
            substituted(names[doc], number, block)  # every original text still occurs
            assert all(s.reason for s in subs)
    how_to = [b for d in documents() for _, b in snippets(d) if _is_how_to(b)]
    assert len(how_to) == len(HOW_TO_SNIPPETS) >= 2


def test_commands_are_split_as_a_shell_would():
    code = "# a comment\nvlprompt a --x 1 \\\n    --y 2   # note\nvlprompt b && vlprompt c\n#SBATCH --array=0-7\n"
    assert commands(code) == ["vlprompt a --x 1      --y 2", "vlprompt b", "vlprompt c"]


def test_the_api_page_documents_every_public_name():
    import vlprompt

    text = (DOCS / "api.md").read_text()
    for name in vlprompt.__all__:
        if name == "__version__":
            continue
        module, attr = vlprompt._LAZY[name]
        assert f"::: {module}.{attr}" in text, f"docs/api.md lacks {name} (::: {module}.{attr})"


# ------------------------------------------------------------------------------------ running them
SWEEP_FEWSHOT = """name: tiny_fewshot
protocol: fewshot
config: configs/world/coop_world.yaml
methods: [zeroshot, coop]
datasets: [world_shapes]
shots: [1, 2]
seeds: [1, 2]
set: [optim.max_epoch=1, data.options.n_test=2]
"""
SWEEP_OOD = """name: tiny_ood
protocol: ood
config: configs/world/coop_world.yaml
methods: [zeroshot, coop]
datasets: [world_shapes]
targets: [world_ood_shapes, world_ood_novel]
shots: [1]
seeds: [1]
set: [optim.max_epoch=1, data.options.n_test=2]
"""


@contextlib.contextmanager
def _inside(folder: Path):
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def _cli(argv: list[str]) -> int:
    from vlprompt.cli.main import main

    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The stand-ins the substitutions name (module docstring), made once."""
    from vlprompt.backbones.hf import write_test_model
    from vlprompt.world.datasets import build_world_dataset, export_imagefolder

    folder = tmp_path_factory.mktemp("docs_shared")
    (folder / "configs").symlink_to(ROOT / "configs")
    with _inside(folder):
        assert _cli(["train", "-c", *shlex.split(WORLD_COOP), "--output-dir", "coop", "--no-progress"]) == 0
    export_imagefolder(build_world_dataset("world_shapes", n_train=0, n_val=0, n_test=1), folder / "photos")
    for name, dataset in (("near", "world_ood_shapes"), ("far", "world_ood_novel")):
        export_imagefolder(build_world_dataset(dataset, n_test=1), folder / "ood" / name)
    (folder / "sweep_fewshot.yaml").write_text(SWEEP_FEWSHOT)
    (folder / "sweep_ood.yaml").write_text(SWEEP_OOD)
    write_test_model(folder / "hf_model")
    # the Hugging Face cache as `hf download me/eurosat-coop` leaves it (refs main and v1): deploy.md's hf:// lines
    with _inside(folder):
        assert _cli(["export", "coop", "--format", "hub", "-o", "hub_export", "--repo-id", "me/eurosat-coop"]) == 0
    repo = folder / "hf_cache" / "models--me--eurosat-coop"
    sha = "0" * 40
    import shutil

    shutil.copytree(folder / "hub_export", repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    for ref in ("main", "v1"):
        (repo / "refs" / ref).write_text(sha)
    return folder


def _run_shell(code: str, where: str, capsys) -> None:
    for line in commands(code):
        argv = shlex.split(line)
        if argv[:1] == ["vlprompt"]:
            args = argv[1:]
        elif argv[:3] in (["python", "-m", "vlprompt"], ["python3", "-m", "vlprompt"]):
            args = argv[3:]
        else:
            pytest.fail(f"{where}: `{line}` is not a vlprompt command: substitute it or skip the snippet")
        start = time.perf_counter()
        rc = _cli(args)
        out = capsys.readouterr()
        if os.environ.get("VLPROMPT_DOCS_TIMES"):  # a file: where each command's seconds go
            with open(os.environ["VLPROMPT_DOCS_TIMES"], "a") as log:
                log.write(f"{time.perf_counter() - start:5.1f} s  {where}: {line[:100]}\n")
        assert rc == 0, f"{where}: `{line}` exited {rc}\n{out.out[-2000:]}\n{out.err[-2000:]}"


@pytest.mark.slow
@pytest.mark.world
@pytest.mark.parametrize("doc", [_name(d) for d in documents()])
def test_snippets_of(doc, shared, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(shared / "hf_cache"))  # holds what `hf download me/eurosat-coop` fetches
    path = "../README.md" if doc == "README.md" else doc
    todo = [(n, b) for n, b in snippets(path) if n not in SKIPPED.get(doc, {}) and not _is_how_to(b)]
    if not todo:
        pytest.skip(f"{doc}: no snippet runs here (see SKIPPED)")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "shared").symlink_to(shared)
    with _inside(tmp_path):
        for number, block in todo:
            code = substituted(path, number, block)
            if block.lang == "python":
                exec(compile(code, block.where, "exec"), {"__name__": "__docs__"})
            else:
                _run_shell(code, block.where, capsys)
