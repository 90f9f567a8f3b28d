"""The rehearsal memory shared by Replay, DarkExperienceReplay and AGEM: past examples stored compactly as
tensors (in RAM or memory-mapped files), the storage policies that decide what stays, and the deterministic,
rank-agreeing random choices they use."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from clight.errors import ClightConfigError

Policy = Literal["reservoir", "class_balanced", "task_balanced"]
Selection = Literal["random", "highest_loss"]
Example = dict[str, Any]
_DTYPES = {str(d).removeprefix("torch."): d for d in
           (torch.int32, torch.int64, torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.uint8,
            torch.int8, torch.int16, torch.float64)}
_CHUNK = 65536  # rows copied at a time when a memory is rebuilt (bounds RAM for memory-mapped memories)


def examples_to_rows(examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    """Pack example dicts into padded tensors: ``tokens`` (N, W) int32, ``lengths`` (N,), ``task`` (N,), and
    ``label`` (N,) for classification or ``token_labels`` (N, W) int32 for causal LM examples with labels."""
    lengths = torch.tensor([len(ex["input_ids"]) for ex in examples], dtype=torch.int32)  # (N,)
    width = int(lengths.max()) if len(examples) else 0
    filled = torch.arange(width) < lengths[:, None]  # (N, W); boolean assignment fills row-major
    rows = {"lengths": lengths, "task": torch.tensor([int(ex["task"]) for ex in examples], dtype=torch.int64)}
    rows["tokens"] = torch.zeros((len(examples), width), dtype=torch.int32)
    rows["tokens"][filled] = torch.tensor([t for ex in examples for t in ex["input_ids"]], dtype=torch.int32)
    if examples and "label" in examples[0]:
        rows["label"] = torch.tensor([int(ex["label"]) for ex in examples], dtype=torch.int64)
    if examples and "labels" in examples[0]:
        rows["token_labels"] = torch.zeros((len(examples), width), dtype=torch.int32)
        rows["token_labels"][filled] = torch.tensor([t for ex in examples for t in ex["labels"]], dtype=torch.int32)
    return rows


class ExampleMemory:
    """A fixed-capacity store of examples as tensors with one row per example.

    Fields are tensors whose first dimension is the example: ``tokens`` (padded token ids, int32), ``lengths``,
    ``task``, ``label`` or ``token_labels``, and any payload a technique adds (stored logits). Per-token fields
    share the width ``W`` of the longest stored example and grow with it. The memory changes only through
    :meth:`update`, which rebuilds it into a new generation; in RAM that is a new set of tensors, with
    ``memmap_dir`` a new folder of raw files (``gen-<k>/<field>.bin``) written by one process and mapped by all.
    The generation before the previous one is deleted, so a checkpoint taken before or after an update still
    finds its files.

    Args:
        capacity: the most examples held.
        memmap_dir: keep the fields in memory-mapped files in this folder instead of RAM.
        per_token: names of the fields with a per-token dimension after the example dimension.
    """

    def __init__(self, capacity: int, memmap_dir: str | Path | None = None,
                 per_token: frozenset[str] = frozenset({"tokens", "token_labels"})) -> None:
        self.capacity = capacity
        self.memmap_dir = Path(memmap_dir) if memmap_dir is not None else None
        self.per_token = per_token
        self.size = 0
        self.seen = 0  # examples offered so far (the reservoir's stream position)
        self.width = 0
        self.generation = 0
        self.specs: dict[str, tuple[str, tuple[int, ...]]] = {}  # name -> (dtype, trailing shape after W)
        self.fields: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return self.size

    # ---- reading ------------------------------------------------------------------------------------------
    def rows(self, index: Tensor) -> dict[str, Tensor]:
        """The fields of the rows ``index`` (copied out of the memory)."""
        return {name: t[index] for name, t in self.fields.items()}

    def examples(self, index: Tensor) -> list[Example]:
        """The rows ``index`` as example dicts, as a datamodule's ``collate`` takes them."""
        rows = self.rows(index)
        out: list[Example] = []
        for i, n in enumerate(rows["lengths"].tolist()):
            ex: Example = {"input_ids": rows["tokens"][i, :n].tolist(), "task": int(rows["task"][i])}
            if "label" in rows:
                ex["label"] = int(rows["label"][i])
            if "token_labels" in rows:
                ex["labels"] = rows["token_labels"][i, :n].tolist()
            out.append(ex)
        return out

    # ---- writing ------------------------------------------------------------------------------------------
    def update(self, src: Tensor, new_rows: Mapping[str, Tensor], *, writer: bool = True,
               barrier: Callable[[], None] | None = None) -> None:
        """Rebuild the memory: row ``j`` becomes old row ``src[j]`` if ``src[j] >= 0``, else new row
        ``-src[j] - 1`` of ``new_rows``. With ``memmap_dir`` only the ``writer`` writes the files; ``barrier``
        (all processes) runs before the others map them."""
        if len(src) > self.capacity:
            raise ValueError(f"update of {len(src)} rows exceeds the capacity {self.capacity}")
        specs, width = dict(self.specs), self.width
        for name, t in new_rows.items():
            per_token = name in self.per_token
            spec = (str(t.dtype).removeprefix("torch."), tuple(t.shape[2:] if per_token else t.shape[1:]))
            if specs.setdefault(name, spec) != spec:
                raise ValueError(f"memory field {name!r} changed from {specs[name]} to {spec}")
            width = max(width, t.shape[1]) if per_token else width
        if self.specs and set(new_rows) != set(specs):
            raise ValueError(f"new rows have fields {sorted(new_rows)}, the memory holds {sorted(specs)}")
        generation = self.generation + 1
        if writer:
            fields = self._allocate(specs, width, generation, create=True, rows=len(src))
            self._copy_rows(fields, src, new_rows, width)
        if barrier is not None:
            barrier()
        if not writer:  # map what the writer wrote
            fields = self._allocate(specs, width, generation, create=False, rows=len(src))
        self.fields = {name: t[: len(src)] for name, t in fields.items()}
        self.specs, self.width, self.size, self.generation = specs, width, len(src), generation
        if self.memmap_dir is not None and writer:
            shutil.rmtree(self._gen_dir(generation - 2), ignore_errors=True)

    def _gen_dir(self, generation: int) -> Path:
        if self.memmap_dir is None:  # internal invariant: only memory-mapped memories have generation folders
            raise RuntimeError("ExampleMemory._gen_dir called on an in-RAM memory")
        return self.memmap_dir / f"gen-{generation:06d}"

    def _allocate(self, specs: Mapping[str, tuple[str, tuple[int, ...]]], width: int, generation: int, *,
                  create: bool, rows: int) -> dict[str, Tensor]:
        """Zeroed fields: ``rows`` rows in RAM, or ``capacity`` rows mapped from generation ``generation``'s files."""
        fields = {}
        for name, (dtype_name, trail) in specs.items():
            dtype = _DTYPES[dtype_name]
            inner = (*((width,) if name in self.per_token else ()), *trail)
            if self.memmap_dir is None:
                fields[name] = torch.zeros((rows, *inner), dtype=dtype)
                continue
            shape = (self.capacity, *inner)
            path = self._gen_dir(generation) / f"{name}.bin"
            numel = torch.Size(shape).numel()
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    f.truncate(max(1, numel) * dtype.itemsize)  # mmap needs a non-empty file
            elif not path.exists():
                raise ClightConfigError(
                    f"`memmap_dir`: the memory file {str(path)!r} is missing; the checkpoint refers to generation "
                    f"{generation} of the memory in {str(self.memmap_dir)!r}. Resume with the original "
                    "`memmap_dir` (on a filesystem every rank can read), or start a new run."
                )
            mapped = torch.from_file(str(path), shared=True, size=max(1, numel), dtype=dtype)
            fields[name] = mapped[:numel].view(shape)
        return fields

    def _copy_rows(self, dst: dict[str, Tensor], src: Tensor, new_rows: Mapping[str, Tensor], width: int) -> None:
        for start in range(0, len(src), _CHUNK):
            part = src[start : start + _CHUNK]
            old = part >= 0
            for name, out in dst.items():
                block = out[start : start + len(part)]  # a view: index assignment writes through
                if old.any():
                    block[old] = self._pad(self.fields[name][part[old]], name, width)
                if (~old).any():
                    block[~old] = self._pad(new_rows[name][-part[~old] - 1], name, width)

    def _pad(self, t: Tensor, name: str, width: int) -> Tensor:
        if name not in self.per_token or t.shape[1] == width:
            return t
        out = t.new_zeros((t.shape[0], width, *t.shape[2:]))
        out[:, : t.shape[1]] = t
        return out

    # ---- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain values and CPU tensors; a memory-mapped memory is referenced (generation), not copied."""
        state: dict[str, Any] = {
            "capacity": self.capacity, "size": self.size, "seen": self.seen, "width": self.width,
            "generation": self.generation, "memmap": self.memmap_dir is not None,
            "specs": {name: [dtype, list(trail)] for name, (dtype, trail) in self.specs.items()},
        }
        if self.memmap_dir is None:
            state["fields"] = dict(self.fields)  # never modified in place: update() builds new tensors
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ClightConfigError(
                f"`memory_size`: the checkpoint's memory holds {state['capacity']} examples, this callback "
                f"{self.capacity}. Resume with the original `memory_size`."
            )
        if bool(state["memmap"]) != (self.memmap_dir is not None):
            raise ClightConfigError(
                f"`memmap_dir`: the checkpoint's memory is {'memory-mapped' if state['memmap'] else 'in RAM'} but "
                f"this callback has memmap_dir={self.memmap_dir}. Resume with the original `memmap_dir`."
            )
        self.size, self.seen, self.width = int(state["size"]), int(state["seen"]), int(state["width"])
        self.generation = int(state["generation"])
        self.specs = {name: (dtype, tuple(trail)) for name, (dtype, trail) in state["specs"].items()}
        if self.memmap_dir is None:
            self.fields = {name: t.clone() for name, t in state["fields"].items()}
        else:
            full = self._allocate(self.specs, self.width, self.generation, create=False, rows=self.size)
            self.fields = {name: t[: self.size] for name, t in full.items()}


