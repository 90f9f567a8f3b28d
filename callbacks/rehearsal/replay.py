"""Experience replay: rehearse a memory of past tasks' examples while training later tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from clight.callback import is_sharded
from clight.callbacks._utils import check_arg, seeded_generator
from clight.callbacks.rehearsal.base import MemoryCallback
from clight.callbacks.rehearsal.memory import Policy, Selection
from clight.errors import ClightConfigError
from clight.task import TaskInfo

Mode = Literal["per_batch", "mixed"]


class Replay(MemoryCallback):
    """Keep a fixed-size memory of past examples and rehearse them while later tasks train.

    The memory is filled at the end of each task from that task's training examples (token ids, lengths,
    labels and task ids as compact tensors; the blocks of a causal-LM stream likewise) under a storage
    ``policy``, choosing at random or by highest loss under the trained model. Every rank holds the same full
    memory: choices use a generator seeded from ``(seed, task index)`` and model scores are all-gathered. A
    datamodule without ``train_examples`` (a plain ``DataLoader`` per task) offers the rows of the task's training
    batches instead: dicts of tensors of any modality, stored as they are (docs/reuse.md).

    In ``per_batch`` mode every training step draws ``replay_batch_size`` memory examples per rank (one global
    draw seeded from ``(seed, task, step, micro-batch)``, split over ranks, so ranks replay distinct examples
    and a resumed run replays the same ones) and adds ``weight * task_loss(memory batch)`` as the loss term
    ``replay``. The cost is the extra examples' forward and backward. In ``mixed`` mode (rehearsal in the
    multi-stage fine-tuning sense) the task's training set is extended, when the task starts, with memory
    examples amounting to ``mixed_ratio`` of its size; nothing changes per step.

    Args:
        memory_size: the most examples the memory holds.
        mode: ``per_batch`` (a replay loss term each step) or ``mixed`` (memory examples mixed into the data).
        replay_batch_size: memory examples per step and rank (``per_batch``).
        mixed_ratio: memory examples added to a task's training set, as a fraction of its size (``mixed``;
            above the memory's size examples repeat).
        weight: weight of the ``replay`` loss term (``per_batch``).
        policy: ``reservoir`` (every example seen has the same chance to be kept), ``class_balanced`` (equal
            share per class; classification only) or ``task_balanced`` (equal share per task).
        selection: which of a task's examples enter: ``random`` or ``highest_loss`` (the hardest under the
            model at task end, scored by the overridable ``score_examples`` hook). With ``reservoir`` the
            policy still decides how many and which slots change.
        score_pool: at most this many of a task's examples (a random subset, at least ``memory_size``) are
            scored for ``highest_loss``.
        seed: seed of the memory's random choices; empty: the datamodule's ``seed``.
        memmap_dir: keep the memory in memory-mapped files in this folder instead of RAM (a relative path is
            taken inside the trainer's ``default_root_dir``, the stream's ``run_dir``; it must be on a
            filesystem all ranks share: rank 0 writes, every rank maps). The checkpoint then refers to the files
            (by generation) instead of holding the tensors.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.Replay
              init_args: {memory_size: 200, mode: per_batch, replay_batch_size: 32, policy: reservoir}
    """

    # the memory is examples on the CPU and the replay forward is the module's own (run by every rank every step),
    # so nothing touches a full parameter (tests/test_sharded.py compares with DDP)
    supports_sharded = True

    term_name = "replay"

    def __init__(
        self,
        *,
        memory_size: int = 200,
        mode: Mode = "per_batch",
        replay_batch_size: int = 32,
        mixed_ratio: float = 0.25,
        weight: float = 1.0,
        policy: Policy = "reservoir",
        selection: Selection = "random",
        score_pool: int = 4096,
        seed: int | None = None,
        memmap_dir: str | None = None,
    ) -> None:
        super().__init__(memory_size=memory_size, replay_batch_size=replay_batch_size, policy=policy,
                         selection=selection, score_pool=score_pool, seed=seed, memmap_dir=memmap_dir)
        check_arg(mode in ("per_batch", "mixed"), "mode", "`per_batch` or `mixed`", mode,
                  "Use `per_batch` to add a replay loss every step or `mixed` to extend each task's data.")
        check_arg(isinstance(mixed_ratio, (int, float)) and mixed_ratio > 0, "mixed_ratio", "a number > 0",
                  mixed_ratio, "E.g. `mixed_ratio: 0.25` adds a quarter of the task's size in memory examples.")
        check_arg(isinstance(weight, (int, float)) and weight > 0, "weight", "a number > 0", weight,
                  "Remove the callback to train without replay.")
        self.mode, self.mixed_ratio, self.weight = mode, float(mixed_ratio), float(weight)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, mode=self.mode, policy=self.policy,
                                        selection=self.selection)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if self.mode == "per_batch" and is_sharded(trainer.strategy) and self.memory_size < trainer.world_size:
            # a rank without a replay row would skip the replay forward, whose FSDP all-gathers are collectives
            raise ClightConfigError(
                f"`memory_size`: {self.memory_size} examples for {trainer.world_size} ranks under "
                f"`{type(trainer.strategy).__name__}`; every rank needs a replay row each step. Give `memory_size` "
                f">= {trainer.world_size}.")
        if self.mode == "mixed" and not hasattr(trainer.datamodule, "extra_train_examples"):
            raise ClightConfigError(
                f"`mode`: `mixed` extends the task's data through the datamodule's `extra_train_examples`, which "
                f"{type(trainer.datamodule).__name__} lacks. Use a clight stream or `mode: per_batch`."
            )

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return (self.term_name,) if self.mode == "per_batch" else ()

    # ---- mixed rehearsal -------------------------------------------------------------------------------------
    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        super().on_task_start(trainer, pl_module, task)
        if self.mode != "mixed":
            return
        dm, size = trainer.datamodule, self.memory.size
        # read when the train dataloader is built, which happens after this hook (also on resume)
        dm.extra_train_examples = []
        if size == 0:
            return
        wanted = round(self.mixed_ratio * len(dm.stage_train_examples()))
        g = seeded_generator(self._seed(trainer), task.index, 2)
        repeats, rest = divmod(wanted, size)
        parts = [torch.randperm(size, generator=g) for _ in range(repeats)]
        dm.extra_train_examples = self.memory.examples(torch.cat([*parts, torch.randperm(size, generator=g)[:rest]]))

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.mode == "mixed":
            trainer.datamodule.extra_train_examples = []
        super().on_task_end(trainer, pl_module, task)

    # ---- per-batch replay ------------------------------------------------------------------------------------
    def memory_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule
                     ) -> tuple[dict[str, Tensor] | None, Tensor]:
        """This micro-batch's draw from the memory (``None`` while it is empty, or for a rank without a row) and
        its memory rows; call it once per training batch."""
        micro = self._next_micro_batch(trainer)
        return self._memory_batch(trainer, pl_module, self._task_index, trainer.global_step, micro)

    def loss_terms(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                   outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.mode != "per_batch":
            return {}
        memory, _ = self.memory_batch(trainer, pl_module)
        if memory is None:  # empty memory (first task), or fewer memory rows than ranks
            return {self.term_name: self.weight * outputs["logits"].new_zeros(())}
        return {self.term_name: self.weight * pl_module.task_loss(memory, pl_module(memory))}
