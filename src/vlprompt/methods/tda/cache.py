"""TDA's per-class key-value cache, vectorised (shared by TDA and BoostAdapter).

kdiAAA/TDA keeps each cache as a dict ``{class: [[feature, entropy(, prob_map)], ...]}`` (``tda_runner.py``
``update_cache`` l.29-40, ``compute_cache_logits`` l.43-65). Here one cache is a set of preallocated tensors

* ``keys [n_cls, capacity, E]`` the cached image features, row ``c`` holding class ``c``'s entries in their
  list order (slots ``0 .. counts[c] - 1``, the rest zeros),
* ``entropy [n_cls, capacity]`` their entropies (``+inf`` in empty slots), on the CPU with ``counts [n_cls]``,
* ``valid [n_cls, capacity]`` (1 for a filled slot), on the features' device,
* optionally ``payload [n_cls, capacity, P]`` (the negative cache's probability maps) and the float
  ``values [n_cls, capacity, P]`` derived from them on insertion (the negative cache's masks),

so that inserting an entry touches one class row (a handful of small tensor operations, no loop over classes)
and the cache logits are one masked matrix product over all slots.

Insertion policies:

* ``"entropy"`` (TDA ``update_cache`` l.33-40; BoostAdapter ``runner.py`` l.52-64 with ``fifo=False``): a
  class row is kept sorted by entropy, ascending; a new entry goes after the entries of lower *or equal*
  entropy (Python's ``sorted`` is stable and TDA appends, or writes over the last entry, before sorting); a full
  row takes a new entry only if its entropy is strictly below the row's worst (l.36), which is then dropped.
  BoostAdapter's ``append, sort, truncate`` computes the same rows.
* ``"fifo"`` (BoostAdapter ``runner.py`` l.55-59, its negative cache, ``update_cache(..., True)`` with the
  default ``fifo=True`` at l.150): appended at the end; a full row drops its oldest (first) entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Policy = Literal["entropy", "fifo"]


class ClassCache:
    """A per-class cache of at most ``capacity`` entries per class (see the module docstring).

    Args:
        n_cls: number of classes (rows).
        capacity: ``shot_capacity``, the entries a class keeps.
        dim: ``E``, the feature size.
        payload_dim: ``P``, the size of each entry's payload (the negative cache's probability map: ``n_cls``),
            or 0 for none.
        policy: ``"entropy"`` or ``"fifo"``.
        device: where keys, valid flags and payloads live (entropies and counts are on the CPU).
    """

    def __init__(self, n_cls: int, capacity: int, dim: int, *, payload_dim: int = 0, policy: Policy = "entropy",
                 device: torch.device | str = "cpu") -> None:
        if policy not in ("entropy", "fifo"):
            raise ValueError(f"cache policy must be entropy or fifo, got {policy!r}")
        self.n_cls, self.capacity, self.dim, self.payload_dim, self.policy = n_cls, capacity, dim, payload_dim, policy
        self.device = torch.device(device)
        self.keys = torch.zeros(n_cls, capacity, dim, device=self.device)
        self.valid = torch.zeros(n_cls, capacity, device=self.device)
        self.entropy = torch.full((n_cls, capacity), float("inf"))
        self.counts = torch.zeros(n_cls, dtype=torch.long)
        self.payload = torch.zeros(n_cls, capacity, payload_dim, device=self.device) if payload_dim else None
        self.values = torch.zeros(n_cls, capacity, payload_dim, device=self.device) if payload_dim else None
        #: ``payload -> values`` of one entry (the negative cache's mask); identity when not set
        self.value_fn: Callable[[Tensor], Tensor] | None = None

    def to(self, device: torch.device | str) -> None:
        """Move keys, valid flags and payloads to ``device`` (in place)."""
        self.device = torch.device(device)
        for name in ("keys", "valid", "payload", "values"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(self.device))

    # ------------------------------------------------------------------ size
    def size(self) -> int:
        """Entries held now (all classes)."""
        return int(self.counts.sum())

    def rows(self, cls: int) -> int:
        """Entries of class ``cls``."""
        return int(self.counts[cls])

    # ------------------------------------------------------------------ insertion
    def insert(self, cls: int, key: Tensor, entropy: float, payload: Tensor | None = None) -> bool:
        """Add one entry ``(key [E], entropy, payload [P])`` to class ``cls`` by the cache's policy; returns whether
        it was stored (an entropy-sorted full row refuses an entry not strictly better than its worst)."""
        n = int(self.counts[cls])
        cap = self.capacity
        if self.policy == "entropy":
            row = self.entropy[cls, :n]
            if n == cap:
                if not entropy < float(row[-1]):  # tda_runner.py l.36 (strict)
                    return False
                n = cap - 1  # the worst entry is dropped
                row = row[:n]
            pos = int((row <= entropy).sum())  # after the entries of lower or equal entropy (stable sort, l.38)
            self._shift_right(cls, pos, n)
        else:  # fifo: BoostAdapter runner.py l.56-59
            if n == cap:
                self._shift_left(cls)
                n = cap - 1
            pos = n
        self.keys[cls, pos] = key.to(self.keys.dtype)
        self.entropy[cls, pos] = float(entropy)
        self.valid[cls, pos] = 1.0
        if self.payload is not None and self.values is not None:
            if payload is None:
                raise ValueError("this cache stores a payload with each entry")
            self.payload[cls, pos] = payload.to(self.payload.dtype)
            self.values[cls, pos] = self.value_fn(self.payload[cls, pos]) if self.value_fn else self.payload[cls, pos]
        self.counts[cls] = n + 1
        return True

    def _tensors(self) -> list[Tensor]:
        return [t for t in (self.keys, self.entropy, self.valid, self.payload, self.values) if t is not None]

    def _shift_right(self, cls: int, pos: int, n: int) -> None:
        """Move slots ``pos .. n-1`` of row ``cls`` one to the right (slot ``n`` is free or dropped)."""
        if pos < n:
            for t in self._tensors():
                t[cls, pos + 1 : n + 1] = t[cls, pos:n].clone()

    def _shift_left(self, cls: int) -> None:
        """Drop slot 0 of a full row ``cls`` (the oldest entry): slots ``1 ..`` move one to the left."""
        for t in self._tensors():
            t[cls, :-1] = t[cls, 1:].clone()

    # ------------------------------------------------------------------ logits
    def affinity_weights(self, feature: Tensor, beta: float) -> Tensor:
        """``exp(-beta (1 - f . k))`` of every slot, 0 in empty ones: ``[n_cls, capacity]`` (tda_runner.py l.63-64,
        ``affinity = image_features @ cache_keys``, ``exp(-(beta - beta * affinity))``)."""
        affinity = (self.keys.view(-1, self.dim) @ feature.to(self.keys.dtype)).view(self.n_cls, self.capacity)
        return torch.exp(-(beta - beta * affinity)) * self.valid

    def class_logits(self, feature: Tensor, alpha: float, beta: float) -> Tensor:
        """The positive cache's logits ``[n_cls]``: ``alpha * exp(-beta (1 - f K^T)) @ onehot(classes)`` (tda_runner.py
        l.43-65 with one-hot values, l.61): the sum of each class's slot weights."""
        return alpha * self.affinity_weights(feature, beta).sum(dim=1)

    def value_logits(self, feature: Tensor, alpha: float, beta: float) -> Tensor:
        """The negative cache's logits ``[P]``: ``alpha * exp(-beta (1 - f K^T)) @ values`` (tda_runner.py l.57-59: the
        values are the entries' masks)."""
        if self.values is None:
            raise ValueError("this cache has no values")
        weights = self.affinity_weights(feature, beta).view(-1)
        return alpha * (weights @ self.values.view(-1, self.payload_dim))

    # ------------------------------------------------------------------ state
    def state(self, prefix: str) -> dict[str, Tensor]:
        """The entries, compact, in class then slot order: ``{prefix}classes [N]``, ``keys [N, E]``, ``entropy [N]``
        (+ ``payload [N, P]``); CPU tensors."""
        mask = torch.arange(self.capacity).unsqueeze(0) < self.counts.unsqueeze(1)  # [n_cls, cap], CPU
        cls_idx, slot_idx = mask.nonzero(as_tuple=True)
        out = {f"{prefix}classes": cls_idx.clone(),
               f"{prefix}keys": self.keys.detach().cpu()[cls_idx, slot_idx].clone(),
               f"{prefix}entropy": self.entropy[cls_idx, slot_idx].clone()}
        if self.payload is not None:
            out[f"{prefix}payload"] = self.payload.detach().cpu()[cls_idx, slot_idx].clone()
        return out

    def load_state(self, state: dict[str, Tensor], prefix: str) -> None:
        """Refill from :meth:`state` (``ValueError`` on shapes or counts that do not fit this cache)."""
        names = ["classes", "keys", "entropy"] + (["payload"] if self.payload is not None else [])
        missing = [f"{prefix}{n}" for n in names if f"{prefix}{n}" not in state]
        if missing:
            raise ValueError(f"cache state lacks {missing}")
        classes = state[f"{prefix}classes"].long().cpu()
        n = classes.numel()
        keys, entropy = state[f"{prefix}keys"], state[f"{prefix}entropy"]
        if classes.dim() != 1 or tuple(keys.shape) != (n, self.dim) or tuple(entropy.shape) != (n,):
            raise ValueError(f"cache state shapes {tuple(classes.shape)}, {tuple(keys.shape)}, {tuple(entropy.shape)} "
                             f"do not fit {self.n_cls} classes x {self.capacity} entries of size {self.dim}")
        if n and (int(classes.min()) < 0 or int(classes.max()) >= self.n_cls):
            raise ValueError(f"cache state names classes outside 0..{self.n_cls - 1}")
        counts = torch.bincount(classes, minlength=self.n_cls)
        if n and (int(counts.max()) > self.capacity or bool((classes[1:] < classes[:-1]).any())):
            raise ValueError(f"cache state holds more than {self.capacity} entries for a class (shot_capacity "
                             f"{self.capacity}), or is not in class order")
        starts = torch.cumsum(counts, 0) - counts
        slots = torch.arange(n) - starts[classes]
        fresh = ClassCache(self.n_cls, self.capacity, self.dim, payload_dim=self.payload_dim, policy=self.policy,
                           device=self.device)
        fresh.keys[classes, slots] = keys.to(fresh.device, fresh.keys.dtype)
        fresh.entropy[classes, slots] = entropy.float().cpu()
        fresh.valid[classes, slots] = 1.0
        fresh.counts = counts
        if self.payload is not None and fresh.payload is not None and fresh.values is not None:
            payload = state[f"{prefix}payload"]
            if tuple(payload.shape) != (n, self.payload_dim):
                raise ValueError(f"cache state payload has shape {tuple(payload.shape)}, expected "
                                 f"{(n, self.payload_dim)}")
            fresh.payload[classes, slots] = payload.to(fresh.device, fresh.payload.dtype)
            if n:
                rows = fresh.payload[classes, slots]
                fresh.values[classes, slots] = self.value_fn(rows) if self.value_fn else rows
        for name in ("keys", "entropy", "valid", "counts", "payload", "values"):
            setattr(self, name, getattr(fresh, name))

    def entries(self, cls: int) -> list[tuple[Tensor, float, Tensor | None]]:
        """Class ``cls``'s entries in list order: ``(key [E], entropy, payload [P] or None)`` (for tests, reports)."""
        return [(self.keys[cls, i], float(self.entropy[cls, i]), None if self.payload is None else self.payload[cls, i])
                for i in range(self.rows(cls))]
