"""Per-task metric curves across the training stages, and PNG encoding of figures for inlined reports.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never through ``pyplot``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clight.reporting.heatmap import as_numpy_matrix


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
    values = as_numpy_matrix(matrix)
    if values.shape != (len(stages), len(tasks)):
        raise ValueError(f"matrix must have shape ({len(stages)}, {len(tasks)}) (stages, tasks); got {values.shape}")
    labels = [str(s) for s in stages]
    std = as_numpy_matrix(spread) if spread is not None else None
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
