"""Reporting helpers: result-matrix heatmaps, ``results.json``, a text summary, and the pieces that compare
runs (mean ± std over seeds, gap closed, per-task curves) for ``tools/bench.py`` and ``tools/report.py``.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly,
never through ``pyplot``, so no global GUI/backend state is touched and the functions
are safe to call from headless training processes.

These helpers do no distributed coordination: call them on rank 0 only
(e.g. under ``trainer.is_global_zero``).
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "compare_methods",
    "comparison_cells",
    "comparison_columns",
    "comparison_markdown",
    "figure_to_chw_uint8",
    "figure_to_png_bytes",
    "format_mean_std",
    "format_summary_table",
    "load_run",
    "mean_matrix",
    "mean_std",
    "render_heatmap",
    "render_task_curves",
    "save_figure_png",
    "summarize_runs",
    "to_json_safe",
    "write_results_json",
]

_SUMMARY_LABELS: tuple[tuple[str, str], ...] = (
    ("average", "average (final row)"),
    ("bwt", "backward transfer"),
    ("fwt", "forward transfer"),
    ("forgetting", "forgetting"),
    ("learning", "learning (diagonal)"),
)


# --------------------------------------------------------------------------- heatmap


def _as_numpy_matrix(matrix: Any) -> np.ndarray:
    """Converts a tensor / array / nested list (``None`` allowed) to a 2-D float64 array."""
    if isinstance(matrix, torch.Tensor):
        arr = matrix.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            arr = np.array(matrix, dtype=np.float64)  # None -> nan
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"matrix must be a rectangular array of numbers; could not convert it: {err}"
            ) from err
    if arr.ndim != 2:
        raise ValueError(f"matrix must be 2-D of shape (stages, tasks); got shape {arr.shape}")
    return arr


def _figure_size(num_rows: int, num_cols: int) -> tuple[float, float]:
    """Figure size in inches, growing with the matrix while staying readable."""
    width = min(3.0 + 0.85 * num_cols, 40.0)
    height = min(2.2 + 0.55 * num_rows, 30.0)
    return max(width, 5.0), max(height, 3.5)


def _annotation_fontsize(num_rows: int, num_cols: int) -> float:
    """Cell annotation font size, shrinking slowly for large matrices."""
    return float(max(6, 11 - max(num_rows, num_cols) // 4))


def _annotate_cells(ax: Any, values: np.ndarray, image: Any) -> None:
    """Writes each finite value with 2 decimals; dark cells get white text."""
    fontsize = _annotation_fontsize(*values.shape)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            value = values[i, j]
            if not np.isfinite(value):
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            luminance = 0.299 * red + 0.587 * green + 0.114 * blue
            color = "black" if luminance > 0.5 else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=color, fontsize=fontsize)


def render_heatmap(
    matrix: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    metric: str,
    higher_is_better: bool,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """Renders a result matrix as an annotated heatmap.

    Cells show values with two decimals; NaN/``None`` cells are left blank (light grey).
    The colormap is viridis, reversed for lower-is-better metrics so that "good" is
    always yellow. Column labels are rotated, and the figure grows with the number of
    tasks and stages.

    Args:
        matrix: Result matrix of shape ``(stages, tasks)``: tensor, array or nested list
            (``None`` entries are treated as NaN).
        row_labels: One label per row (stage names).
        col_labels: One label per column (task names).
        title: Figure title.
        metric: Metric name, used for the colorbar label.
        higher_is_better: Orientation of the metric; selects the colormap direction.
        vmin: Lower end of the colour scale (default: the smallest finite value); give the same ``vmin`` and
            ``vmax`` to heatmaps shown side by side so that one colour means one value.
        vmax: Upper end of the colour scale (default: the largest finite value).

    Returns:
        A :class:`~matplotlib.figure.Figure` attached to an Agg canvas (no pyplot).

    Raises:
        ValueError: If ``matrix`` is not 2-D, is empty, or the label counts do not match
            its shape.
    """
    values = _as_numpy_matrix(matrix)
    num_rows, num_cols = values.shape
    if num_rows == 0 or num_cols == 0:
        raise ValueError(f"matrix must have at least one row and one column; got shape {values.shape}")
    if len(row_labels) != num_rows:
        raise ValueError(f"row_labels must have {num_rows} entries (matrix rows); got {len(row_labels)}")
    if len(col_labels) != num_cols:
        raise ValueError(f"col_labels must have {num_cols} entries (matrix columns); got {len(col_labels)}")

    fig = Figure(figsize=_figure_size(num_rows, num_cols))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    cmap = matplotlib.colormaps["viridis" if higher_is_better else "viridis_r"].with_extremes(bad="#eeeeee")
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    vmin, vmax = lo if vmin is None else vmin, hi if vmax is None else vmax
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")

    _annotate_cells(ax, values, image)
    ax.set_xticks(range(num_cols), labels=[str(label) for label in col_labels])
    ax.set_yticks(range(num_rows), labels=[str(label) for label in row_labels])
    ax.tick_params(axis="x", labelrotation=40)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training stage")
    direction = "higher is better" if higher_is_better else "lower is better"
    ax.set_title(title)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label(f"{metric} ({direction})")
    fig.tight_layout()
    return fig


def save_figure_png(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Saves ``fig`` as a PNG file, creating parent directories.

    Args:
        fig: The figure to save.
        path: Destination file path.
        dpi: Resolution in dots per inch.

    Returns:
        The destination path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(target, format="png", dpi=dpi)
    return target


def figure_to_chw_uint8(fig: Figure) -> np.ndarray:
    """Rasterises ``fig`` to an RGB array for TensorBoard's ``add_image``.

    Args:
        fig: The figure to rasterise (re-attached to an Agg canvas if needed).

    Returns:
        A C-contiguous ``uint8`` array of shape ``(3, H, W)`` (``dataformats="CHW"``,
        TensorBoard's default).
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1)).astype(np.uint8, copy=False)


