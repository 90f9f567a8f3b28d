"""A comparison page's content: the runs found under the given folders, grouped by method, with their tables and
figures (:func:`build`); :mod:`clight.reporting.html` renders it."""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clight.reporting.comparison import (
    compare_methods,
    load_run,
    mean_matrix,
    summarize_runs,
)
from clight.reporting.curves import figure_to_png_bytes, render_task_curves
from clight.reporting.heatmap import render_heatmap

_SEED_DIR = re.compile(r"seed(\d+)")

NOTES = [
    "`avg` is the mean of the last row of the matrix (the final model on every task of the stream); BWT, FWT and "
    "forgetting as in GEM (Lopez-Paz & Ranzato 2017) and Chaudhry et al. 2018. A joint run trains once on all "
    "tasks, so it has one row and no BWT/FWT/forgetting.",
    "`gap closed` = (avg − naive) / (joint − naive) on the headline metric's means: 0 is no better than naive "
    "sequential fine-tuning, 1 matches joint training.",
    "`s/step` is the mean wall time of a training step (forward, backward, optimizer step, logging; first step of "
    "each task excluded); `× naive` is its ratio to naive, meaningful when both ran on the same machine in the "
    "same benchmark. `train s` sums the tasks' `fit` calls (evaluation excluded).",
    "`peak RSS MB` is the training process's peak resident memory (rank 0 under DDP); `peak GPU MB` is "
    "`torch.cuda.max_memory_allocated` when the run used a GPU; `ckpt MB` is the size of the stream checkpoint "
    "`stream.pt` (module weights + callback state).",
    "With several seeds, cells show mean ± sample standard deviation and the figures show the mean (curves: ± one "
    "standard deviation shaded).",
]

def _seed_key(path: Path) -> tuple[int, str]:
    match = _SEED_DIR.fullmatch(path.name)
    return (int(match.group(1)) if match else 1 << 30, path.name)

def discover(paths: Sequence[str]) -> dict[str, list[Path]]:
    """Maps method names to run directories found under the given paths (see the module docstring).

    Args:
        paths: Run directories, method folders or bench folders; `NAME=PATH` names a run directory or method
            folder explicitly.

    Returns:
        Method name → run directories (seed order), methods in the order found.

    Raises:
        SystemExit: With a message when a path holds no run, or two paths give the same method name.
    """
    methods: dict[str, list[Path]] = {}

    def add(name: str, runs: list[Path], source: str) -> None:
        if name in methods:
            raise SystemExit(f"report: two paths give the method name {name!r} (the second is {source!r}); name "
                             f"them yourself with NAME=PATH")
        methods[name] = runs

    for spec in paths:
        name, sep, raw = spec.partition("=")
        if not sep or os.path.exists(spec):
            name, raw = "", spec
        path = Path(raw)
        if (path / "results.json").is_file():
            default = path.parent.name if _SEED_DIR.fullmatch(path.name) else path.name
            add(name or default, [path], raw)
            continue
        seeds = sorted((p.parent for p in path.glob("*/results.json") if _SEED_DIR.fullmatch(p.parent.name)),
                       key=_seed_key)
        if seeds:
            add(name or path.name, seeds, raw)
            continue
        if name:
            raise SystemExit(f"report: {raw!r} is neither a run directory nor a folder of seed<k> runs")
        children = sorted({p.parent.parent for p in path.glob("*/seed*/results.json")}
                          | {p.parent for p in path.glob("*/results.json")})
        if not children:
            raise SystemExit(f"report: found no results.json under {raw!r} (give run directories, method folders "
                             "or a clight bench output folder)")
        order: list[str] = []
        table = path / "table.json"
        if table.is_file():
            order = list(json.loads(table.read_text()))
        children.sort(key=lambda c: (order.index(c.name) if c.name in order else len(order), c.name))
        for child in children:
            if (child / "results.json").is_file():
                add(child.name, [child], str(child))
            else:
                add(child.name, sorted((p.parent for p in child.glob("seed*/results.json")
                                        if _SEED_DIR.fullmatch(p.parent.name)), key=_seed_key), str(child))
    return methods

