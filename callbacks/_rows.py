"""Rows of the training batches a task saw: what the data-driven techniques (rehearsal, EWC, MAS, WiSE-FT's
``alpha: auto``) read when the datamodule has no ``train_examples``/``collate`` (a user's own datamodule, or a
plain ``DataLoader`` per task).

A batch is a mapping of tensors with the examples along the first dimension, of any modality (feature vectors,
images, fixed-length token ids). During the first epoch of a task every rank keeps a seeded reservoir sample of
the rows of its own training batches (on the CPU); at the task end the ranks' samples are all-gathered in rank
order, so every rank holds the same rows and the technique's state stays identical across ranks (each rank sees
different batches under DDP). A mid-task checkpoint holds every rank's sample (gathered), so a resumed task goes on
from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from clight.callbacks._utils import seeded_generator
from clight.errors import ClightConfigError

Row = dict[str, Tensor]
_ROWS_STREAM = 0xB47C  # separates these draws from the techniques' own (seed, task) generators


def stack_rows(rows: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Collate rows (one example each, as :meth:`TaskRows.gather` returns them) back into a batch dict."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}


def batch_tensors(batch: Any, who: str) -> dict[str, Tensor]:
    """The per-example tensors of a training batch (``(B, ...)`` each); other entries are left out. A batch that is
    not a mapping holding one raises :class:`ClightConfigError`."""
    if isinstance(batch, Mapping):
        tensors = {k: v for k, v in batch.items() if isinstance(k, str) and isinstance(v, Tensor) and v.dim() >= 1}
        sizes = {v.shape[0] for v in tensors.values()}
        if len(sizes) > 1:  # the largest first dimension is the batch's: keep the tensors that have it
            size = max(sizes)
            tensors = {k: v for k, v in tensors.items() if v.shape[0] == size}
        if tensors:
            return tensors
    kind = type(batch).__name__
    raise ClightConfigError(
        f"`{who}` keeps rows of the training batches (the datamodule has no `train_examples`/`collate`), so a batch "
        f"must be a dict of tensors with the examples along dimension 0, got a `{kind}`"
        f"{f' with keys {sorted(map(str, batch))}' if isinstance(batch, Mapping) else ''}. Return dicts from the "
        "DataLoader's `collate_fn` (e.g. `{\"x\": x, \"labels\": y}`), or give the datamodule `train_examples` and "
        "`collate` (`clight.contracts.ExampleStream`)."
    )


def reservoir_slots(seen: int, capacity: int, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Reservoir sampling (Algorithm R) of ``n`` new rows into ``capacity`` slots after ``seen`` rows: the slots
    written and the rows written there (a later row wins a slot drawn twice), as ``(slots, rows)``."""
    position = seen + torch.arange(n)
    draw = (torch.rand(n, generator=generator, dtype=torch.float64) * (position + 1)).long()
    slot = torch.where(position < capacity, position, draw)
    accepted = (slot < capacity).nonzero().squeeze(1)
    last = torch.full((capacity,), -1).scatter_reduce(0, slot[accepted], accepted, "amax")
    slots = (last >= 0).nonzero().squeeze(1)
    return slots, last[slots]


