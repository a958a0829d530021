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

Cost is measured next to accuracy: seconds per image of adapting + predicting (the views are made by the
loader's workers and timed apart), peak accelerator memory, and the passes the method reports
(:class:`~vlprompt.methods.base.Adapted`), averaged per image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlprompt.data.test_time_views import TestTimeViews, ViewsDataset
from vlprompt.data.types import Datum
from vlprompt.methods.base import ADAPTATION_COST_KEYS, Adapted, PromptMethod


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
    """

    logits: Tensor
    labels: Tensor
    order: list[int]
    seconds_per_image: float
    views_seconds_per_image: float
    peak_memory_mb: float | None
    cost: dict[str, float] = field(default_factory=dict)
    n_views: int = 1


def stream_order(n: int, order_seed: int | None) -> list[int]:
    """The stream's order: ``0..n-1``, or a permutation drawn from ``order_seed`` (reproducible)."""
    if order_seed is None:
        return list(range(n))
    g = torch.Generator().manual_seed(int(order_seed))
    return torch.randperm(n, generator=g).tolist()


def adapt_stream(method: PromptMethod, items: Sequence[Datum], loader: Callable[[str], Image.Image],
                 views: TestTimeViews, *, order_seed: int | None = None, num_workers: int = 0,
                 progress: bool = False, desc: str = "test-time") -> StreamOutput:
    """Adapt and predict every item of ``items`` one at a time (see the module docstring).

    ``views`` makes each image's ``[V, 3, S, S]`` views; a method with adaptation ``"none"`` needs only the
    original (``views.n_views`` may be 1). The caller's RNG state is left unchanged; the method's learned state
    is restored by its own reset (episodic) and is the initial one again after the stream for episodic methods.
    """
    kind = method.capabilities.adaptation
    order = stream_order(len(items), order_seed)
    dataset = ViewsDataset(items, loader, views)
    dl = DataLoader(torch.utils.data.Subset(dataset, order), batch_size=None, shuffle=False,
                    num_workers=num_workers)
    device = method.backbone.device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    method.eval()
    logits: dict[int, Tensor] = {}
    labels: dict[int, int] = {}
    totals = dict.fromkeys(ADAPTATION_COST_KEYS, 0.0)
    adapt_s = views_s = 0.0
    rng_state = torch.random.get_rng_state()
    if kind == "online":
        method.reset_adaptation()
    fixed_text = None
    if kind == "none" and not method.capabilities.image_conditional:
        with torch.no_grad():  # a method that does not adapt: its text features once for the stream
            fixed_text = method.text_features()
    it = iter(tqdm(dl, desc=desc, disable=not progress, leave=False, total=len(order)))
    while True:
        t0 = time.perf_counter()
        try:
            image_views, label, index = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        views_s += t1 - t0
        if kind == "episodic":
            method.reset_adaptation()
        if fixed_text is not None:
            with torch.no_grad():
                first = method.encode_images(image_views[:1].to(device))
                out = Adapted(method.logits(first, fixed_text)[0], {"image_forward": 1, "text_forward": 0,
                                                                    "backward": 0})
        else:
            with torch.enable_grad():
                out = method.adapt_and_predict(image_views.to(device))
        if cuda:
            torch.cuda.synchronize(device)
        adapt_s += time.perf_counter() - t1
        logits[int(index)] = out.logits.detach().float().cpu().reshape(-1)
        labels[int(index)] = int(label)
        for key in ADAPTATION_COST_KEYS:
            totals[key] += float(out.cost.get(key, 0))
    if kind == "episodic":
        method.reset_adaptation()
    torch.random.set_rng_state(rng_state)
    n = max(1, len(order))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    stacked = torch.stack([logits[i] for i in range(len(items))]) if items else torch.zeros(0, method.n_cls)
    return StreamOutput(stacked, torch.tensor([labels[i] for i in range(len(items))], dtype=torch.long),
                        order, adapt_s / n, views_s / n, peak, {k: v / n for k, v in totals.items()}, views.n_views)
