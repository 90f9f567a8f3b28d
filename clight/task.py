"""Tasks of a continual stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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


ProbeKind = Literal["multiple_choice", "generation", "perplexity"]


@dataclass(frozen=True)
class Probe:
    """An eval-only task that measures a general ability: evaluated before training and after every task, never
    trained on; ``results.json`` reports its retention (final against initial).

    Args:
        name: unique name, used in logs and ``results.json``.
        file: local data file (JSONL, CSV or Parquet). Rows whose task column holds ``name`` are the probe's; a
            file without that column is the probe's in full.
        kind: ``multiple_choice`` (``prompt``, ``choices``, ``answer`` index: the choice with the highest
            log-likelihood as a continuation of the prompt), ``generation`` (``prompt``, ``response``: greedy
            answers, exact match and ROUGE-L) or ``perplexity`` (``text``). Empty: from the file's columns.
        max_examples: evaluate at most this many of its rows (a fixed sample); empty: the stream's
            ``eval_max_examples``.
    """

    name: str
    file: str
    kind: ProbeKind | None = None
    max_examples: int | None = None