class TaskRows:
    """A seeded, bounded sample of the current task's training-batch rows on this rank, all-gathered at its end.

    Args:
        capacity: the most rows kept over all ranks (each rank keeps ``ceil(capacity / world_size)``).
        who: the technique, named in errors.
    """

    def __init__(self, capacity: int, who: str) -> None:
        self.capacity, self.who = capacity, who
        self.task = -1
        self.seen = 0  # rows offered on this rank in this task
        self.batches = 0  # batches offered on this rank in this task (seeds each batch's draw)
        self.fields: dict[str, Tensor] = {}  # (per_rank, ...) each, CPU
        self._loaded: list[dict[str, Any]] | None = None  # every rank's sample, from a mid-task checkpoint
        self._strategy: Any = None

    def __len__(self) -> int:
        return min(self.seen, self._per_rank())

    def _per_rank(self) -> int:
        world = getattr(self._strategy, "world_size", 1) or 1
        return -(-self.capacity // world)

    def start(self, trainer: pl.Trainer, task_index: int) -> None:
        """Begin (or, from a mid-task checkpoint, resume) collecting for ``task_index``."""
        self._strategy = trainer.strategy
        if self._loaded is not None:  # a mid-task checkpoint of this task: take this rank's sample back
            mine = self._loaded[trainer.global_rank] if trainer.global_rank < len(self._loaded) else None
            self._loaded = None
            if mine is not None and int(mine["task"]) == task_index:
                self._set(mine)
                return
        if self.task != task_index:
            self.task, self.seen, self.batches, self.fields = task_index, 0, 0, {}

    def observe(self, trainer: pl.Trainer, batch: Any, seed: int) -> None:
        """Offer the rows of one training batch (the first epoch's only: later epochs repeat the same rows)."""
        if trainer.current_epoch > 0 or trainer.sanity_checking:
            return
        tensors = batch_tensors(batch, self.who)
        n, per_rank = next(iter(tensors.values())).shape[0], self._per_rank()
        if self.fields and set(tensors) != set(self.fields):
            raise ClightConfigError(
                f"`{self.who}`: the training batches changed keys from {sorted(self.fields)} to {sorted(tensors)} "
                "within a task; rows of one task must share them.")
        for k, v in tensors.items():
            if k in self.fields and (v.shape[1:] != self.fields[k].shape[1:] or v.dtype != self.fields[k].dtype):
                raise ClightConfigError(
                    f"`{self.who}`: batch field `{k}` changed from {tuple(self.fields[k].shape[1:])} "
                    f"{self.fields[k].dtype} to {tuple(v.shape[1:])} {v.dtype} per example; stored rows need a fixed "
                    "shape. Pad to a fixed length (e.g. the tokenizer's `padding=\"max_length\"`), or give the "
                    "datamodule `train_examples` and `collate` (`clight.contracts.ExampleStream`).")
        g = seeded_generator(seed, self.task, trainer.global_rank, self.batches, _ROWS_STREAM)
        slots, rows = reservoir_slots(self.seen, per_rank, n, g)
        if not self.fields:
            self.fields = {k: v.new_zeros((per_rank, *v.shape[1:]), device="cpu") for k, v in tensors.items()}
        if len(slots):
            for k, v in tensors.items():
                self.fields[k][slots] = v.detach()[rows.to(v.device)].cpu()
        self.seen += n
        self.batches += 1

    def gather(self, trainer: pl.Trainer) -> list[Row]:
        """Every rank's rows in rank order (the same list on every rank), one dict per row; collective."""
        count = len(self)
        local = {k: v[:count] for k, v in self.fields.items()}
        if trainer.world_size == 1:
            return _split(local, count)
        parts = _all_gather(trainer.strategy, local, count, self._per_rank())
        rows: list[Row] = []
        for fields, n in parts:
            rows.extend(_split(fields, n))
        return rows

    def clear(self) -> None:
        self.seen, self.batches, self.fields = 0, 0, {}

    # ---- checkpointing: every rank's sample (a collective under DDP) ----------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._loaded is not None:
            return {"ranks": self._loaded}
        count = len(self)
        mine = {"task": self.task, "seen": self.seen, "batches": self.batches,
                "fields": {k: v[:count].clone() for k, v in self.fields.items()}}
        strategy = self._strategy
        # between tasks (nothing pooled, on every rank alike) no collective runs: the stream checkpoint reads the
        # state on rank 0 only
        if not self.fields or strategy is None or (getattr(strategy, "world_size", 1) or 1) == 1:
            return {"ranks": [mine]}
        parts = _all_gather(strategy, mine["fields"], count, self._per_rank())
        counters = strategy.all_gather(torch.tensor([self.seen, self.batches], device=strategy.root_device))
        return {"ranks": [{"task": self.task, "seen": int(c[0]), "batches": int(c[1]), "fields": dict(f)}
                          for (f, _), c in zip(parts, counters.cpu())]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._loaded = [dict(r) for r in state["ranks"]]  # this rank's is taken back in `start`

    def _set(self, mine: Mapping[str, Any]) -> None:
        self.task, self.seen, self.batches = int(mine["task"]), int(mine["seen"]), int(mine["batches"])
        per_rank, fields = self._per_rank(), {}
        for k, v in mine["fields"].items():
            fields[k] = v.new_zeros((per_rank, *v.shape[1:]))
            fields[k][: len(v)] = v
        self.fields = fields


def _split(fields: Mapping[str, Tensor], count: int) -> list[Row]:
    return [{k: v[i] for k, v in fields.items()} for i in range(count)]


def _all_gather(strategy: Any, fields: Mapping[str, Tensor], count: int, per_rank: int
                ) -> list[tuple[dict[str, Tensor], int]]:
    """Every rank's ``fields`` (``count`` rows each, padded to ``per_rank`` for the collective), in rank order."""
    device = strategy.root_device
    counts = strategy.all_gather(torch.tensor(count, device=device)).reshape(-1).cpu().tolist()
    gathered = {}
    for k, v in sorted(fields.items()):
        padded = v.new_zeros((per_rank, *v.shape[1:]), dtype=torch.uint8 if v.dtype == torch.bool else v.dtype)
        padded[:count] = v
        out = strategy.all_gather(padded.to(device)).cpu()  # (world, per_rank, ...)
        gathered[k] = out.bool() if v.dtype == torch.bool else out
    return [({k: g[r, :n] for k, g in gathered.items()}, int(n)) for r, n in enumerate(counts)]
