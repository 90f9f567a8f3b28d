"""Comparing finished runs (``clight bench``, ``clight report``): load run folders, mean ± std over seeds, gap
closed, cost columns, a Markdown table."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY_KEYS: tuple[str, ...] = ("average", "bwt", "fwt", "forgetting")

_SUMMARY_SHORT = {"average": "avg", "bwt": "BWT", "fwt": "FWT", "forgetting": "forgetting"}

_COST_KEYS: tuple[str, ...] = (
    "optimizer_steps", "train_seconds", "seconds_per_step", "peak_rss_mb", "peak_gpu_memory_mb", "checkpoint_mb",
    "load_average", "cpu_over_wall",
)
_TIMING_KEYS = ("optimizer_steps", "train_seconds", "seconds_per_step", "load_average", "cpu_over_wall")
# Two cells' machine loads differ (so `× naive` mixes contention into the cost) when their load averages differ
# by more than this, or their CPU seconds per wall second by more than this share.
LOAD_AVERAGE_TOLERANCE = 0.5
CPU_OVER_WALL_TOLERANCE = 0.10
LOAD_NOTE = ("† the cells' machine load differed from naive's (load average or CPU/wall; see the `load` and "
             "`CPU/wall` columns), so `× naive` mixes contention into the cost.")

MeanStd = tuple[float | None, float | None]

def load_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a finished run directory: its ``results.json`` plus what the files beside it tell.

    Args:
        run_dir: A directory written by the stream runner (holding ``results.json``).

    Returns:
        The results mapping with three keys added: ``run_dir`` (str), ``checkpoint_mb`` (size of the stream
        checkpoint ``stream.pt`` in MiB, ``None`` if absent) and ``config_text`` (the resolved ``config.yaml``
        the CLI writes, ``None`` if absent).

    Raises:
        FileNotFoundError: If ``run_dir`` holds no ``results.json``.
    """
    path = Path(run_dir)
    results_file = path / "results.json"
    if not results_file.is_file():
        raise FileNotFoundError(f"{str(path)!r} holds no results.json (is it a finished clight run directory?)")
    data = json.loads(results_file.read_text(encoding="utf-8"))
    ckpt = path / "stream.pt"
    config = path / "config.yaml"
    data["run_dir"] = str(path)
    data["checkpoint_mb"] = ckpt.stat().st_size / 2**20 if ckpt.exists() else None
    data["config_text"] = config.read_text(encoding="utf-8") if config.exists() else None
    return data

def mean_std(values: Sequence[float | None]) -> MeanStd:
    """Mean and sample standard deviation of the values that are not ``None`` (std 0.0 for one value).

    Returns:
        ``(mean, std)``, or ``(None, None)`` when no value is given.
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std

def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One method's row of a comparison table: mean ± std over its runs (seeds).

    Args:
        runs: ``results.json`` mappings of the same method on the same stream (e.g. from :func:`load_run`).

    Returns:
        ``metric`` (the primary metric), ``higher_is_better``, ``seeds`` (number of runs), then ``(mean, std)``
        pairs under ``"<metric>/<key>"`` for every metric and ``key`` in :data:`SUMMARY_KEYS`, and under
        ``optimizer_steps``, ``train_seconds``, ``seconds_per_step``, ``peak_rss_mb``, ``peak_gpu_memory_mb``
        and ``checkpoint_mb`` (``(None, None)`` where no run recorded the value).

    Raises:
        ValueError: If ``runs`` is empty.
    """
    if not runs:
        raise ValueError("summarize_runs needs at least one run")
    first = runs[0]
    primary = first["primary_metric"]
    row: dict[str, Any] = {
        "metric": primary,
        "higher_is_better": bool(first["matrices"][primary].get("higher_is_better", True)),
        "seeds": len(runs),
    }
    for metric in first["summary"]:
        for key in SUMMARY_KEYS:
            row[f"{metric}/{key}"] = mean_std([(r["summary"].get(metric) or {}).get(key) for r in runs])
    for key in _COST_KEYS:
        if key in _TIMING_KEYS:
            row[key] = mean_std([(r.get("timing") or {}).get(key) for r in runs])
        else:
            row[key] = mean_std([r.get(key) for r in runs])
    return row

def compare_methods(
    rows: Mapping[str, Mapping[str, Any]], *, naive: str | None = "naive", joint: str | None = "joint"
) -> dict[str, dict[str, Any]]:
    """Adds the two cross-method columns to :func:`summarize_runs` rows.

    ``gap_closed`` = (m − naive) / (joint − naive) on the mean of the primary metric's final average (the same
    formula for lower-is-better metrics such as perplexity); ``step_ratio`` = mean seconds per optimizer step
    divided by naive's. Either is ``None`` when its reference method is absent or the value undefined.

    Args:
        rows: Method name → row, in display order.
        naive: Name of the lower-bound method (``None``: none).
        joint: Name of the upper-bound method (``None``: none).

    Returns:
        A new mapping, same order, each row a copy with ``gap_closed`` and ``step_ratio`` set.
    """
    naive_row = rows.get(naive) if naive else None
    joint_row = rows.get(joint) if joint else None
    out: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        new = dict(row)
        key = f"{row['metric']}/average"
        value = row.get(key, (None, None))[0]
        gap = None
        if naive_row is not None and joint_row is not None and value is not None:
            lo, hi = naive_row.get(key, (None, None))[0], joint_row.get(key, (None, None))[0]
            if lo is not None and hi is not None and hi != lo:
                gap = (value - lo) / (hi - lo)
        ratio = None
        if naive_row is not None and row["seconds_per_step"][0] and naive_row["seconds_per_step"][0]:
            ratio = row["seconds_per_step"][0] / naive_row["seconds_per_step"][0]
        new["gap_closed"], new["step_ratio"] = gap, ratio
        new["load_differs"] = naive_row is not None and loads_differ(row, naive_row)
        out[name] = new
    return out


