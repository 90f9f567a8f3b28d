"""The rehearsal memory shared by Replay, DarkExperienceReplay and AGEM: past examples stored compactly as
tensors (in RAM or memory-mapped files), the storage policies that decide what stays, and the deterministic,
rank-agreeing random choices they use."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.fabric.utilities import move_data_to_device
from torch import Tensor

from clight.callback import ContinualCallback
from clight.errors import ClightConfigError
from clight.module import causal_lm_nll
from clight.task import TaskInfo

Policy = Literal["reservoir", "class_balanced", "task_balanced"]
Selection = Literal["random", "highest_loss"]
Example = dict[str, Any]
_DTYPES = {str(d).removeprefix("torch."): d for d in
           (torch.int32, torch.int64, torch.float32, torch.float16, torch.bfloat16, torch.bool)}
_CHUNK = 65536  # rows copied at a time when a memory is rebuilt (bounds RAM for memory-mapped memories)


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers, e.g. ``(seed, task_index, step)``."""
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state * 1_000_003 + int(key) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(state)


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
        assert self.memmap_dir is not None
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
                generator: torch.Generator, *, pool: Tensor | None = None, scores: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Plan offering ``examples`` to ``memory`` under ``policy``: ``(src, take)`` for
    :meth:`ExampleMemory.update`, ``take`` indexing ``examples``. With ``scores`` (one per example of ``pool``,
    default all) the highest-scoring examples enter instead of random ones."""
    pool = torch.arange(len(examples)) if pool is None else pool
    if policy == "reservoir":
        src, take = reservoir_plan(memory.size, memory.seen, memory.capacity, len(examples), generator)
        if scores is not None:
            take = pool[choose(torch.arange(len(pool)), len(take), generator, scores)]
        return src, take
    key = "label" if policy == "class_balanced" else "task"
    new_groups = torch.tensor([int(examples[i][key]) for i in pool.tolist()], dtype=torch.long)
    old_groups = memory.fields[key].long() if memory.size else torch.zeros(0, dtype=torch.long)
    src, local = balanced_plan(old_groups, new_groups, memory.capacity, generator, scores)
    return src, pool[local]


# ---- the base callback ----------------------------------------------------------------------------------------
def check_arg(ok: bool, name: str, constraint: str, value: Any, fix: str) -> None:
    """Raise :class:`ClightConfigError` naming the argument, the constraint, the value and a fix."""
    if not ok:
        raise ClightConfigError(f"`{name}` must be {constraint}, got {value!r}. {fix}")


def per_example_loss(module: pl.LightningModule, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> Tensor:
    """The task loss of every example of a batch, ``(B,)``: cross-entropy, or mean next-token NLL."""
    logits = outputs["logits"].float()
    if getattr(module, "task", "classification") == "classification":
        if "class_mask" in batch:
            logits = logits.masked_fill(~batch["class_mask"], torch.finfo(logits.dtype).min)
        return F.cross_entropy(logits, batch["labels"], reduction="none")
    labels = batch["labels"]
    return causal_lm_nll(logits, labels).sum(1) / (labels[:, 1:] != -100).sum(1).clamp_min(1)


@torch.no_grad()
def forward_examples(trainer: pl.Trainer, pl_module: pl.LightningModule, examples: Sequence[Example],
                     fn: Callable[[dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor]], batch_size: int
                     ) -> dict[str, Tensor]:
    """Evaluate ``fn(batch, outputs)`` (per-example tensors) over ``examples`` in eval mode, sharded across
    ranks and all-gathered, so every rank gets the same (bitwise) CPU result rows for all examples.

    Every rank runs the same number of batches (the last shard is padded), so sharded models stay in step.
    The forward goes through the LightningModule itself, never the DDP wrapper."""
    world, rank, n = trainer.world_size, trainer.global_rank, len(examples)
    per = -(-n // world)
    mine = [examples[min(i, n - 1)] for i in range(rank * per, (rank + 1) * per)]
    parts: dict[str, list[Tensor]] = {}
    was_training = pl_module.training
    pl_module.eval()
    try:
        with trainer.precision_plugin.forward_context():
            for start in range(0, per, batch_size):
                batch = move_data_to_device(trainer.datamodule.collate(mine[start : start + batch_size]),
                                            pl_module.device)
                for name, t in fn(batch, pl_module(batch)).items():
                    parts.setdefault(name, []).append(t)
    finally:
        pl_module.train(was_training)
    out = {}
    for name, chunks in parts.items():
        local = torch.cat(chunks)  # (per, ...)
        if world > 1:
            local = trainer.strategy.all_gather(local).reshape(world * per, *local.shape[1:])
        out[name] = local[:n].cpu()
    return out


class MemoryCallback(ContinualCallback):
    """Base of the rehearsal callbacks: an :class:`ExampleMemory` filled at the end of every task.

    At task end the finished task's training examples are offered to the memory under ``policy``; which
    examples enter is chosen at random or, with ``selection: highest_loss``, by the trained model's per-example
    loss (computed on a random pool of at most ``score_pool`` examples, sharded over ranks and all-gathered).
    Every random choice uses a generator seeded from ``(seed, task index, ...)`` and every model output is
    all-gathered, so all ranks hold the same full memory and a resumed run rebuilds exactly the same one.
    """

    per_token_fields: frozenset[str] = frozenset({"tokens", "token_labels"})

    def __init__(self, *, memory_size: int, replay_batch_size: int, policy: Policy, selection: Selection,
                 score_pool: int, seed: int | None, memmap_dir: str | None) -> None:
        super().__init__()
        fix = "See the callback's docstring for the accepted values."
        check_arg(isinstance(memory_size, int) and memory_size >= 1, "memory_size", "an integer >= 1", memory_size,
                  "Give the number of examples to keep, e.g. `memory_size: 200`.")
        check_arg(isinstance(replay_batch_size, int) and replay_batch_size >= 1, "replay_batch_size",
                  "an integer >= 1", replay_batch_size, "Give the memory examples drawn per step, e.g. 32.")
        check_arg(policy in get_args(Policy), "policy", f"one of {list(get_args(Policy))}", policy, fix)
        check_arg(selection in get_args(Selection), "selection", f"one of {list(get_args(Selection))}", selection, fix)
        check_arg(isinstance(score_pool, int) and score_pool >= 1, "score_pool", "an integer >= 1", score_pool, fix)
        check_arg(seed is None or (isinstance(seed, int) and seed >= 0), "seed", "empty or an integer >= 0", seed,
                  "Leave it empty to use the datamodule's seed.")
        self.memory_size, self.replay_batch_size = memory_size, replay_batch_size
        self.policy, self.selection, self.score_pool, self.seed = policy, selection, score_pool, seed
        self.memory = ExampleMemory(memory_size, memmap_dir, per_token=self.per_token_fields)
        self._task_index = 0
        self._micro_step, self._micro = -1, 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, policy=self.policy, selection=self.selection)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":  # the runner's evaluation runs `validate` without the datamodule
            return
        name, dm = type(self).__name__, trainer.datamodule
        if dm is None or not hasattr(dm, "train_examples") or not callable(getattr(dm, "collate", None)):
            raise ClightConfigError(
                f"`{name}` needs a datamodule exposing `train_examples` and `collate` (every "
                f"`clight.datamodules.ContinualDataModule` does); got {type(dm).__name__}. Use a clight stream "
                "or add those two attributes to your datamodule."
            )
        if not callable(getattr(pl_module, "task_loss", None)):
            raise ClightConfigError(f"`{name}` needs a module with `task_loss(batch, outputs)`: use "
                                    "`clight.ContinualModule`, or add the method, or remove the callback.")
        if self.policy == "class_balanced" and getattr(pl_module, "task", "classification") != "classification":
            raise ClightConfigError(
                f"`policy`: `class_balanced` needs class labels, but the module's task is {pl_module.task!r}. "
                "Use `policy: task_balanced` or `reservoir` for causal-LM streams."
            )

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        self._task_index = task.index
        self._micro_step, self._micro = -1, 0

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        self._fill(trainer, pl_module, task)

    # ---- filling ------------------------------------------------------------------------------------------
    def _seed(self, trainer: pl.Trainer) -> int:
        return self.seed if self.seed is not None else int(getattr(trainer.datamodule, "seed", 0))

    def _payload(self, trainer: pl.Trainer, pl_module: pl.LightningModule, examples: list[Example],
                 rows: dict[str, Tensor]) -> dict[str, Tensor]:
        """Extra per-example fields stored with new memory rows (DER's logits). Default: none."""
        return {}

    def _fill(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        dm, mem = trainer.datamodule, self.memory
        examples = ([ex for exs in dm.train_examples for ex in exs] if getattr(dm, "joint", False)
                    else dm.train_examples[task.index])
        n = len(examples)
        if n == 0:
            return
        g = seeded_generator(self._seed(trainer), task.index, 1)
        pool, scores = torch.arange(n), None
        if self.selection == "highest_loss":
            if n > max(self.score_pool, mem.capacity):
                pool = torch.randperm(n, generator=g)[: max(self.score_pool, mem.capacity)].sort().values
            scores = forward_examples(trainer, pl_module, [examples[i] for i in pool.tolist()],
                                      lambda b, o: {"score": per_example_loss(pl_module, b, o)},
                                      getattr(dm, "eval_batch_size", 32))["score"]
        src, take = plan_insert(mem, examples, self.policy, g, pool=pool, scores=scores)
        mem.seen += n
        if len(take) == 0 and mem.size == 0:
            return
        chosen = [examples[i] for i in take.tolist()]
        if chosen:
            rows = examples_to_rows(chosen)
            rows.update(self._payload(trainer, pl_module, chosen, rows))
        else:
            rows = {name: t[:0] for name, t in mem.fields.items()}
        memmap = mem.memmap_dir is not None
        mem.update(src, rows, writer=trainer.is_global_zero or not memmap,
                   barrier=(lambda: trainer.strategy.barrier("clight_memory")) if memmap else None)

    # ---- drawing ------------------------------------------------------------------------------------------
    def _next_micro_batch(self, trainer: pl.Trainer) -> int:
        """Index of the current micro-batch within its optimizer step (call once per training batch)."""
        step = trainer.global_step
        self._micro = self._micro + 1 if step == self._micro_step else 0
        self._micro_step = step
        return self._micro

    def _memory_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *keys: int
                      ) -> tuple[dict[str, Tensor] | None, Tensor]:
        """This rank's share of one draw of ``replay_batch_size`` examples per rank, collated and on device.

        One global draw of ``replay_batch_size * world_size`` rows, seeded from ``(seed, *keys)``, is split
        over the ranks, so ranks replay distinct examples and a resumed run draws the same ones."""
        size, world = self.memory.size, trainer.world_size
        if size == 0:
            return None, torch.zeros(0, dtype=torch.long)
        total = min(self.replay_batch_size * world, size)
        g = seeded_generator(self._seed(trainer), *keys)
        if size > 16 * total:  # huge memory: skip the O(size) permutation; repeats are rare and harmless
            index = torch.randint(size, (total,), generator=g)
        else:
            index = torch.randperm(size, generator=g)[:total]
        mine = index[trainer.global_rank :: world]
        if len(mine) == 0:
            return None, mine
        batch = trainer.datamodule.collate(self.memory.examples(mine))
        return move_data_to_device(batch, pl_module.device), mine

    # ---- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.memory.load_state_dict(state_dict["memory"])
