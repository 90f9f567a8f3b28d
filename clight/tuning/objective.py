"""Objectives of ``clight tune``: a number from the *validation* matrix of a run, never from the test matrix."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from clight.errors import ClightConfigError

Objective = Literal["average", "average_minus_forgetting", "bwt"]
OBJECTIVES: tuple[str, ...] = ("average", "average_minus_forgetting", "bwt")


def objective_value(summary: Mapping[str, float | None], objective: str, higher_is_better: bool) -> float:
    """The value to *maximize* from a validation summary (``average``, ``bwt``, ``forgetting``, ...).

    ``average``: the final average of the metric; ``average_minus_forgetting``: that minus the average forgetting
    (forgetting counts in the metric's units); ``bwt``: backward transfer. A lower-is-better metric (perplexity) is
    negated, so that larger is always better. NaN when the summary lacks a term (e.g. forgetting of one task)."""
    if objective not in OBJECTIVES:
        raise ClightConfigError(f"`--objective` must be one of {list(OBJECTIVES)}, got {objective!r}.")
    average = summary.get("average")
    if average is None:
        return math.nan
    sign = 1.0 if higher_is_better else -1.0
    if objective == "average":
        return sign * average
    if objective == "bwt":
        bwt = summary.get("bwt")
        return math.nan if bwt is None else sign * bwt
    forgetting = summary.get("forgetting") or 0.0  # one task: nothing forgotten yet
    return sign * average - forgetting


def validation_summary(results: Mapping[str, Any], metric: str | None) -> tuple[str, Mapping[str, Any], bool]:
    """``(metric, summary, higher_is_better)`` of a ``results.json``'s validation matrix; a run without one (no
    ``data.val_fraction``) is refused: tuning on test data would make the test numbers meaningless."""
    validation = results.get("validation") or {}
    matrices = validation.get("matrices") or {}
    if not matrices:
        raise ClightConfigError(
            "`clight tune`: the trial's run has no validation matrix; tuning reads validation data only. Give the "
            "config `data.init_args.val_fraction: 0.2` (a seeded share of each task's training data)."
        )
    name = metric or results.get("primary_metric")
    if name not in matrices:
        raise ClightConfigError(f"`--metric`: {name!r} is not a metric of the run ({sorted(matrices)}).")
    return name, validation["summary"][name], bool(matrices[name].get("higher_is_better", True))