def loads_differ(row: Mapping[str, Any], reference: Mapping[str, Any]) -> bool:
    """Whether two rows' cells ran under different machine loads (see :data:`LOAD_AVERAGE_TOLERANCE`)."""
    load, ref_load = (row.get("load_average") or (None,))[0], (reference.get("load_average") or (None,))[0]
    cpu, ref_cpu = (row.get("cpu_over_wall") or (None,))[0], (reference.get("cpu_over_wall") or (None,))[0]
    if load is not None and ref_load is not None and abs(load - ref_load) > LOAD_AVERAGE_TOLERANCE:
        return True
    return bool(cpu and ref_cpu and abs(cpu - ref_cpu) > CPU_OVER_WALL_TOLERANCE * max(cpu, ref_cpu))

def format_mean_std(value: MeanStd | Sequence[float | None] | float | None, digits: int = 3) -> str:
    """``"0.733"``, ``"0.733 ± 0.012"`` (std shown when non-zero), or ``"—"`` when missing."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    mean, std = value
    if mean is None or not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")

def comparison_columns(rows: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The columns of a comparison table, shared by the Markdown and HTML renderings.

    Args:
        rows: Output of :func:`compare_methods`.

    Returns:
        One dict per column: ``group`` (a metric name or ``"cost"``; ``""`` for the method and seeds columns),
        ``label`` (the flat Markdown header), ``short`` (the header under the group), ``key`` (row key) and
        ``digits``. Metrics come primary first; ``peak GPU MB`` only when some run recorded it.
    """
    first = next(iter(rows.values()))
    primary = first["metric"]
    metrics: list[str] = []
    for row in rows.values():
        for key in row:
            metric = key.split("/")[0] if "/" in key else None
            if metric is not None and metric not in metrics:
                metrics.append(metric)
    metrics.sort(key=lambda m: m != primary)
    digits = 3 if first.get("higher_is_better", True) else 2
    cols: list[dict[str, Any]] = [
        {"group": "", "label": "method", "short": "method", "key": None, "digits": 0},
        {"group": "", "label": "seeds", "short": "seeds", "key": "seeds", "digits": 0},
    ]
    for metric in metrics:
        for key in SUMMARY_KEYS:
            short = _SUMMARY_SHORT[key]
            cols.append({"group": metric, "label": f"{metric} {short}", "short": short, "key": f"{metric}/{key}",
                         "digits": digits})
    cost = [("gap closed", "gap_closed", 2), ("steps", "optimizer_steps", 0), ("train s", "train_seconds", 0),
            ("s/step", "seconds_per_step", 3), ("× naive", "step_ratio", 2), ("load", "load_average", 1),
            ("CPU/wall", "cpu_over_wall", 2), ("peak RSS MB", "peak_rss_mb", 0)]
    if any(r.get("peak_gpu_memory_mb", (None, None))[0] is not None for r in rows.values()):
        cost.append(("peak GPU MB", "peak_gpu_memory_mb", 0))
    cost.append(("ckpt MB", "checkpoint_mb", 1))
    cols += [{"group": "cost", "label": label, "short": label, "key": key, "digits": d} for label, key, d in cost]
    return cols

def comparison_cells(name: str, row: Mapping[str, Any], columns: Sequence[Mapping[str, Any]]) -> list[str]:
    """One table row as formatted strings, one per column of :func:`comparison_columns`."""
    cells = []
    for col in columns:
        if col["key"] is None:
            cells.append(name)
        elif col["key"] == "seeds":
            cells.append(str(row["seeds"]))
        else:
            text = format_mean_std(row.get(col["key"]), col["digits"])
            flag = col["key"] == "step_ratio" and row.get("load_differs") and text != "—"
            cells.append(text + " †" if flag else text)
    return cells

def comparison_markdown(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of :func:`compare_methods` rows."""
    columns = comparison_columns(rows)
    lines = ["| " + " | ".join(c["label"] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(comparison_cells(name, row, columns)) + " |" for name, row in rows.items()]
    if any(row.get("load_differs") and row.get("step_ratio") is not None for row in rows.values()):
        lines += ["", LOAD_NOTE]
    return "\n".join(lines)

def mean_matrix(runs: Sequence[Mapping[str, Any]], metric: str, *, key: str = "matrix") -> np.ndarray | None:
    """Element-wise mean over runs of one metric's matrix (``key="initial"``: the initial row, 1-D).

    Returns:
        A float array (NaN where no run has a value), or ``None`` when no run has ``key``.
    """
    arrays = []
    for run in runs:
        value = run["matrices"][metric].get(key)
        if value is not None:
            arrays.append(np.array(value, dtype=np.float64))
    if not arrays:
        return None
    stacked = np.stack(arrays)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(stacked, axis=0)
