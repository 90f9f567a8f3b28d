"""Reporting: one run's results (``results.json``, heatmaps, text table) and comparisons of many runs (tables,
curves, the self-contained HTML page of ``clight report``)."""

from clight.reporting.comparison import (
    compare_methods,
    comparison_cells,
    comparison_columns,
    comparison_markdown,
    format_mean_std,
    load_run,
    mean_matrix,
    mean_std,
    summarize_runs,
)
from clight.reporting.curves import figure_to_png_bytes, render_task_curves
from clight.reporting.heatmap import as_numpy_matrix, figure_to_chw_uint8, render_heatmap, save_figure_png
from clight.reporting.summary import format_summary_table, to_json_safe, write_results_json

__all__ = [
    "as_numpy_matrix", "compare_methods", "comparison_cells", "comparison_columns", "comparison_markdown",
    "figure_to_chw_uint8", "figure_to_png_bytes", "format_mean_std", "format_summary_table", "load_run",
    "mean_matrix", "mean_std", "render_heatmap", "render_task_curves", "save_figure_png", "summarize_runs",
    "to_json_safe", "write_results_json",
]
