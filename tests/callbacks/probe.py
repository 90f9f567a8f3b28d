"""A minimal stateful ContinualCallback used to check the harness and the runner's callback plumbing."""

from __future__ import annotations

from typing import Any

import torch

from clight import ContinualCallback, TaskInfo
from clight.errors import ClightConfigError


class ProbeCallback(ContinualCallback):
    """Counts optimizer steps per task and snapshots the parameter sum at every task end."""

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ClightConfigError(f"`scale` must be > 0, got {scale}.")
        self.scale = scale
        self.steps: list[int] = []
        self.snapshots = torch.zeros(0, dtype=torch.float64)

    @property
    def state_key(self) -> str:
        return f"ProbeCallback[scale={self.scale}]"

    def on_task_start(self, trainer, pl_module, task: TaskInfo) -> None:
        while len(self.steps) <= task.index:
            self.steps.append(0)

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        self.steps[self.tasks_seen] += 1

    def on_task_end(self, trainer, pl_module, task: TaskInfo) -> None:
        total = sum(p.detach().double().sum() for p in pl_module.parameters()) * self.scale
        self.snapshots = torch.cat([self.snapshots, total.cpu().reshape(1)])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps": list(self.steps), "snapshots": self.snapshots.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.steps = list(state_dict["steps"])
        self.snapshots = state_dict["snapshots"].clone()