# ---- storage policies: which memory rows stay and which new examples enter ------------------------------------
def reservoir_plan(size: int, seen: int, capacity: int, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Reservoir sampling of ``n`` new examples (offered in a random order) into a memory that has seen
    ``seen`` examples: each of the ``seen + n`` examples ends up in the memory with equal probability.

    Returns ``(src, take)`` for :meth:`ExampleMemory.update`: ``take[i]`` is the new example that becomes new
    row ``i``."""
    order = torch.randperm(n, generator=generator)
    position = seen + torch.arange(n)  # each candidate's index in the whole stream
    draw = (torch.rand(n, generator=generator, dtype=torch.float64) * (position + 1)).long()
    slot = torch.where(position < capacity, position, draw)
    accepted = slot < capacity
    slots, cands = slot[accepted], order[accepted]
    last = torch.full((capacity,), -1).scatter_reduce(0, slots, torch.arange(len(slots)), "amax")  # last write wins
    written = (last >= 0).nonzero().squeeze(1)
    take = cands[last[written]]
    src = torch.arange(min(capacity, size + n))  # a reservoir below capacity has stored all it has seen
    src[written] = -(torch.arange(len(written)) + 1)
    return src, take


def balanced_quotas(available: Sequence[int], capacity: int) -> list[int]:
    """Split ``capacity`` as evenly as possible over groups holding ``available`` examples each (a group with
    fewer gets all of its own; the rest is shared by the others; leftover single slots go to the first groups)."""
    quota = [0] * len(available)
    remaining = capacity
    open_groups = [i for i, a in enumerate(available) if a > 0]
    while open_groups and remaining > 0:
        share = remaining // len(open_groups)
        if share == 0:
            for i in open_groups[:remaining]:
                quota[i] += 1
            break
        for i in open_groups:
            add = min(share, available[i] - quota[i])
            quota[i] += add
            remaining -= add
        open_groups = [i for i in open_groups if quota[i] < available[i]]
    return quota


def choose(candidates: Tensor, k: int, generator: torch.Generator, scores: Tensor | None = None) -> Tensor:
    """``k`` of ``candidates``: the highest-scoring (ties by position) or a random subset, in ascending order."""
    if k >= len(candidates):
        return candidates
    if scores is None:
        picked = torch.randperm(len(candidates), generator=generator)[:k]
    else:
        picked = torch.argsort(scores[candidates], descending=True, stable=True)[:k]
    return candidates[picked.sort().values]


def balanced_plan(old_groups: Tensor, new_groups: Tensor, capacity: int, generator: torch.Generator,
                  scores: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Class- or task-balanced storage: every group (class or task) gets an equal share of the capacity.
    Rows already stored are kept first; a group over its share loses rows at random; a group under its share
    is filled from the new examples (at random, or the highest ``scores``)."""
    keys = torch.cat([old_groups, new_groups]).unique().tolist()
    old_idx = [(old_groups == k).nonzero().squeeze(1) for k in keys]
    new_idx = [(new_groups == k).nonzero().squeeze(1) for k in keys]
    quotas = balanced_quotas([len(o) + len(n) for o, n in zip(old_idx, new_idx)], capacity)
    keep, take = [], []
    for quota, olds, news in zip(quotas, old_idx, new_idx):
        keep.append(choose(olds, quota, generator))
        take.append(choose(news, quota - len(keep[-1]), generator, scores))
    keep_t = torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.long)
    take_t = torch.cat(take) if take else torch.zeros(0, dtype=torch.long)
    return torch.cat([keep_t, -(torch.arange(len(take_t)) + 1)]), take_t


