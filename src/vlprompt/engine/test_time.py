"""Run a test stream through a method that adapts at test time (capability ``adaptation``).

Every test image becomes its views (:class:`~vlprompt.data.test_time_views.TestTimeViews`: the original +
augmented views, seeded by the image's index) and goes through
:meth:`~vlprompt.methods.base.PromptMethod.adapt_and_predict` one image at a time, in the stream's order:

* ``"episodic"`` methods (TPT, C-TPT, Zero, MTA): :meth:`~vlprompt.methods.base.PromptMethod.reset_adaptation`
  before every image, so each prediction depends on that image alone (azshue/TPT
  tpt_classification.py lines 270-276 reset the prompt and the optimiser state before each image);
* ``"online"`` methods: one reset before the stream; the state is carried from image to image;
* ``"none"``: the plain prediction of the original view (the zero-shot row of a test-time table), with the
  method's fixed text features computed once for the stream (cost: one image forward per image, no text pass).

:class:`TestTimeAdapter` is that per-image loop as an object (the one behind ``vlprompt protocol tta`` and the
streaming API :func:`vlprompt.online`): ``step(views)`` adapts and predicts one image, ``predict(images)`` a
batch of images one after the other, ``state_dict()`` / ``load_state_dict()`` carry an online method's state
(:meth:`~vlprompt.methods.base.PromptMethod.adaptation_state`), the position in the stream and the cost so far.

A stream can be checkpointed (``checkpoint_dir``): every ``save_every`` images (and at least every
``save_seconds``) the logits since the last save go to an immutable chunk file and then the adapter's state
to ``state.safetensors`` (both written atomically; the state names the chunks it covers), so a stream killed
at any moment (SIGKILL included) resumes from its last save and ends with the same predictions as an
uninterrupted one: the views are seeded by the image's index, the method's state and the RNG state are restored.

Cost is measured next to accuracy: seconds per image of adapting + predicting (the views are made by the
loader's workers and timed apart), peak accelerator memory, and the passes the method reports
(:class:`~vlprompt.methods.base.Adapted`), averaged per image, and the size of an online method's state at the
end of the stream (:meth:`~vlprompt.methods.base.PromptMethod.adaptation_size`, e.g. TDA's cached features).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlprompt.core.errors import CheckpointError
from vlprompt.data.test_time_views import DEFAULT_VIEWS, TestTimeViews, ViewsDataset, views_for
from vlprompt.data.types import Datum
from vlprompt.engine.checkpoint import read_safetensors, write_safetensors
from vlprompt.methods.base import ADAPTATION_COST_KEYS, Adapted, PromptMethod

#: ``format`` of a stream checkpoint's ``state.safetensors``.
STREAM_FORMAT = "vlprompt-stream"
STREAM_VERSION = 1
#: Prefix of the method's state tensors in :meth:`TestTimeAdapter.state_dict`.
STATE_PREFIX = "adaptation."
#: ``format`` of a file written by :meth:`TestTimeAdapter.save`.
ADAPTER_FORMAT = "vlprompt-online-adapter"


@dataclass
class StreamOutput:
    """What one pass over a test stream produced.

    Attributes:
        logits: ``[N, n_cls]`` logits of each test item, in the items' order (not the stream's).
        labels: ``[N]`` true labels.
        order: the stream's order (item indices, first processed first).
        seconds_per_image: wall time of adapt + predict per image (views excluded).
        views_seconds_per_image: wall time the views took per image, as the main process waited for them.
        peak_memory_mb: peak accelerator memory allocated during the stream (None on CPU).
        cost: mean passes per image (:data:`~vlprompt.methods.base.ADAPTATION_COST_KEYS`).
        n_views: views per image, the original included.
        cache_size: entries in the method's test-time state at the end of the stream (0 without one).
        resumed_at: the position a checkpointed stream resumed from (0: from the start).
    """

    logits: Tensor
    labels: Tensor
    order: list[int]
    seconds_per_image: float
    views_seconds_per_image: float
    peak_memory_mb: float | None
    cost: dict[str, float] = field(default_factory=dict)
    n_views: int = 1
    cache_size: int = 0
    resumed_at: int = 0


def method_views(method: PromptMethod, dataset_views: str, *, n_views: int | None = None, augment: str | None = None,
                 seed: int = 0) -> tuple[TestTimeViews, str]:
    """The views ``method`` adapts on for data of the registered kind ``dataset_views`` and their kind
    (``"augmix"``, ``"crop"``, or ``"original"`` for a method that does not adapt, which sees the original alone):
    ``augment`` (else the method's :meth:`~vlprompt.methods.base.PromptMethod.test_time_views`), ``n_views`` (else
    its :meth:`~vlprompt.methods.base.PromptMethod.test_time_view_count`, else 64), seeded by ``seed``."""
    if not method.capabilities.adapts_at_test_time:
        return views_for(method.backbone, n_views=1, augmix=False, seed=seed), "original"
    kind = augment or method.test_time_views(dataset_views)
    count = n_views or method.test_time_view_count(dataset_views) or DEFAULT_VIEWS
    return views_for(method.backbone, n_views=count, augmix=kind == "augmix", seed=seed), kind


def stream_order(n: int, order_seed: int | None) -> list[int]:
    """The stream's order: ``0..n-1``, or a permutation drawn from ``order_seed`` (reproducible)."""
    if order_seed is None:
        return list(range(n))
    g = torch.Generator().manual_seed(int(order_seed))
    return torch.randperm(n, generator=g).tolist()


