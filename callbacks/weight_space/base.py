"""The base of the weight-space callbacks (EMAWeights, WeightInterpolation, TaskVectorMerge): the trainable
parameters tracked by name, snapshots of them as CPU tensors, and a once-per-task start that a resume skips."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from clight.callback import ContinualCallback
from clight.sharding import gather_full, is_dtensor, local, local_rows, reshard_all
from clight.task import TaskInfo


def snapshot(params: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Detached full CPU copies (optionally cast to ``dtype``); FSDP2 shards are gathered (a collective)."""
    return {k: gather_full(p.detach()).to("cpu", dtype=dtype or p.dtype, copy=True) for k, p in params.items()}


@torch.no_grad()
def load_weights_(pl_module: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Copy ``weights`` into the module's parameters of the same names, in place (the optimizer and a DDP wrap
    keep referring to the same tensors). Under FSDP2 each rank copies into its shard, from a full tensor's rows
    or from a weight sharded like the parameter."""
    reshard_all(pl_module)
    params = dict(pl_module.named_parameters())
    names = [k for k in weights if k in params]
    if names:
        targets = [local(params[k].data) for k in names]
        sources = [local(weights[k]) if is_dtensor(weights[k]) else local_rows(weights[k], params[k]) for k in names]
        torch._foreach_copy_(targets, [w.to(device=t.device, dtype=t.dtype) for w, t in zip(sources, targets)])


class WeightSpaceCallback(ContinualCallback):
    """Base of callbacks that keep copies of the trainable weights and rewrite them at task boundaries.

    :meth:`begin_task` runs once per task, at its first start: a task resumed from Lightning's mid-task
    checkpoint restores this callback's state (``started_task`` included) before ``on_task_start`` and skips it,
    while a task restarted from the stream checkpoint (killed before its first mid-task checkpoint) runs it again
    from the same weights. Tracked parameters are those with ``requires_grad``, by name; copies live on the CPU
    in the state (``torch.load(weights_only=True)`` loads them). Parameters are identical on every DDP rank, so
    every rank computes the same copies. Sharded strategies are refused unless a subclass says otherwise
    (``EMAWeights`` does): the helpers here gather FSDP2 shards for snapshots and write into each rank's shard,
    but a technique must also do its own arithmetic on shards.
    """

    sharded_reason = ("it copies and rewrites whole parameters by name, and a sharded strategy gives each rank only "
                      "a slice of them")

    def __init__(self) -> None:
        super().__init__()
        self.started_task = -1

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.started_task != task.index:
            self.begin_task(trainer, pl_module, task)
            self.started_task = task.index

    def begin_task(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        """Called once when ``task`` first starts (not again when it resumes mid-way)."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "started_task": self.started_task}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.started_task = int(state_dict["started_task"])


def cpu_state(weights: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
    """Full CPU copies for a state dict (``None`` stays ``None``); FSDP2 shards are gathered (a collective)."""
    return None if weights is None else {k: gather_full(v.detach()).to("cpu", copy=True) for k, v in weights.items()}
