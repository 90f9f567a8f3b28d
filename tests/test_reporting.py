"""Tests for clight.reporting."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clight.metrics import ResultMatrix
from clight.reporting import (
    figure_to_chw_uint8,
    format_summary_table,
    render_heatmap,
    save_figure_png,
    to_json_safe,
    write_results_json,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = ["sst2", "rte", "boolq"]
ACC = [
    [0.9, 0.2, 0.1],
    [0.7, 0.8, math.nan],
    [0.6, 0.7, 0.9],
]


def make_results() -> dict:
    rm = ResultMatrix(TASKS, metric="acc")
    rm.set_initial({"sst2": 0.5, "rte": 0.5, "boolq": 0.5})
    for stage, row in zip(TASKS, ACC, strict=True):
        rm.add_row(stage, {t: v for t, v in zip(TASKS, row, strict=True) if not math.isnan(v)})
    return rm.to_dict()


def heatmap(matrix=ACC, higher_is_better: bool = True, tasks=TASKS) -> Figure:
    return render_heatmap(
        matrix,
        row_labels=[f"after {t}" for t in tasks][: len(matrix)],
        col_labels=tasks,
        title="Result matrix",
        metric="acc" if higher_is_better else "ppl",
        higher_is_better=higher_is_better,
    )


# --------------------------------------------------------------------------- heatmap


def test_heatmap_png(tmp_path) -> None:
    fig = heatmap()
    assert isinstance(fig, Figure)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    path = save_figure_png(fig, tmp_path / "nested" / "heatmap.png")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024


def test_heatmap_annotations_blank_for_nan() -> None:
    fig = heatmap()
    texts = [t.get_text() for t in fig.axes[0].texts]
    # 9 cells, one NaN -> 8 annotations with 2 decimals
    assert len(texts) == 8
    assert "0.90" in texts and "0.20" in texts
    assert "nan" not in " ".join(texts).lower()


def test_heatmap_colormap_direction() -> None:
    higher = heatmap(higher_is_better=True).axes[0].images[0].cmap.name
    lower = heatmap(higher_is_better=False).axes[0].images[0].cmap.name
    assert higher == "viridis"
    assert lower == "viridis_r"


def test_heatmap_accepts_tensor_none_and_constant(tmp_path) -> None:
    fig = heatmap(torch.tensor([[2.0, 2.0, 2.0]]), higher_is_better=False)
    save_figure_png(fig, tmp_path / "constant.png")
    fig = heatmap([[None, None, None]])  # all missing
    save_figure_png(fig, tmp_path / "empty_cells.png")
    assert len(fig.axes[0].texts) == 0


def test_heatmap_size_grows_with_tasks() -> None:
    many = [f"task_{i}" for i in range(12)]
    small = heatmap()
    large = heatmap(np.random.default_rng(0).random((12, 12)), tasks=many)
    assert large.get_figwidth() > small.get_figwidth()
    assert large.get_figheight() > small.get_figheight()


def test_heatmap_validation() -> None:
    with pytest.raises(ValueError, match=r"col_labels must have 3 entries"):
        render_heatmap(ACC, ["a", "b", "c"], ["x"], title="t", metric="acc", higher_is_better=True)
    with pytest.raises(ValueError, match=r"row_labels must have 3 entries"):
        render_heatmap(ACC, ["a"], TASKS, title="t", metric="acc", higher_is_better=True)
    with pytest.raises(ValueError, match=r"matrix must be 2-D"):
        render_heatmap([0.1, 0.2], ["a"], ["x", "y"], title="t", metric="acc", higher_is_better=True)
    with pytest.raises(ValueError, match=r"at least one row"):
        render_heatmap(torch.empty(0, 3), [], TASKS, title="t", metric="acc", higher_is_better=True)


def test_figure_to_chw_uint8() -> None:
    fig = heatmap()
    image = figure_to_chw_uint8(fig)
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[0] == 3
    assert image.shape[1] == round(fig.get_figheight() * fig.dpi)
    assert image.shape[2] == round(fig.get_figwidth() * fig.dpi)
    assert image.flags["C_CONTIGUOUS"]
    assert image.min() < image.max()  # not a blank canvas


def test_figure_to_chw_uint8_works_for_foreign_canvas() -> None:
    fig = Figure(figsize=(2, 1), dpi=50)  # no canvas attached explicitly
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    assert figure_to_chw_uint8(fig).shape == (3, 50, 100)


def test_heatmap_leaves_no_pyplot_figures() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = heatmap()
    figure_to_chw_uint8(fig)
    assert plt.get_fignums() == before  # built without pyplot's global figure manager


# --------------------------------------------------------------------------- results.json


def test_write_results_json_nan_to_none(tmp_path) -> None:
    results = {
        "zeta": 1,
        "alpha": {"x": math.nan, "y": [1.5, math.inf, -math.inf], "z": (1, 2)},
        "tensor": torch.tensor([0.5, float("nan")]),
        "array": np.array([[1.0, np.nan]]),
        "scalar": np.float32(0.25),
        "path": tmp_path / "x",
    }
    path = write_results_json(tmp_path / "out" / "results.json", results)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert list(loaded) == ["zeta", "alpha", "tensor", "array", "scalar", "path"]  # not sorted
    assert loaded["alpha"] == {"x": None, "y": [1.5, None, None], "z": [1, 2]}
    assert loaded["tensor"] == [0.5, None]
    assert loaded["array"] == [[1.0, None]]
    assert loaded["scalar"] == 0.25
    assert loaded["path"] == str(tmp_path / "x")
    assert text.startswith('{\n  "zeta": 1')  # indent=2
    assert math.isnan(results["alpha"]["x"])  # input not mutated


def test_write_results_json_result_matrix(tmp_path) -> None:
    results = {"run": "demo", "acc": make_results()}
    loaded = json.loads(write_results_json(tmp_path / "results.json", results).read_text())
    assert loaded["acc"]["matrix"][1] == [0.7, 0.8, None]
    assert loaded["acc"]["summary"]["bwt"] == pytest.approx(-0.2)


def test_write_results_json_overwrites_and_leaves_no_temp_files(tmp_path) -> None:
    path = tmp_path / "results.json"
    write_results_json(path, {"v": 1})
    write_results_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_write_results_json_is_atomic_on_failure(tmp_path, monkeypatch) -> None:
    path = tmp_path / "results.json"
    write_results_json(path, {"v": 1})

    def failing_replace(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        write_results_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # temp file removed


def test_write_results_json_unserialisable_keeps_old_file(tmp_path) -> None:
    path = tmp_path / "results.json"
    write_results_json(path, {"v": 1})
    with pytest.raises(TypeError):
        write_results_json(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_to_json_safe_passthrough() -> None:
    assert to_json_safe({"a": [1, "x", None, True, 2.5]}) == {"a": [1, "x", None, True, 2.5]}


# --------------------------------------------------------------------------- text table


def test_format_summary_table() -> None:
    table = format_summary_table(make_results())
    lines = table.splitlines()
    assert lines[0] == "Result matrix: acc (higher is better)"
    for task in TASKS:
        assert task in lines[1]  # header holds every task name
    assert any(line.startswith("(initial)") for line in lines)
    assert any(line.startswith("rte ") and "0.8000" in line and line.rstrip().endswith("-") for line in lines)
    assert "backward transfer" in table and "-0.2000" in table
    # Fixed width: all table rows have the header's width.
    header_width = len(lines[1])
    table_rows = lines[1 : lines.index("")]
    assert all(len(line) == header_width for line in table_rows)


def test_format_summary_table_joint_and_lower_is_better() -> None:
    rm = ResultMatrix(TASKS, metric="ppl", higher_is_better=False)
    rm.add_row("joint", {"sst2": 12.0, "rte": 15.5, "boolq": 9.25})
    table = format_summary_table(rm.to_dict())
    assert "ppl (lower is better)" in table
    assert "(initial)" not in table
    assert "n/a" in table  # bwt/fwt/forgetting/learning undefined for a single row
    assert "15.5000" in table


def test_format_summary_table_validation() -> None:
    with pytest.raises(ValueError, match=r"missing key\(s\) \['matrix'\]"):
        format_summary_table({"tasks": TASKS, "stages": []})
    with pytest.raises(ValueError, match=r"must have shape \(1, 3\)"):
        format_summary_table({"tasks": TASKS, "stages": ["s"], "matrix": [[0.1]]})