def plan_insert(memory: ExampleMemory, examples: Sequence[Mapping[str, Any]], policy: Policy,
                generator: torch.Generator, *, pool: Tensor | None = None, scores: Tensor | None = None,
                groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Plan offering ``examples`` to ``memory`` under ``policy``: ``(src, take)`` for
    :meth:`ExampleMemory.update`, ``take`` indexing ``examples``. With ``scores`` (one per example of ``pool``,
    default all) the highest-scoring examples enter instead of random ones. The balanced policies group by the
    memory's ``label``/``task`` field and the examples' (or ``groups``, one per example)."""
    pool = torch.arange(len(examples)) if pool is None else pool
    if policy == "reservoir":
        src, take = reservoir_plan(memory.size, memory.seen, memory.capacity, len(examples), generator)
        if scores is not None:
            take = pool[choose(torch.arange(len(pool)), len(take), generator, scores)]
        return src, take
    key = "label" if policy == "class_balanced" else "task"
    new_groups = (groups[pool].long() if groups is not None else
                  torch.tensor([int(examples[i][key]) for i in pool.tolist()], dtype=torch.long))
    old_groups = memory.fields[key].long() if memory.size else torch.zeros(0, dtype=torch.long)
    src, local = balanced_plan(old_groups, new_groups, memory.capacity, generator, scores)
    return src, pool[local]
