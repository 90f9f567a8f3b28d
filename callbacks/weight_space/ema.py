"""EMAWeights: a slow exponential moving average of the trainable weights, used to evaluate and to end a task."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from clight.callbacks._utils import check_arg, head_rows, trainable_parameters
from clight.callbacks.weight_space.base import (
    WeightSpaceCallback,
    cpu_state,
    load_weights_,
    snapshot,
)
from clight.contracts import HasTaskClasses
from clight.sharding import like_param, local, reshard_all, row_range
from clight.task import TaskInfo


class EMAWeights(WeightSpaceCallback):
    """Keep an exponential moving average of the trainable weights and make it the model at every task end.

    After every optimizer step (every ``every_n_steps``; with gradient accumulation only after a real step)
    ``θ_ema ← decay · θ_ema + (1 − decay) · θ`` in one ``torch._foreach_lerp_`` over the trainable parameters
    (I-LoRA's slow learner over the LoRA weights when the module is a peft model; momentum weight interpolation
    over the whole model otherwise). With ``warmup`` the decay of update ``n`` is ``min(decay, (1+n)/(10+n))``.
    The EMA serves evaluation: validation inside ``fit`` swaps it in, and at task end it is copied into the
    module, so the runner evaluates it and the stream checkpoint holds it.

    Across tasks the EMA keeps going (it is never reset). ``continue_from`` says what the next task trains:
    ``ema`` (the fast weights restart from the slow ones; then a task starts with both equal) or ``fast`` (the
    fast weights continue where they were, as in I-LoRA and momentum weight interpolation: the fast learner
    adapts, the slow one remembers). The classification head's rows of classes that a task introduces are
    untrained in the EMA when the task starts, and a slow average would keep them near their random init for
    the whole task; with ``new_class_rows: fast`` those rows follow the fast weights during the task that
    introduces them (later tasks average them like every other weight).

    State (CPU tensors, in the stream and mid-task checkpoints): the EMA, the update count, and with
    ``continue_from: fast`` the fast weights between tasks. Every DDP rank holds identical parameters, so every
    rank computes the same EMA. Under FSDP2 the EMA is sharded like the parameters and every update runs on the
    rank's own shard; the swaps for validation and at task end reshard every FSDP unit first, so no gathered copy
    of the other weights survives them (``tests/test_sharded.py`` compares the result with DDP).

    Args:
        decay: weight of the old average per update, in ``[0, 1)``; ``1 − decay`` is the weight of the new
            weights (0.999 averages over roughly the last 1,000 updates).
        warmup: use ``min(decay, (1+n)/(10+n))`` for update ``n`` (the average forgets its start quickly).
        every_n_steps: update the EMA every this many optimizer steps.
        continue_from: ``ema`` or ``fast``: the weights the next task trains from.
        new_class_rows: ``fast`` or ``ema``: how the head rows of a task's new classes are averaged during it.
        fp32: keep the EMA in float32 even when the weights are half precision.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.EMAWeights
              init_args: {decay: 0.99, continue_from: fast}
    """

    supports_sharded = True  # elementwise on each rank's shard (see the docstring)

    def __init__(
        self,
        *,
        decay: float = 0.999,
        warmup: bool = False,
        every_n_steps: int = 1,
        continue_from: Literal["ema", "fast"] = "ema",
        new_class_rows: Literal["fast", "ema"] = "fast",
        fp32: bool = True,
    ) -> None:
        super().__init__()
        check_arg(isinstance(decay, (int, float)) and 0.0 <= decay < 1.0, "decay", "a number in [0, 1)", decay,
                  "E.g. `decay: 0.999`; 0 copies the fast weights, values near 1 average over more steps.")
        check_arg(isinstance(every_n_steps, int) and every_n_steps >= 1, "every_n_steps", "an integer >= 1",
                  every_n_steps, "Use 1 to update after every optimizer step.")
        check_arg(continue_from in ("ema", "fast"), "continue_from", "`ema` or `fast`", continue_from,
                  "`ema` trains the next task from the average, `fast` from the fast weights.")
        check_arg(new_class_rows in ("fast", "ema"), "new_class_rows", "`fast` or `ema`", new_class_rows,
                  "`fast` lets the rows of a task's new classes follow the fast weights during that task.")
        self.decay, self.warmup, self.every_n_steps = float(decay), bool(warmup), every_n_steps
        self.continue_from, self.new_class_rows, self.fp32 = continue_from, new_class_rows, bool(fp32)
        self.ema: dict[str, Tensor] = {}
        self.num_updates = 0
        self.last_step = 0  # global step of the last update check in this task
        self.fast: dict[str, Tensor] | None = None
        self._new_rows: dict[str, Tensor] = {}
        self._swapped = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(decay=self.decay, every_n_steps=self.every_n_steps)

    # ---- task boundaries ---------------------------------------------------------------------------------
    def begin_task(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.fast is not None:  # continue_from: fast — the module holds the EMA since the last task end
            load_weights_(pl_module, self.fast)
            self.fast = None
        reshard_all(pl_module)  # FSDP2: the sharded parameters, not weights an evaluation left gathered
        params = trainable_parameters(pl_module)
        for name, p in params.items():  # the first task, or parameters that start training now
            if name not in self.ema:
                self.ema[name] = p.detach().to(dtype=self._dtype(p), copy=True)
        self.last_step = trainer.global_step

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        super().on_task_start(trainer, pl_module, task)
        self._new_rows = self._rows_of_new_classes(trainer, pl_module, task)  # recomputed on resume: no state

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.continue_from == "fast":
            self.fast = snapshot(trainable_parameters(pl_module))
        load_weights_(pl_module, self.ema)

    def _rows_of_new_classes(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo
                             ) -> dict[str, Tensor]:
        names = head_rows(pl_module)
        classes = pl_module.task_classes if isinstance(pl_module, HasTaskClasses) else None
        if self.new_class_rows != "fast" or not names or not classes:
            return {}
        if getattr(trainer.datamodule, "joint", False):
            new = sorted({c for cs in classes for c in cs})
        elif task.index < len(classes):
            seen = {c for cs in classes[: task.index] for c in cs}
            new = sorted(set(classes[task.index]) - seen)
        else:
            new = []
        if not new:
            return {}
        index = torch.tensor(new, dtype=torch.long, device=pl_module.device)
        return {name: index for name in names}

    # ---- the average ---------------------------------------------------------------------------------------
    def _dtype(self, p: Tensor) -> torch.dtype:
        return torch.float32 if self.fp32 and p.is_floating_point() else p.dtype

    def _decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self.last_step:  # a micro-batch of gradient accumulation: no optimizer step yet
            return
        self.last_step = step
        if step % self.every_n_steps:
            return
        params = trainable_parameters(pl_module)
        names = [k for k in params if k in self.ema]
        ema = self._ema_on(params)
        averages = [local(ema[k]) for k in names]  # this rank's shards under FSDP2
        current = [local(params[k].detach()) for k in names]
        current = [c if c.dtype == a.dtype else c.to(a.dtype) for c, a in zip(current, averages)]
        torch._foreach_lerp_(averages, current, 1.0 - self._decay())
        for name, index in self._new_rows.items():
            if name in ema:
                lo, hi = row_range(params[name])  # the rows of this rank's shard
                rows = index[(index >= lo) & (index < hi)] - lo
                p = local(params[name].detach())
                local(ema[name]).index_copy_(0, rows, p.index_select(0, rows).to(ema[name].dtype))
        self.num_updates += 1

    def _ema_on(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The EMA, moved next to the parameters and sharded like them (a loaded state arrives full, on the CPU)."""
        for name, t in self.ema.items():
            p = params.get(name)
            if p is not None:
                self.ema[name] = like_param(t, p)  # itself when already laid out like p
        return self.ema

    # ---- validation inside fit sees the EMA ---------------------------------------------------------------
    @torch.no_grad()
    def _swap(self, pl_module: pl.LightningModule) -> None:
        reshard_all(pl_module)  # FSDP2: the weights gathered before the swap must not serve after it
        params = trainable_parameters(pl_module)
        ema = self._ema_on(params)
        for name, p in params.items():
            if name in ema:
                mine, theirs = local(p), local(ema[name])
                fast = mine.detach().clone()
                mine.copy_(theirs)
                theirs.copy_(fast)
        self._swapped = not self._swapped

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self.ema:
            self._swap(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    # ---- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema": cpu_state(self.ema), "num_updates": self.num_updates,
                "last_step": self.last_step, "fast": cpu_state(self.fast)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.ema = dict(state_dict["ema"])
        self.num_updates, self.last_step = int(state_dict["num_updates"]), int(state_dict["last_step"])
        self.fast = None if state_dict["fast"] is None else dict(state_dict["fast"])
