"""The base of the rehearsal callbacks (Replay, DarkExperienceReplay, AGEM): an :class:`ExampleMemory` filled
at the end of every task, and sharded-and-gathered model passes over examples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities import move_data_to_device
from torch import Tensor

from clight.callback import ContinualCallback, stream_seed
from clight.callbacks._rows import TaskRows, batch_tensors, stack_rows
from clight.callbacks._utils import check_arg, eval_mode, seeded_generator
from clight.callbacks.rehearsal.memory import (
    Example,
    ExampleMemory,
    Policy,
    Selection,
    examples_to_rows,
    plan_insert,
)
from clight.contracts import ContinualModel, ExampleStream, optional
from clight.errors import ClightConfigError
from clight.task import TaskInfo

BATCH_PREFIX = "batch."  # memory fields holding batch rows: `batch.<key of the batch dict>`


@torch.no_grad()
def forward_examples(trainer: pl.Trainer, pl_module: pl.LightningModule, examples: Sequence[Example],
                     fn: Callable[[dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor]], batch_size: int,
                     collate: Callable[[list[Any]], dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
    """Evaluate ``fn(batch, outputs)`` (per-example tensors) over ``examples`` in eval mode, sharded across
    ranks and all-gathered, so every rank gets the same (bitwise) CPU result rows for all examples. ``collate``
    batches a list of examples (default: the datamodule's; :func:`~clight.callbacks._rows.stack_rows` for rows).

    Every rank runs the same number of batches (the last shard is padded), so sharded models stay in step.
    The forward goes through the LightningModule itself, never the DDP wrapper."""
    world, rank, n = trainer.world_size, trainer.global_rank, len(examples)
    per = -(-n // world)
    mine = [examples[min(i, n - 1)] for i in range(rank * per, (rank + 1) * per)]
    collate = collate or trainer.datamodule.collate
    parts: dict[str, list[Tensor]] = {}
    with eval_mode(pl_module), trainer.precision_plugin.forward_context():
        for start in range(0, per, batch_size):
            batch = move_data_to_device(collate(mine[start : start + batch_size]), pl_module.device)
            for name, t in fn(batch, pl_module(batch)).items():
                parts.setdefault(name, []).append(t)
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

    A datamodule without ``train_examples``/``collate`` (a user's own, or a plain ``DataLoader`` per task) offers
    instead the rows of the task's training batches (dicts of tensors of any modality), sampled while the task
    trains and all-gathered at its end (:mod:`clight.callbacks._rows`); the memory stores them as they are
    (``batch.<key>`` fields) and replays them stacked back into batch dicts.
    """

    module_contracts = (ContinualModel,)
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
        self.memmap_dir = memmap_dir
        self.memory = ExampleMemory(memory_size, memmap_dir, per_token=self.per_token_fields)
        self._pending_memory: dict[str, Any] | None = None  # a memory-mapped state loaded before `setup`
        self._memmap_resolved = memmap_dir is None
        self._task_index = 0
        self._micro_step, self._micro = -1, 0
        # rows of the training batches, for a datamodule without `train_examples` (decided in `setup`)
        self.batch_rows: TaskRows | None = None
        self._pool_size = memory_size if selection == "random" else max(score_pool, memory_size)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, policy=self.policy, selection=self.selection)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not self._memmap_resolved:  # a relative `memmap_dir` lives in the run directory
            path = Path(self.memmap_dir).expanduser()
            self.memory.memmap_dir = path if path.is_absolute() else Path(trainer.default_root_dir) / path
            self._memmap_resolved = True
        if self._pending_memory is not None:
            self.memory.load_state_dict(self._pending_memory)
            self._pending_memory = None
        if stage != "fit":  # the runner's evaluation runs `validate` without the datamodule
            return
        dm, name = trainer.datamodule, type(self).__name__
        if not optional(dm, ExampleStream, who=name, role="datamodule", fix="Add the missing members, or remove "
                        "`train_examples` from the datamodule to rehearse rows of the training batches instead."):
            self.batch_rows = self.batch_rows or TaskRows(self._pool_size, name)
            return
        first = next((exs[0] for exs in dm.train_examples if exs), {})
        if self.policy == "class_balanced" and "label" not in first:
            raise ClightConfigError(
                f"`policy`: `class_balanced` needs class labels, but the stream's examples have no `label` (fields: "
                f"{sorted(first)}). Use `policy: task_balanced` or `reservoir` for causal-LM streams."
            )

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        self._task_index = task.index
        self._micro_step, self._micro = -1, 0
        if self.batch_rows is not None:
            self.batch_rows.start(trainer, task.index)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self.batch_rows is None:
            return
        if self.policy == "class_balanced" and self.batch_rows.seen == 0:
            _labels(batch_tensors(batch, type(self).__name__))  # checked at the first batch, not at the task end
        self.batch_rows.observe(trainer, batch, self._seed(trainer))

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        self._fill(trainer, pl_module, task)

    # ---- filling ------------------------------------------------------------------------------------------
    def _seed(self, trainer: pl.Trainer) -> int:
        return stream_seed(trainer, self.seed)

    def score_examples(self, pl_module: pl.LightningModule, batch: dict[str, Tensor],
                       outputs: dict[str, Tensor]) -> Tensor:
        """The score hook of ``selection: highest_loss``: one score per example ``(B,)``, higher enters first.
        Default: the example's task loss under the trained model. Override it for other priorities."""
        return pl_module.per_example_loss(batch, outputs)

    def _payload(self, trainer: pl.Trainer, pl_module: pl.LightningModule, examples: list[Example],
                 rows: dict[str, Tensor]) -> dict[str, Tensor]:
        """Extra per-example fields stored with new memory rows (DER's logits). Default: none."""
        return {}

    def _collate(self, trainer: pl.Trainer) -> Callable[[list[Any]], dict[str, Tensor]]:
        """What batches a list of this task's examples: the datamodule's ``collate``, or stacking batch rows."""
        return stack_rows if self.batch_rows is not None else trainer.datamodule.collate

    def _task_examples(self, trainer: pl.Trainer, task: TaskInfo) -> tuple[list[Example], Tensor | None]:
        """The finished task's examples (the stream's, or the batch rows of every rank) and, for batch rows under
        a balanced policy, each one's group (its task, or its label)."""
        if self.batch_rows is None:
            dm = trainer.datamodule
            examples = ([ex for exs in dm.train_examples for ex in exs] if getattr(dm, "joint", False)
                        else dm.train_examples[task.index])
            return examples, None
        examples = self.batch_rows.gather(trainer)
        self.batch_rows.clear()
        if self.policy == "class_balanced" and examples:
            return examples, _labels(stack_rows(examples))
        return examples, torch.full((len(examples),), task.index, dtype=torch.long)

    def _rows_to_store(self, examples: list[Example], task: TaskInfo) -> dict[str, Tensor]:
        if self.batch_rows is None:
            return examples_to_rows(examples)
        rows = {f"{BATCH_PREFIX}{k}": v for k, v in stack_rows(examples).items()}
        rows["task"] = torch.full((len(examples),), task.index, dtype=torch.long)
        if self.policy == "class_balanced":
            rows["label"] = _labels(stack_rows(examples))
        return rows

    def _fill(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        dm, mem = trainer.datamodule, self.memory
        examples, groups = self._task_examples(trainer, task)
        n = len(examples)
        if n == 0:
            return
        g = seeded_generator(self._seed(trainer), task.index, 1)
        pool, scores = torch.arange(n), None
        if self.selection == "highest_loss":
            if n > max(self.score_pool, mem.capacity):
                pool = torch.randperm(n, generator=g)[: max(self.score_pool, mem.capacity)].sort().values
            scores = forward_examples(trainer, pl_module, [examples[i] for i in pool.tolist()],
                                      lambda b, o: {"score": self.score_examples(pl_module, b, o)},
                                      getattr(dm, "eval_batch_size", 32), self._collate(trainer))["score"]
        src, take = plan_insert(mem, examples, self.policy, g, pool=pool, scores=scores, groups=groups)
        mem.seen += n
        if len(take) == 0 and mem.size == 0:
            return
        chosen = [examples[i] for i in take.tolist()]
        if chosen:
            rows = self._rows_to_store(chosen, task)
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
        batch = self.memory_rows(mine) if self.batch_rows is not None else \
            trainer.datamodule.collate(self.memory.examples(mine))
        return move_data_to_device(batch, pl_module.device), mine

    def memory_rows(self, index: Tensor) -> dict[str, Tensor]:
        """The memory rows ``index`` of batch rows as the batch dict they came from (CPU)."""
        cut = len(BATCH_PREFIX)
        return {k[cut:]: v[index] for k, v in self.memory.fields.items() if k.startswith(BATCH_PREFIX)}

    # ---- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        memory = self._pending_memory if self._pending_memory is not None else self.memory.state_dict()
        state = {**super().state_dict(), "memory": memory}
        if self.batch_rows is not None:  # the batch rows of a task under way (a collective under DDP)
            state["batch_rows"] = self.batch_rows.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self._memmap_resolved:
            self.memory.load_state_dict(state_dict["memory"])
        else:  # the files are found once `setup` knows the run directory
            self._pending_memory = dict(state_dict["memory"])
        if "batch_rows" in state_dict:
            self.batch_rows = self.batch_rows or TaskRows(self._pool_size, type(self).__name__)
            self.batch_rows.load_state_dict(state_dict["batch_rows"])


def _labels(batch: dict[str, Tensor]) -> Tensor:
    """The class labels of a batch of rows for ``policy: class_balanced``: its 1-D integer ``labels`` or ``label``."""
    for key in ("labels", "label"):
        t = batch.get(key)
        if t is not None and t.dim() == 1 and not t.is_floating_point():
            return t.long().cpu()
    raise ClightConfigError(
        f"`policy`: `class_balanced` needs class labels, but the training batches have no 1-D integer `labels` or "
        f"`label` (keys: {sorted(batch)}). Use `policy: task_balanced` or `reservoir`, or add the labels to the "
        "batches.")