class TestTimeAdapter:
    """A method adapting over a stream of unlabeled images, one image at a time (module docstring).

    Args:
        method: a built method; ``"episodic"`` ones are reset before every image, ``"online"`` ones once here
            (and by :meth:`reset`), ``"none"`` ones predict the original view with text features computed once.
        views: makes an image's views (``PIL image, index -> [V, 3, S, S]``) for :meth:`predict`; None: the
            images given to :meth:`predict` are preprocessed tensors, each its own single view.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, method: PromptMethod, views: TestTimeViews | None = None) -> None:
        self.method = method
        self.views = views
        self.kind = method.capabilities.adaptation
        self.position = 0
        self.totals: dict[str, float] = dict.fromkeys(ADAPTATION_COST_KEYS, 0.0)
        self.adapt_seconds = 0.0
        self._fixed_text: Tensor | None = None
        method.eval()
        if self.kind == "none" and not method.capabilities.image_conditional:
            with torch.no_grad():  # a method that does not adapt: its text features once for the stream
                self._fixed_text = method.text_features()
        self.reset()

    @property
    def device(self) -> torch.device:
        return torch.device(self.method.backbone.device)

    def reset(self) -> None:
        """Back to the start of a stream: the method's initial state, position 0, no cost counted."""
        self.method.reset_adaptation()
        self.position = 0
        self.totals = dict.fromkeys(ADAPTATION_COST_KEYS, 0.0)
        self.adapt_seconds = 0.0

    def step(self, image_views: Tensor) -> Adapted:
        """Adapt to one image and predict it: ``image_views [V, 3, S, S]`` (``[0]`` the original) ->
        :class:`~vlprompt.methods.base.Adapted` (logits ``[n_cls]`` on the CPU, cost of this image)."""
        t0 = time.perf_counter()
        views = image_views.to(self.device)
        if self.kind == "episodic":
            self.method.reset_adaptation()
        if self._fixed_text is not None:
            with torch.no_grad():
                first = self.method.encode_images(views[:1])
                out = Adapted(self.method.logits(first, self._fixed_text)[0],
                              {"image_forward": 1, "text_forward": 0, "backward": 0})
        else:
            with torch.enable_grad():
                out = self.method.adapt_and_predict(views)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.adapt_seconds += time.perf_counter() - t0
        self.position += 1
        for key in ADAPTATION_COST_KEYS:
            self.totals[key] += float(out.cost.get(key, 0))
        return Adapted(out.logits.detach().float().cpu().reshape(-1), dict(out.cost))

    def predict(self, images: Image.Image | Sequence[Image.Image] | Tensor) -> Tensor:
        """Adapt to and predict ``images`` one after the other, in the order given: PIL images (their views made
        by ``views``, seeded by their position in the stream) or preprocessed tensors ``[B, 3, S, S]`` / ``[3, S,
        S]`` (each image its only view). Returns the logits ``[B, n_cls]``."""
        if isinstance(images, Tensor):
            batch = images.unsqueeze(0) if images.dim() == 3 else images
            if batch.dim() != 4:
                raise ValueError(f"images must be [B, 3, H, W] or [3, H, W] tensors, got shape {tuple(images.shape)}")
            if self.views is not None and self.views.n_views > 1:
                raise ValueError(f"this adapter makes {self.views.n_views} augmented views per image: give PIL "
                                 "images (a tensor is already preprocessed and cannot be augmented)")
            rows = [self.step(img.unsqueeze(0)).logits for img in batch]
        else:
            pil = [images] if isinstance(images, Image.Image) else list(images)
            if self.views is None:
                raise ValueError("this adapter has no view maker: give preprocessed tensors [B, 3, H, W]")
            rows = [self.step(self.views(img, self.position)).logits for img in pil]
        if not rows:
            return torch.zeros(0, self.method.n_cls)
        return torch.stack(rows)

    def cost_per_image(self) -> dict[str, float]:
        """Mean passes per image so far (:data:`~vlprompt.methods.base.ADAPTATION_COST_KEYS`)."""
        n = max(1, self.position)
        return {k: v / n for k, v in self.totals.items()}

    def state_dict(self) -> dict[str, Tensor]:
        """The stream's state as named CPU tensors: the method's :meth:`adaptation_state` (prefixed
        ``adaptation.``), the position and the cost counted so far."""
        state = {STATE_PREFIX + k: v.detach().cpu() for k, v in self.method.adaptation_state().items()}
        state["position"] = torch.tensor(self.position, dtype=torch.long)
        state["cost"] = torch.tensor([self.totals[k] for k in ADAPTATION_COST_KEYS], dtype=torch.float64)
        state["adapt_seconds"] = torch.tensor(self.adapt_seconds, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Continue a stream from :meth:`state_dict`'s output (``ValueError`` for a state that is not one)."""
        missing = [k for k in ("position", "cost") if k not in state]
        if missing:
            raise ValueError(f"not a test-time adapter state: missing {', '.join(missing)}")
        self.method.load_adaptation_state({k[len(STATE_PREFIX):]: v for k, v in state.items()
                                          if k.startswith(STATE_PREFIX)})
        self.position = int(state["position"])
        self.totals = dict(zip(ADAPTATION_COST_KEYS, (float(v) for v in state["cost"]), strict=True))
        self.adapt_seconds = float(state.get("adapt_seconds", torch.tensor(0.0)))


    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` to ``path`` (safetensors; JSON metadata naming the method and its classes)."""
        write_safetensors(path, self.state_dict(), {"format": ADAPTER_FORMAT, "method": self.method.method_name,
                                                    "classnames": list(self.method.classnames)})
        return Path(path)

    def load(self, state: str | Path | Mapping[str, Tensor]) -> None:
        """Continue a stream from a file of :meth:`save` (checked against this adapter's method and classes) or a
        :meth:`state_dict`; :class:`~vlprompt.core.errors.CheckpointError` for one that does not fit."""
        if isinstance(state, Mapping):
            tensors = dict(state)
        else:
            tensors, meta = read_safetensors(state, what="online adapter state")
            if meta.get("format") != ADAPTER_FORMAT:
                raise CheckpointError(f"'{state}' is not an online adapter state (format {meta.get('format')!r})")
            if meta.get("method") != self.method.method_name or meta.get("classnames") != list(self.method.classnames):
                raise CheckpointError(f"'{state}' holds the state of method {meta.get('method')!r} for "
                                      f"{len(meta.get('classnames') or [])} classes, not of "
                                      f"{self.method.method_name!r} for these {self.method.n_cls} classes")
        try:
            self.load_state_dict(tensors)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"cannot continue the stream from this state: {exc}") from exc


def _order_digest(order: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(order)).encode()).hexdigest()[:16]


class StreamCheckpoint:
    """A stream's checkpoint folder: immutable logits chunks + ``state.safetensors`` (module docstring)."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.state_path = self.folder / "state.safetensors"
        #: the chunk files written so far, and the stream position the last save covers
        self.chunks: list[str] = []
        self.saved = 0

    def load(self, order: Sequence[int]) -> tuple[dict[str, Tensor], dict[str, Any], list[Tensor], list[int]] | None:
        """The saved state, its metadata, the saved logits (stream order) and their item indices; None when
        nothing was saved. :class:`~vlprompt.core.errors.CheckpointError` for a folder of another stream."""
        if not self.state_path.is_file():
            return None
        tensors, meta = read_safetensors(self.state_path, what="test-time stream checkpoint")
        if meta.get("format") != STREAM_FORMAT:
            raise CheckpointError(f"'{self.state_path}' is not a test-time stream checkpoint")
        if meta.get("fingerprint") != self.fingerprint or meta.get("order") != _order_digest(order):
            raise CheckpointError(f"'{self.folder}' holds a stream checkpoint of another run (config, target, "
                                  f"views, seeds or order differ); delete it to start this stream afresh")
        logits: list[Tensor] = []
        indices: list[int] = []
        for name in meta.get("chunks", []):
            chunk, _ = read_safetensors(self.folder / name, what="test-time stream chunk")
            logits.extend(chunk["logits"].unbind(0))
            indices.extend(int(i) for i in chunk["indices"])
        if len(indices) != int(meta.get("position", -1)) or indices != list(order[:len(indices)]):
            raise CheckpointError(f"'{self.folder}': the saved predictions do not match the saved position; delete "
                                  "the folder to start this stream afresh")
        self.chunks, self.saved = list(meta.get("chunks", [])), len(indices)
        return tensors, meta, logits, indices

    def save(self, adapter: TestTimeAdapter, order: Sequence[int], logits: list[Tensor], indices: list[int],
             views_seconds: float) -> None:
        """Write the logits since the last save (``indices[saved:]``) as a new chunk, then the state naming every
        chunk."""
        self.folder.mkdir(parents=True, exist_ok=True)
        start, end = self.saved, len(indices)
        name = f"chunk-{start:08d}-{end:08d}.safetensors"
        write_safetensors(self.folder / name, {"logits": torch.stack(logits[start:]),
                                               "indices": torch.tensor(indices[start:], dtype=torch.long)},
                          {"format": STREAM_FORMAT + "-chunk", "start": start, "end": end})
        self.chunks.append(name)
        state = adapter.state_dict()
        state["rng"] = torch.random.get_rng_state()
        write_safetensors(self.state_path, state, {
            "format": STREAM_FORMAT, "version": STREAM_VERSION, "fingerprint": self.fingerprint,
            "order": _order_digest(order), "position": end, "chunks": list(self.chunks),
            "views_seconds": views_seconds})
        self.saved = end


def adapt_stream(method: PromptMethod, items: Sequence[Datum], loader: Callable[[str], Image.Image],
                 views: TestTimeViews, *, order_seed: int | None = None, num_workers: int = 0,
                 progress: bool = False, desc: str = "test-time", checkpoint: StreamCheckpoint | None = None,
                 save_every: int | None = None, save_seconds: float = 60.0) -> StreamOutput:
    """Adapt and predict every item of ``items`` one at a time (see the module docstring).

    ``views`` makes each image's ``[V, 3, S, S]`` views; a method with adaptation ``"none"`` needs only the
    original (``views.n_views`` may be 1). With ``checkpoint``, the stream resumes from its last save and saves
    every ``save_every`` images (None: by time only) and whenever ``save_seconds`` passed since the last save.
    The caller's RNG state is left unchanged; an episodic method's state is its initial one after the stream.
    """
    order = stream_order(len(items), order_seed)
    device = method.backbone.device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rng_state = torch.random.get_rng_state()
    adapter = TestTimeAdapter(method, views)
    logits: list[Tensor] = []
    indices: list[int] = []
    views_s = 0.0
    if checkpoint is not None:
        loaded = checkpoint.load(order)
        if loaded is not None:
            state, meta, logits, indices = loaded
            torch.random.set_rng_state(state.pop("rng"))
            adapter.load_state_dict(state)
            views_s = float(meta.get("views_seconds", 0.0))
    resumed_at = len(indices)
    dataset = ViewsDataset(items, loader, views)
    dl = DataLoader(torch.utils.data.Subset(dataset, order[len(indices):]), batch_size=None, shuffle=False,
                    num_workers=num_workers)
    last_save = time.perf_counter()
    it = iter(tqdm(dl, desc=desc, disable=not progress, leave=False, total=len(order), initial=len(indices)))
    while True:
        t0 = time.perf_counter()
        try:
            image_views, _label, index = next(it)
        except StopIteration:
            break
        views_s += time.perf_counter() - t0
        logits.append(adapter.step(image_views).logits)
        indices.append(int(index))
        if checkpoint is not None and len(indices) < len(order) and (
                (save_every is not None and len(indices) - checkpoint.saved >= save_every)
                or time.perf_counter() - last_save >= save_seconds):
            checkpoint.save(adapter, order, logits, indices, views_s)
            last_save = time.perf_counter()
    if adapter.kind == "episodic":
        method.reset_adaptation()
    torch.random.set_rng_state(rng_state)
    n = max(1, len(order))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    by_item = dict(zip(indices, logits, strict=True))
    stacked = torch.stack([by_item[i] for i in range(len(items))]) if items else torch.zeros(0, method.n_cls)
    labels = torch.tensor([int(items[i].label) for i in range(len(items))], dtype=torch.long)
    return StreamOutput(stacked, labels, order, adapter.adapt_seconds / n, views_s / n, peak,
                        adapter.cost_per_image(), views.n_views, int(method.adaptation_size()), resumed_at)
