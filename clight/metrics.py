"""Stateful bookkeeping of the continual-learning result matrix.

:class:`ResultMatrix` accumulates one row of per-task metrics per training stage and
computes the summary metrics of :mod:`clight.functional.metrics` from it.

Distributed training:
    ``ResultMatrix`` performs no communication. The values given to
    :meth:`ResultMatrix.add_row` and :meth:`ResultMatrix.set_initial` must already be
    reduced across ranks: every per-task metric comes from the task head's torchmetrics
    (:mod:`clight.heads`), whose ``compute()`` syncs across processes, so every rank holds
    the same matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clight.functional.metrics import SUMMARY_KEYS, summarize

__all__ = ["ResultMatrix"]

_STATE_VERSION = 1


def _nan_to_none(value: float | None) -> float | None:
    """Maps NaN and infinities to ``None`` so the value is strict-JSON serialisable."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class ResultMatrix:
    """Result matrix ``R`` of shape ``(stages, tasks)`` for one evaluation metric.

    Row ``i`` holds the evaluation of every task after training stage ``i``; column
    ``j`` belongs to ``task_names[j]``. Tasks that were not evaluated are NaN.

    All values must already be reduced across DDP ranks by the caller (see the module
    docstring), so every rank holds an identical matrix.

    Args:
        task_names: Names of the tasks, in column order. Must be unique and non-empty.
        metric: Name of the metric stored in the matrix, e.g. ``"acc"`` or ``"ppl"``.
        higher_is_better: Orientation of the metric (``False`` for perplexity or loss).

    Raises:
        ValueError: If ``task_names`` is empty, contains duplicates or non-strings.

    Example:
        >>> rm = ResultMatrix(["a", "b"])
        >>> rm.add_row("a", {"a": 0.9, "b": 0.1})
        >>> rm.add_row("b", {"a": 0.7, "b": 0.8})
        >>> round(rm.summary()["bwt"], 4)
        -0.2
    """

    def __init__(self, task_names: Sequence[str], metric: str = "acc", higher_is_better: bool = True) -> None:
        names = list(task_names)
        if not names:
            raise ValueError("task_names must contain at least one task name; got an empty list")
        bad = [name for name in names if not isinstance(name, str)]
        if bad:
            raise ValueError(f"task_names must be strings; got {bad!r}")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"task_names must be unique; duplicated: {duplicates}")
        self._task_names: list[str] = names
        self._index: dict[str, int] = {name: j for j, name in enumerate(names)}
        self._metric = str(metric)
        self._higher_is_better = bool(higher_is_better)
        self._stages: list[str] = []
        self._rows: list[list[float]] = []
        self._initial: list[float] | None = None

    # ------------------------------------------------------------------ properties

    @property
    def task_names(self) -> list[str]:
        """Task names in column order (a copy)."""
        return list(self._task_names)

    @property
    def metric(self) -> str:
        """Name of the stored metric."""
        return self._metric

    @property
    def higher_is_better(self) -> bool:
        """Whether larger values of the metric are better."""
        return self._higher_is_better

    @property
    def stages(self) -> list[str]:
        """Stage names in row order (a copy)."""
        return list(self._stages)

    @property
    def initial(self) -> list[float] | None:
        """Results of the model before any training, in column order, or ``None``."""
        return None if self._initial is None else list(self._initial)

    @property
    def matrix(self) -> torch.Tensor:
        """The result matrix as a float64 tensor of shape ``(num_stages, num_tasks)``."""
        if not self._rows:
            return torch.empty((0, len(self._task_names)), dtype=torch.float64)
        return torch.tensor(self._rows, dtype=torch.float64)

    def __len__(self) -> int:
        """Number of rows (training stages) recorded so far."""
        return len(self._rows)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tasks={self._task_names!r}, metric={self._metric!r}, "
            f"higher_is_better={self._higher_is_better}, stages={self._stages!r})"
        )

    # ------------------------------------------------------------------ updates

    def _to_row(self, values: Mapping[str, float], argument: str) -> list[float]:
        """Orders ``values`` by task, filling missing tasks with NaN."""
        unknown = [name for name in values if name not in self._index]
        if unknown:
            raise ValueError(
                f"{argument} contains unknown task name(s) {unknown}; known tasks: {self._task_names}"
            )
        row = [math.nan] * len(self._task_names)
        for name, value in values.items():
            row[self._index[name]] = float(value)
        return row

    def set_initial(self, values: Mapping[str, float]) -> None:
        """Records the results of the model before any training (used for FWT).

        Args:
            values: Per-task values keyed by task name, already reduced across ranks.
                Missing tasks are stored as NaN.

        Raises:
            ValueError: If ``values`` names a task that is not in ``task_names``.
        """
        self._initial = self._to_row(values, "values")

    def add_row(self, stage_name: str, values: Mapping[str, float]) -> None:
        """Appends the evaluation after one training stage.

        Args:
            stage_name: Name of the stage, usually the name of the task just trained.
            values: Per-task values keyed by task name, already reduced across ranks.
                Missing tasks are stored as NaN.

        Raises:
            ValueError: If ``values`` names a task that is not in ``task_names``.
        """
        row = self._to_row(values, "values")
        self._stages.append(str(stage_name))
        self._rows.append(row)

    # ------------------------------------------------------------------ summaries

    def summary(self) -> dict[str, float | None]:
        """Summary metrics of the current matrix, see :func:`clight.functional.summarize`.

        Returns:
            A dictionary with keys ``average``, ``bwt``, ``fwt``, ``forgetting`` and
            ``learning``. With no rows recorded yet every value is ``None``.
        """
        if not self._rows:
            return dict.fromkeys(SUMMARY_KEYS)
        return summarize(self.matrix, initial=self._initial, higher_is_better=self._higher_is_better)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-serialisable view for ``results.json``.

        Returns:
            A dictionary with keys ``metric``, ``higher_is_better``, ``tasks``,
            ``stages``, ``initial`` (list or ``None``), ``matrix`` (list of rows) and
            ``summary``. NaN and infinite values are mapped to ``None``.
        """
        return {
            "metric": self._metric,
            "higher_is_better": self._higher_is_better,
            "tasks": list(self._task_names),
            "stages": list(self._stages),
            "initial": None if self._initial is None else [_nan_to_none(v) for v in self._initial],
            "matrix": [[_nan_to_none(v) for v in row] for row in self._rows],
            "summary": {key: _nan_to_none(value) for key, value in self.summary().items()},
        }

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """State made of plain Python values only (strings, bools, lists of floats).

        The result round-trips through ``torch.save`` / ``torch.load(weights_only=True)``
        and can be stored inside a Lightning checkpoint. NaN entries are kept as floats.

        Returns:
            The state dictionary.
        """
        return {
            "version": _STATE_VERSION,
            "task_names": list(self._task_names),
            "metric": self._metric,
            "higher_is_better": self._higher_is_better,
            "stages": list(self._stages),
            "rows": [list(row) for row in self._rows],
            "initial": None if self._initial is None else list(self._initial),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores rows, stages and initial results from :meth:`state_dict`.

        Args:
            state: A dictionary produced by :meth:`state_dict`.

        Raises:
            ValueError: If the state was saved for different task names, another metric
                or orientation, or is malformed.
        """
        for key in ("task_names", "metric", "higher_is_better", "stages", "rows", "initial"):
            if key not in state:
                raise ValueError(f"state is missing key {key!r}; expected a ResultMatrix.state_dict()")
        if list(state["task_names"]) != self._task_names:
            raise ValueError(
                f"state was saved for tasks {list(state['task_names'])}, but this ResultMatrix has "
                f"tasks {self._task_names}"
            )
        if state["metric"] != self._metric or bool(state["higher_is_better"]) != self._higher_is_better:
            raise ValueError(
                f"state was saved for metric {state['metric']!r} (higher_is_better="
                f"{state['higher_is_better']}), but this ResultMatrix has metric {self._metric!r} "
                f"(higher_is_better={self._higher_is_better})"
            )
        stages = [str(name) for name in state["stages"]]
        rows = [[float(v) for v in row] for row in state["rows"]]
        width = len(self._task_names)
        if len(stages) != len(rows) or any(len(row) != width for row in rows):
            raise ValueError(
                f"state rows must have shape ({len(stages)}, {width}); got {len(rows)} rows of "
                f"lengths {[len(row) for row in rows]}"
            )
        initial = state["initial"]
        if initial is not None:
            initial = [float(v) for v in initial]
            if len(initial) != width:
                raise ValueError(f"state initial must have length {width}; got {len(initial)}")
        self._stages, self._rows, self._initial = stages, rows, initial

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ResultMatrix:
        """Builds a new ``ResultMatrix`` from :meth:`state_dict` output.

        Args:
            state: A dictionary produced by :meth:`state_dict`.

        Returns:
            The restored result matrix.
        """
        result = cls(state["task_names"], metric=state["metric"], higher_is_better=state["higher_is_better"])
        result.load_state_dict(state)
        return result
