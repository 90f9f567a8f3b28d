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
from clight.callbacks._utils import check_arg, eval_mode, seeded_generator
from clight.callbacks.rehearsal.memory import (
    Example,
    ExampleMemory,
    Policy,
    Selection,
    examples_to_rows,
    plan_insert,
)
from clight.contracts import ContinualModel, ExampleStream
from clight.errors import ClightConfigError
from clight.task import TaskInfo


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
    with eval_mode(pl_module), trainer.precision_plugin.forward_context():
        for start in range(0, per, batch_size):
            batch = move_data_to_device(trainer.datamodule.collate(mine[start : start + batch_size]), pl_module.device)
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
    """

    module_contracts = (ContinualModel,)
    stream_contracts = (ExampleStream,)
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
        first = next((exs[0] for exs in trainer.datamodule.train_examples if exs), {})
        if self.policy == "class_balanced" and "label" not in first:
            raise ClightConfigError(
                f"`policy`: `class_balanced` needs class labels, but the stream's examples have no `label` (fields: "
                f"{sorted(first)}). Use `policy: task_balanced` or `reservoir` for causal-LM streams."
            )

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        self._task_index = task.index
        self._micro_step, self._micro = -1, 0

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
                                      lambda b, o: {"score": self.score_examples(pl_module, b, o)},
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
        memory = self._pending_memory if self._pending_memory is not None else self.memory.state_dict()
        return {**super().state_dict(), "memory": memory}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self._memmap_resolved:
            self.memory.load_state_dict(state_dict["memory"])
        else:  # the files are found once `setup` knows the run directory
            self._pending_memory = dict(state_dict["memory"])
