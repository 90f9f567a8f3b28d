"""StreamState: how far a stream run has got (tasks done, the result matrices so far, step offset, timings)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clight.metrics import ResultMatrix


@dataclass
class StreamState:
    """The progress of a stream run, saved in the stream checkpoint after every task.

    Args:
        matrices: one :class:`~clight.metrics.ResultMatrix` per evaluation metric, the headline metric first.
        probes: one matrix per metric of the probes (eval-only tasks; NaN where a probe's kind has no such metric).
        validation: one matrix per metric of ``matrices`` over the tasks' validation splits (``data.val_fraction``;
            empty without one), what ``clight tune`` reads.
        completed: training stages finished.
        initial_done: the evaluation before training (the ``initial`` row) is done.
        step_offset: optimizer steps of the finished stages (TensorBoard's step axis continues from here).
        timing: one entry per finished stage (train/eval seconds, optimizer steps, seconds per step).
    """

    matrices: dict[str, ResultMatrix]
    probes: dict[str, ResultMatrix] = field(default_factory=dict)
    validation: dict[str, ResultMatrix] = field(default_factory=dict)
    completed: int = 0
    initial_done: bool = False
    step_offset: int = 0
    timing: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def fresh(cls, task_names: Sequence[str], higher_is_better: Mapping[str, bool], probe_names: Sequence[str] = (),
              probe_higher_is_better: Mapping[str, bool] | None = None, validation: bool = False) -> StreamState:
        """An empty state with one matrix per metric of ``higher_is_better`` (in its order), one per metric of
        ``probe_higher_is_better`` over the probes, and with ``validation`` the validation matrices."""
        probes = {m: ResultMatrix(probe_names, metric=m, higher_is_better=hib)
                  for m, hib in (probe_higher_is_better or {}).items()} if probe_names else {}

        def matrices() -> dict[str, ResultMatrix]:
            return {m: ResultMatrix(task_names, metric=m, higher_is_better=hib) for m, hib in higher_is_better.items()}

        return cls(matrices(), probes, matrices() if validation else {})

    @property
    def metric_names(self) -> list[str]:
        return list(self.matrices)

    def add_row(self, stage: str, values: Mapping[str, Mapping[str, float]],
                validation: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """Record the evaluation after ``stage``: ``values[task or probe][metric]`` and, with a validation split,
        ``validation[task][metric]``."""
        for group, got in ((self.matrices, values), (self.probes, values), (self.validation, validation)):
            for metric, matrix in group.items():
                matrix.add_row(stage, {t: got[t][metric] for t in matrix.task_names})

    def set_initial(self, values: Mapping[str, Mapping[str, float]],
                    validation: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """Record the evaluation before training."""
        for group, got in ((self.matrices, values), (self.probes, values), (self.validation, validation)):
            for metric, matrix in group.items():
                matrix.set_initial({t: got[t][metric] for t in matrix.task_names})
        self.initial_done = True

    def state_dict(self) -> dict[str, Any]:
        """Plain values (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "completed": self.completed, "initial_done": self.initial_done, "step_offset": self.step_offset,
            "timing": list(self.timing), "matrices": {m: mat.state_dict() for m, mat in self.matrices.items()},
            "probes": {m: mat.state_dict() for m, mat in self.probes.items()},
            "validation": {m: mat.state_dict() for m, mat in self.validation.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, group in (("matrices", self.matrices), ("probes", self.probes), ("validation", self.validation)):
            for name, matrix in group.items():
                matrix.load_state_dict(state[key][name])
        self.completed, self.initial_done = int(state["completed"]), bool(state["initial_done"])
        self.step_offset, self.timing = int(state["step_offset"]), list(state["timing"])
