"""Heatmaps of result matrices, as PNG files and as CHW images for TensorBoard.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never through ``pyplot``, so
no global backend state is touched and the functions are safe in headless training processes (call them on rank 0).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def as_numpy_matrix(matrix: Any) -> np.ndarray:
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
    values = as_numpy_matrix(matrix)
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