@dataclass
class Report:
    """Everything a rendering needs: the runs, the table rows and the figures (PNG bytes)."""

    title: str
    methods: dict[str, list[dict[str, Any]]]
    rows: dict[str, dict[str, Any]]
    tasks: list[str]
    metrics: list[str]
    primary: str
    higher_is_better: bool
    naive: str | None
    joint: str | None
    generated: str
    command: str | None = None
    figures: dict[tuple[str, str, str], bytes] = field(default_factory=dict)

    def environment_lines(self) -> list[str]:
        """One line per distinct machine/library set the runs recorded."""
        seen: dict[str, list[str]] = {}
        for name, runs in self.methods.items():
            for run in runs:
                env = run.get("environment")
                if not env:
                    key = "not recorded (runs written before clight recorded their environment)"
                else:
                    cpu = f"{env.get('cpu_count')} CPU cores" + (f" ({env['cpu_model']})" if env.get("cpu_model") else "")
                    gpu = f"GPU {env['gpu']}" if env.get("gpu") else "no GPU used"
                    key = (f"{cpu}, {gpu}; torch {env.get('torch')}, lightning {env.get('lightning')}, transformers "
                           f"{env.get('transformers')}, Python {env.get('python')}, {env.get('platform')}")
                if name not in seen.setdefault(key, []):
                    seen[key].append(name)
        if len(seen) == 1:
            return list(seen)
        return [f"{key} — {', '.join(names)}" for key, names in seen.items()]

    def finished_range(self) -> str | None:
        """The span of the runs' finish times (UTC dates), when recorded."""
        stamps = sorted(r["environment"]["finished_utc"] for runs in self.methods.values() for r in runs
                        if (r.get("environment") or {}).get("finished_utc"))
        if not stamps:
            return None
        first, last = stamps[0][:10], stamps[-1][:10]
        return first if first == last else f"{first} to {last}"

def _std_matrix(runs: Sequence[Mapping[str, Any]], metric: str) -> np.ndarray | None:
    arrays = [np.array(r["matrices"][metric]["matrix"], dtype=np.float64) for r in runs]
    if len(arrays) < 2:
        return None
    return np.nanstd(np.stack(arrays), axis=0, ddof=1)

def build(methods: Mapping[str, Sequence[Path]], *, title: str = "clight comparison", naive: str | None = None,
          joint: str | None = None, metrics: Sequence[str] | None = None, command: str | None = None) -> Report:
    """Loads the runs, computes the table and renders the figures.

    Args:
        methods: Method name → run directories (from :func:`discover`).
        title: Page title.
        naive: Lower-bound method for `gap closed` and `× naive` (default: the method called `naive`).
        joint: Upper-bound method (default: the method called `joint`, else the only run trained jointly).
        metrics: Metrics to draw figures for (default: all the runs have); the table always has all.
        command: The command that produced the runs, shown on the page.

    Raises:
        SystemExit: With a message when the runs are not on the same stream or a named method is missing.
    """
    loaded = {name: [load_run(p) for p in paths] for name, paths in methods.items()}
    if not loaded:
        raise SystemExit("report: no runs given")
    first_name, first_runs = next(iter(loaded.items()))
    tasks = list(first_runs[0]["tasks"])
    for name, runs in loaded.items():
        for run in runs:
            if list(run["tasks"]) != tasks:
                raise SystemExit(f"report: {run['run_dir']!r} ({name}) ran on tasks {run['tasks']}, but "
                                 f"{first_runs[0]['run_dir']!r} ({first_name}) on {tasks}; a comparison needs one "
                                 "stream: report them separately")
    for role, value in (("naive", naive), ("joint", joint)):
        if value is not None and value not in loaded:
            raise SystemExit(f"report: `--{role}` {value!r} is not one of the methods {list(loaded)}")
    if naive is None and "naive" in loaded:
        naive = "naive"
    if joint is None:
        jointly = [n for n, runs in loaded.items() if runs[0]["stages"] == ["joint"]]
        joint = "joint" if "joint" in loaded else (jointly[0] if len(jointly) == 1 else None)
    rows = compare_methods({n: summarize_runs(r) for n, r in loaded.items()}, naive=naive, joint=joint)
    primary = first_runs[0]["primary_metric"]
    all_metrics = sorted({m for runs in loaded.values() for r in runs for m in r["matrices"]}, key=lambda m: m != primary)
    higher = bool(first_runs[0]["matrices"][primary].get("higher_is_better", True))
    report = Report(title=title, methods=loaded, rows=rows, tasks=tasks, metrics=all_metrics, primary=primary,
                    higher_is_better=higher, naive=naive, joint=joint, command=command,
                    generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    for metric in all_metrics if metrics is None else metrics:
        _render_metric(report, metric)
    return report

def _render_metric(report: Report, metric: str) -> None:
    means = {n: mean_matrix(runs, metric) for n, runs in report.methods.items() if metric in runs[0]["matrices"]}
    finite = np.concatenate([m[np.isfinite(m)] for m in means.values() if m is not None] or [np.zeros(0)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
    for name, matrix in means.items():
        runs = report.methods[name]
        info = runs[0]["matrices"][metric]
        higher = bool(info.get("higher_is_better", True))
        seeds = f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""
        fig = render_heatmap(matrix, list(runs[0]["stages"]), report.tasks, title=f"{name}: {metric}{seeds}",
                             metric=metric, higher_is_better=higher, vmin=vmin, vmax=vmax)
        report.figures[(name, metric, "matrix")] = figure_to_png_bytes(fig)
        fig = render_task_curves(matrix, list(runs[0]["stages"]), report.tasks, title=f"{name}: {metric} per task"
                                 f"{seeds}", metric=metric, higher_is_better=higher,
                                 initial=mean_matrix(runs, metric, key="initial"), spread=_std_matrix(runs, metric))
        report.figures[(name, metric, "curves")] = figure_to_png_bytes(fig)
