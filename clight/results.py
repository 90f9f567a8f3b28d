"""What a stream run reports: ``results.json`` (matrices, summaries, timing, memory, environment), the matrix
heatmaps, the stream summaries logged after every task, and the text table printed at the end."""

from __future__ import annotations

import datetime
import math
import os
import platform
import resource
from pathlib import Path
from typing import Any

import lightning
import torch
import transformers

from clight.functional import retention, summarize
from clight.metrics import ResultMatrix
from clight.reporting import (
    figure_to_chw_uint8,
    format_summary_table,
    render_heatmap,
    save_figure_png,
    write_results_json,
)
from clight.state import StreamState
from clight.tb import StreamTensorBoardLogger


def seen_summary(matrix: ResultMatrix) -> dict[str, float | None]:
    """Summary over the tasks trained so far: the leading square block of a sequential matrix (the whole
    row for a joint run)."""
    R = matrix.matrix
    k = R.shape[0]
    if len(matrix.stages) == 1 and matrix.stages[0] not in matrix.task_names:  # joint
        return summarize(R, matrix.initial, higher_is_better=matrix.higher_is_better)
    initial = matrix.initial[:k] if matrix.initial is not None else None
    return summarize(R[:k, :k], initial, higher_is_better=matrix.higher_is_better)


def stage_metrics(state: StreamState, values: dict[str, dict[str, float]],
                  validation: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """TensorBoard scalars after a stage: ``eval/<task or probe>/<metric>``, ``stream/<metric>/<summary>`` over
    the tasks trained so far, ``stream/retention/<probe>/<metric>``, and with a validation split
    ``val/<task>/<metric>`` and ``val_stream/<metric>/<summary>``."""
    metrics: dict[str, float] = {}
    for prefix, group, got in (("eval", state.matrices, values), ("eval", state.probes, values),
                               ("val", state.validation, validation)):
        for metric, matrix in group.items():
            for task in matrix.task_names:
                if math.isfinite(got[task][metric]):
                    metrics[f"{prefix}/{task}/{metric}"] = got[task][metric]
    if state.matrices[state.metric_names[0]].stages:  # not before training
        for prefix, group in (("stream", state.matrices), ("val_stream", state.validation)):
            for metric, matrix in group.items():
                for key, value in seen_summary(matrix).items():
                    if value is not None:
                        metrics[f"{prefix}/{metric}/{key}"] = value
    for probe, by_metric in probe_retention(state).items():
        for metric, entry in by_metric.items():
            if entry["retention"] is not None:
                metrics[f"stream/retention/{probe}/{metric}"] = entry["retention"]
    return metrics


def probe_retention(state: StreamState) -> dict[str, dict[str, dict[str, float | None]]]:
    """Every probe's initial and latest value of each of its metrics, and the retention (latest against initial,
    :func:`clight.functional.retention`)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for metric, matrix in state.probes.items():
        if matrix.initial is None:
            continue
        rows = matrix.to_dict()["matrix"]
        for j, probe in enumerate(matrix.task_names):
            initial = matrix.initial[j]
            final = rows[-1][j] if rows else initial
            if initial is None or not math.isfinite(initial):
                continue
            out.setdefault(probe, {})[metric] = {
                "initial": initial, "final": final,
                "retention": retention(initial, final, matrix.higher_is_better)}
    return out


def build_results(state: StreamState, *, tasks: list[str], stages: list[str], seconds: float) -> dict[str, Any]:
    """The content of ``results.json``."""
    timing = state.timing
    steps = sum(t["optimizer_steps"] for t in timing)
    return {
        "tasks": tasks,
        "stages": stages,
        "primary_metric": state.metric_names[0],
        "matrices": {m: mat.to_dict() for m, mat in state.matrices.items()},
        "summary": {m: mat.summary() for m, mat in state.matrices.items()},
        "probes": {"tasks": next(iter(state.probes.values())).task_names if state.probes else [],
                   "matrices": {m: mat.to_dict() for m, mat in state.probes.items()},
                   "retention": probe_retention(state)},
        "validation": {"matrices": {m: mat.to_dict() for m, mat in state.validation.items()},
                       "summary": {m: mat.summary() for m, mat in state.validation.items()}},
        "timing": {
            "stages": timing,
            "train_seconds": sum(t["train_seconds"] for t in timing),
            "eval_seconds": sum(t["eval_seconds"] for t in timing),
            "optimizer_steps": steps,
            "seconds_per_step": _mean([t["seconds_per_step"] for t in timing]),
            **{key: _mean([t.get(key) for t in timing]) for key in ("load_average", "cpu_over_wall")},
            "wall_seconds_this_process": seconds,
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated() / 2**20
                               if torch.cuda.is_available() and torch.cuda.is_initialized() else None),
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "environment": environment(),
    }


def write_results(run_dir: Path, results: dict[str, Any], state: StreamState,
                  logger: StreamTensorBoardLogger) -> None:
    """Write ``results.json`` and the heatmaps (also into TensorBoard), and print the summary tables. Rank 0."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(run_dir / "results.json", results)
    for metric, matrix in state.matrices.items():
        fig = render_heatmap(matrix.matrix, matrix.stages, matrix.task_names, title=f"{metric} after each task",
                             metric=metric, higher_is_better=matrix.higher_is_better)
        save_figure_png(fig, run_dir / f"matrix_{metric}.png")
        logger.add_image(f"stream/matrix_{metric}", figure_to_chw_uint8(fig), state.step_offset)
    logger.experiment.flush()
    for metric in results["matrices"]:
        print(format_summary_table(results["matrices"][metric]))
    print(f"results: {run_dir / 'results.json'}  ·  tensorboard --logdir {run_dir / 'tensorboard'}")


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def environment() -> dict[str, Any]:
    """Where a run ran (for benchmark tables): library versions, CPU count and model, GPU name, finish time."""
    return {
        "python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(terse=True),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def cpu_model() -> str | None:
    """The CPU's model name (Linux: from ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            found = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        found = None
    return found or platform.processor() or None


def samples_markdown(stage: str, rows: list[dict[str, str]]) -> str:
    """Generated answers as a Markdown table (prompt, reference, generated)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    lines = [f"after **{stage}**", "", "| prompt | reference | generated |", "|---|---|---|"]
    lines += [f"| {cell(r['prompt'])} | {cell(r['reference'])} | {cell(r['generated'])} |" for r in rows]
    return "\n".join(lines)
