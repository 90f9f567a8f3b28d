"""The teacher of the distillation callbacks: a snapshot of the trainable parameters, run through the student
module (swapped in with ``functional_call``, or shard by shard under FSDP2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call

from clight.callback import ContinualCallback, is_sharded
from clight.callbacks._utils import check_arg, eval_mode, trainable_parameters
from clight.contracts import ContinualModel
from clight.errors import ClightConfigError
from clight.sharding import gather_full, is_dtensor, like_param, local, reshard_all
from clight.task import TaskInfo

TeacherDevice = Literal["same", "cpu"]


class TeacherCallback(ContinualCallback):
    """Base of the distillation callbacks: at every task end, snapshot the trainable parameters as the teacher.

    The teacher is *not* a second module: its forward is the student module run through
    :func:`torch.func.functional_call` with the snapshot in place of the trainable parameters (frozen ones are
    shared, so a LoRA run keeps only the adapter and the head twice, not the base), in eval mode (dropout off)
    and without gradients. ``teacher_device: cpu`` keeps the snapshot in host memory and copies it over for
    each step's teacher forward (less accelerator memory, one host-to-device copy per step). Weights are
    identical on every rank, so the snapshot is too.

    Under FSDP2 the snapshot is sharded like the parameters (each rank keeps its shard). FSDP all-gathers a
    block's weights from the shards just before running it, so ``functional_call`` cannot swap the teacher in.
    Instead the teacher's shards are copied into the parameters' shards for the no-grad teacher forward, and
    the student's are copied back afterwards, with every FSDP unit resharded around that forward. The
    student's backward then all-gathers the student's weights again (``tests/test_sharded.py`` compares the
    result with DDP). This costs two copies of the local shards per step and a transient buffer of their size.
    """

    term_name = "distill"
    module_contracts = (ContinualModel,)
    supports_sharded = True

    def __init__(self, *, weight: float, teacher_device: TeacherDevice) -> None:
        super().__init__()
        check_arg(teacher_device in ("same", "cpu"), "teacher_device", "`same` or `cpu`", teacher_device,
                  "`same` keeps the teacher on the model's device, `cpu` offloads it.")
        self.weight, self.teacher_device = float(weight), teacher_device
        self.teacher: dict[str, Tensor] = {}
        self.teacher_tasks = 0  # tasks the teacher was trained on

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.teacher_device == "cpu" and is_sharded(trainer.strategy):
            raise ClightConfigError(
                f"`{type(self).__name__}`: `teacher_device: cpu` under `{type(trainer.strategy).__name__}`; a sharded "
                "teacher stays with its shards (each rank keeps 1/world of it). Use `teacher_device: same`.")

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        device = pl_module.device if self.teacher_device == "same" else torch.device("cpu")
        params = trainable_parameters(pl_module)
        # a loaded snapshot is full CPU tensors: sharded like its parameter under FSDP2 (a collective)
        self.teacher = {n: like_param(t, params[n]) if is_dtensor(params.get(n)) else t.to(device)
                        for n, t in self.teacher.items()}

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        device = pl_module.device if self.teacher_device == "same" else torch.device("cpu")
        self.teacher = {n: p.detach().clone() if is_dtensor(p) else p.detach().to(device, copy=True)
                        for n, p in trainable_parameters(pl_module).items()}
        self.teacher_tasks = task.index + 1

    @torch.no_grad()
    def teacher_forward(self, module: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The teacher's outputs on ``batch``: ``module`` with the snapshot swapped in, eval mode, no grad."""
        first = next(iter(self.teacher.values()))
        with eval_mode(module):
            if is_dtensor(first):
                return self._sharded_teacher_forward(module, batch)
            target = module.device if hasattr(module, "device") else first.device
            weights = (self.teacher if first.device == target
                       else {n: t.to(target, non_blocking=True) for n, t in self.teacher.items()})
            return functional_call(module, weights, (batch,), strict=False)

    def _sharded_teacher_forward(self, module: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """FSDP2: the teacher's shards copied into the parameters' for one forward, then the student's back."""
        reshard_all(module)  # drop the student's gathered weights: while gathered, a unit's parameters are full
        params = dict(module.named_parameters())
        shards = [local(params[n]) for n in self.teacher]
        student = [torch.empty_like(t) for t in shards]
        torch._foreach_copy_(student, shards)
        torch._foreach_copy_(shards, [local(t) for t in self.teacher.values()])
        try:
            return module(batch)
        finally:
            reshard_all(module)  # drop the teacher's; the student's backward all-gathers the student's again
            torch._foreach_copy_(shards, student)

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return (self.term_name,)

    def loss_terms(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                   outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {self.term_name: self.weight * self.distillation_loss(pl_module, batch, outputs)}

    def distillation_loss(self, module: pl.LightningModule, batch: Mapping[str, Tensor],
                          outputs: Mapping[str, Tensor]) -> Tensor:
        """The unweighted distillation loss of a training batch (zero while there is no teacher)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),  # gathered into full tensors under FSDP2 (a collective)
                "teacher": {n: gather_full(t.detach()).cpu().clone() for n, t in self.teacher.items()},
                "teacher_tasks": self.teacher_tasks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.teacher = dict(state_dict["teacher"])  # moved to its device when the next task starts
        self.teacher_tasks = int(state_dict["teacher_tasks"])
