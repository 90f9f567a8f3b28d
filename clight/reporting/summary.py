"""One run's ``results.json`` (strict JSON: NaN becomes null) and its text summary table."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_SUMMARY_LABELS: tuple[tuple[str, str], ...] = (
    ("average", "average (final row)"),
    ("bwt", "backward transfer"),
    ("fwt", "forward transfer"),
    ("forgetting", "forgetting"),
    ("learning", "learning (diagonal)"),
)

def to_json_safe(value: Any) -> Any:
    """Recursively converts ``value`` to strict-JSON-compatible Python values.

    NaN and infinities become ``None``; tensors and numpy arrays/scalars become lists
    and Python numbers; tuples become lists; :class:`~pathlib.Path` becomes ``str``.
    Mapping keys are kept (``json`` turns int/float/bool keys into strings).

    Args:
        value: Any nesting of dicts, lists, tuples, numbers, strings, tensors or arrays.

    Returns:
        The converted value.
    """
    if isinstance(value, Mapping):
        return {key: to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return to_json_safe(value.tolist())
    if isinstance(value, np.generic):
        return to_json_safe(value.item())
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value

def write_results_json(path: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """Atomically writes ``results`` as strict JSON (indent 2, key order preserved).

    The data are written to a temporary file in the destination directory, flushed and
    fsynced, then moved into place with :func:`os.replace`, so readers never see a
    partially written file. NaN/infinite values are written as ``null``.

    Args:
        path: Destination file path; parent directories are created.
        results: The results mapping, e.g. containing ``ResultMatrix.to_dict()``.

    Returns:
        The destination path.

    Raises:
        TypeError: If ``results`` contains values that JSON cannot encode.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_json_safe(results), indent=2, sort_keys=False, allow_nan=False)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target

def _format_value(value: Any, decimals: int = 4) -> str:
    """Formats a number with ``decimals`` decimals; ``-`` for missing/non-finite values."""
    if value is None:
        return "-"
    number = float(value)
    if not math.isfinite(number):
        return "-"
    return f"{number:.{decimals}f}"

def _table_lines(labels: Sequence[str], rows: Sequence[Sequence[Any]], tasks: Sequence[str]) -> list[str]:
    """Fixed-width lines: one header plus one line per labelled row."""
    label_width = max([len("stage"), *(len(label) for label in labels)])
    widths = [max(len(task), 8) for task in tasks]
    header = "  ".join(
        [f"{'stage':<{label_width}}", *(f"{task:>{w}}" for task, w in zip(tasks, widths, strict=True))]
    )
    lines = [header, "-" * len(header)]
    for label, row in zip(labels, rows, strict=True):
        cells = [f"{_format_value(v):>{w}}" for v, w in zip(row, widths, strict=True)]
        lines.append("  ".join([f"{label:<{label_width}}", *cells]))
    return lines

def format_summary_table(results: Mapping[str, Any]) -> str:
    """Formats a result matrix and its summary as a fixed-width text table.

    Args:
        results: A mapping shaped like ``ResultMatrix.to_dict()``: required keys
            ``tasks``, ``stages`` and ``matrix``; optional ``metric``,
            ``higher_is_better``, ``initial`` and ``summary``.

    Returns:
        A multi-line string: a title line, the table (rows = stages, preceded by an
        ``(initial)`` row when available, columns = tasks) and one line per summary
        metric (``n/a`` when undefined).

    Raises:
        ValueError: If a required key is missing or the matrix does not match the task
            and stage lists.
    """
    missing = [key for key in ("tasks", "stages", "matrix") if key not in results]
    if missing:
        raise ValueError(f"results is missing key(s) {missing}; expected ResultMatrix.to_dict() output")
    tasks = [str(task) for task in results["tasks"]]
    stages = [str(stage) for stage in results["stages"]]
    matrix = [list(row) for row in results["matrix"]]
    if len(matrix) != len(stages) or any(len(row) != len(tasks) for row in matrix):
        raise ValueError(
            f"results['matrix'] must have shape ({len(stages)}, {len(tasks)}) (stages, tasks); "
            f"got {len(matrix)} rows of lengths {[len(row) for row in matrix]}"
        )
    labels, rows = list(stages), list(matrix)
    if results.get("initial") is not None:
        labels.insert(0, "(initial)")
        rows.insert(0, list(results["initial"]))

    metric = results.get("metric", "metric")
    direction = "higher is better" if results.get("higher_is_better", True) else "lower is better"
    lines = [f"Result matrix: {metric} ({direction})", *_table_lines(labels, rows, tasks)]
    summary = results.get("summary") or {}
    if summary:
        lines.append("")
        width = max(len(text) for _, text in _SUMMARY_LABELS)
        for key, text in _SUMMARY_LABELS:
            value = summary.get(key)
            shown = "n/a" if value is None else _format_value(value)
            lines.append(f"{text:<{width}}  {shown:>10}")
    return "\n".join(lines)
