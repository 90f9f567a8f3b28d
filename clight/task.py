"""Tasks of a continual stream."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    """One task (or domain) of a stream.

    Args:
        name: unique name, used in logs, folders and ``results.json``.
        train: local data file for training (JSONL, CSV or Parquet). Leave empty when the stream reads one
            file with a task column.
        test: local data file for evaluation.
        labels: the task's label set (classification). Empty: taken from the training data.
        max_epochs: optional per-task epoch budget (overrides ``trainer.max_epochs`` for this task).
        max_steps: optional per-task optimizer-step budget.
    """

    name: str
    train: str | None = None
    test: str | None = None
    labels: tuple[str, ...] = field(default_factory=tuple)
    max_epochs: int | None = None
    max_steps: int | None = None


@dataclass(frozen=True)
class TaskInfo:
    """What a callback learns about the task being trained: its index in the stream and its name."""

    index: int
    name: str
    num_tasks: int | None = None