# --------------------------------------------------------------------------- results.json


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


# --------------------------------------------------------------------------- text table


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


# --------------------------------------------------------------------------- comparing runs (bench, report)

SUMMARY_KEYS: tuple[str, ...] = ("average", "bwt", "fwt", "forgetting")
_SUMMARY_SHORT = {"average": "avg", "bwt": "BWT", "fwt": "FWT", "forgetting": "forgetting"}
_COST_KEYS: tuple[str, ...] = (
    "optimizer_steps", "train_seconds", "seconds_per_step", "peak_rss_mb", "peak_gpu_memory_mb", "checkpoint_mb",
)

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
        if key in ("optimizer_steps", "train_seconds", "seconds_per_step"):
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
        out[name] = new
    return out


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
            ("s/step", "seconds_per_step", 3), ("× naive", "step_ratio", 2), ("peak RSS MB", "peak_rss_mb", 0)]
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
            cells.append(format_mean_std(row.get(col["key"]), col["digits"]))
    return cells


def comparison_markdown(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of :func:`compare_methods` rows."""
    columns = comparison_columns(rows)
    lines = ["| " + " | ".join(c["label"] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(comparison_cells(name, row, columns)) + " |" for name, row in rows.items()]
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


def render_task_curves(
    matrix: Any,
    stages: Sequence[str],
    tasks: Sequence[str],
    *,
    title: str,
    metric: str,
    higher_is_better: bool,
    initial: Any = None,
    spread: Any = None,
) -> Figure:
    """Plots each task's metric across the training stages: one line per task (a row-wise view of the matrix).

    The point where a task is trained (its own stage) is drawn as a larger filled marker. Lower-is-better
    metrics (perplexity) use a logarithmic y axis, since a randomly initialised model starts orders of
    magnitude higher.

    Args:
        matrix: ``(stages, tasks)`` values (tensor, array or nested list; ``None``/NaN points are skipped).
        stages: One label per stage (row).
        tasks: One label per task (column).
        title: Figure title.
        metric: y-axis label.
        higher_is_better: Orientation of the metric (selects the y scale).
        initial: Optional ``(tasks,)`` values before any training, drawn as the first x position ``initial``.
        spread: Optional ``(stages, tasks)`` standard deviations over seeds, drawn as a shaded band.

    Returns:
        A :class:`~matplotlib.figure.Figure` attached to an Agg canvas (no pyplot).

    Raises:
        ValueError: If the shapes and label counts disagree.
    """
    values = _as_numpy_matrix(matrix)
    if values.shape != (len(stages), len(tasks)):
        raise ValueError(f"matrix must have shape ({len(stages)}, {len(tasks)}) (stages, tasks); got {values.shape}")
    labels = [str(s) for s in stages]
    std = _as_numpy_matrix(spread) if spread is not None else None
    if initial is not None:
        init = np.array(initial, dtype=np.float64).reshape(1, -1)
        if init.shape[1] != len(tasks):
            raise ValueError(f"initial must have {len(tasks)} entries (one per task); got {init.shape[1]}")
        values = np.concatenate([init, values])
        labels = ["initial", *labels]
        if std is not None:
            std = np.concatenate([np.zeros_like(init), std])
    x = np.arange(len(labels))
    width = min(max(5.5, 1.6 + 0.75 * len(labels)), 30.0)
    fig = Figure(figsize=(width, 3.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = matplotlib.colormaps["tab10" if len(tasks) <= 10 else "tab20"]
    offset = 1 if initial is not None else 0
    sequential = labels[offset:] == [str(t) for t in tasks]
    for j, task in enumerate(tasks):
        color = colors(j % colors.N)
        y = values[:, j]
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], marker="o", markersize=3.5, linewidth=1.6, color=color, label=str(task))
        if std is not None:
            lo, hi = y - std[:, j], y + std[:, j]
            ax.fill_between(x, lo, hi, where=ok & np.isfinite(lo), color=color, alpha=0.15, linewidth=0)
        own = offset + j  # a sequential stream trains task j at stage j
        if sequential and np.isfinite(values[own, j]):
            ax.plot([own], [values[own, j]], marker="o", markersize=8, color=color, markeredgecolor="black")
    if not higher_is_better and np.nanmin(np.where(np.isfinite(values), values, np.nan), initial=np.inf) > 0:
        ax.set_yscale("log")
    ax.set_xticks(x, labels=labels)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
    ax.set_xlabel("after training stage")
    direction = "higher is better" if higher_is_better else "lower is better"
    ax.set_ylabel(f"{metric} ({direction})")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="task",
              title_fontsize=8)
    fig.tight_layout()
    return fig


def figure_to_png_bytes(fig: Figure, *, dpi: int = 96, palette: bool = True) -> bytes:
    """Encodes ``fig`` as PNG bytes, without the ``Software`` metadata.

    Args:
        fig: The figure.
        dpi: Resolution in dots per inch.
        palette: Quantise to a 256-colour palette (about a third of the size; plots have few colours), which
            keeps reports that inline many figures small.
    """
    from PIL import Image  # matplotlib's own dependency

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    if not palette:
        return buffer.getvalue()
    buffer.seek(0)
    with Image.open(buffer) as image:
        quantized = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    quantized.save(out, format="PNG", optimize=True)
    return out.getvalue()
