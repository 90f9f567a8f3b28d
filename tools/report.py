"""Render clight runs as one self-contained HTML page (and a Markdown twin) that compares methods side by side.

The page holds the comparison table (final average of every metric, BWT, FWT, forgetting, gap closed between
`naive` and `joint`, steps, train seconds, s/step and its ratio to naive, peak memory, checkpoint size; mean ± std
over seeds), the result matrices as heatmaps side by side on one colour scale, per-task curves across the
training stages, and each method's resolved config. Images are inlined as base64 PNG and the CSS is inline, so
the file opens offline; the Markdown twin writes its images beside it in `<name>_files/`.

    python tools/report.py runs/bench --out report.html --md report.md     # a tools/bench.py output folder
    python tools/report.py runs/naive runs/replay --out report.html        # single run directories
    python tools/report.py base=runs/a ewc=runs/b --naive base --out report.html   # name the runs yourself

A run directory is one holding `results.json`; a method folder holds `seed<k>/` run directories; a bench folder
holds method folders (its `table.json`, when present, gives the method order).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clight.comparison import (
    compare_methods,
    comparison_cells,
    comparison_columns,
    comparison_markdown,
    figure_to_png_bytes,
    load_run,
    mean_matrix,
    render_task_curves,
    summarize_runs,
)
from clight.reporting import render_heatmap

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


# --------------------------------------------------------------------------- finding runs


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
                             "or a tools/bench.py output folder)")
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


# --------------------------------------------------------------------------- the report model


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


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2125;
       margin: 24px auto; max-width: 1500px; padding: 0 20px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd;
     padding-bottom: 4px; } h3 { font-size: 16px; margin: 18px 0 8px; }
.meta { color: #555; margin: 2px 0; }
.scroll { overflow-x: auto; }
table.cmp { border-collapse: collapse; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.cmp th, table.cmp td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; }
table.cmp th { background: #f3f5f7; text-align: center; }
table.cmp td:first-child { text-align: left; font-weight: 600; }
table.cmp tr.ref td { background: #fafbfc; color: #444; }
table.cmp td.best { font-weight: 700; background: #e6f4ea; }
ul.notes { color: #444; font-size: 13px; max-width: 1100px; }
code { background: #f3f5f7; padding: 1px 4px; border-radius: 3px; font-size: 12.5px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid #e1e4e8; border-radius: 6px; padding: 8px; background: #fff; }
figure img { display: block; width: 100%; max-width: 760px; height: auto; }
figcaption { font-weight: 600; margin-bottom: 4px; }
details { margin: 6px 0 12px; } summary { cursor: pointer; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 10px; overflow-x: auto; font-size: 12px; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _inline_code(text: str) -> str:
    """HTML-escapes ``text`` and turns `backticks` into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _best_cells(report: Report, columns: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(method, column key) of the best final average of each metric among the non-reference methods."""
    best: set[tuple[str, str]] = set()
    candidates = [n for n in report.rows if n not in (report.naive, report.joint)]
    for col in columns:
        key = col["key"]
        if not key or not key.endswith("/average"):
            continue
        metric = key.split("/")[0]
        higher = bool(report.methods[next(iter(report.methods))][0]["matrices"].get(metric, {})
                      .get("higher_is_better", True))
        values = {n: report.rows[n].get(key, (None, None))[0] for n in candidates}
        values = {n: v for n, v in values.items() if v is not None}
        if len(values) > 1:
            target = max(values.values()) if higher else min(values.values())
            best |= {(n, key) for n, v in values.items() if v == target}
    return best


def _html_table(report: Report) -> str:
    columns = comparison_columns(report.rows)
    groups: list[tuple[str, int]] = []
    for col in columns:
        if groups and groups[-1][0] == col["group"] and col["group"]:
            groups[-1] = (col["group"], groups[-1][1] + 1)
        else:
            groups.append((col["group"], 1))
    head1, head2 = [], []
    for group, span in groups:
        if group:
            head1.append(f'<th colspan="{span}">{html.escape(group)}</th>')
    for col in columns:
        if col["group"]:
            head2.append(f"<th>{html.escape(col['short'])}</th>")
        else:
            head1.insert(len([c for c in columns[: columns.index(col)] if not c["group"]]),
                         f'<th rowspan="2">{html.escape(col["label"])}</th>')
    best = _best_cells(report, columns)
    body = []
    for name, row in report.rows.items():
        cells = comparison_cells(name, row, columns)
        tds = []
        for col, text in zip(columns, cells):
            cls = ' class="best"' if (name, col["key"]) in best else ""
            tds.append(f"<td{cls}>{html.escape(text)}</td>")
        role = ' class="ref"' if name in (report.naive, report.joint) else ""
        body.append(f"<tr{role}>" + "".join(tds) + "</tr>")
    return (f'<div class="scroll"><table class="cmp"><thead><tr>{"".join(head1)}</tr><tr>{"".join(head2)}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def _roles_text(report: Report) -> str:
    parts = [f"headline metric `{report.primary}` ({'higher' if report.higher_is_better else 'lower'} is better)"]
    parts.append(f"naive = `{report.naive}`" if report.naive else "no naive run (no `gap closed`, no `× naive`)")
    parts.append(f"joint = `{report.joint}`" if report.joint else "no joint run (no `gap closed`)")
    return "; ".join(parts)


def render_html(report: Report) -> str:
    """The whole page as one string (inline CSS, base64 PNGs; no scripts, no external references)."""
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f'<p class="meta">{len(report.methods)} methods on a stream of {len(report.tasks)} tasks '
        f"({html.escape(', '.join(report.tasks))}); {_inline_code(_roles_text(report))}.</p>",
    ]
    for line in report.environment_lines():
        out.append(f'<p class="meta">Machine: {html.escape(line)}</p>')
    finished = report.finished_range()
    out.append(f'<p class="meta">Runs finished {html.escape(finished)}; ' if finished else '<p class="meta">')
    out.append(f"page generated {html.escape(report.generated)}.</p>")
    if report.command:
        out.append(f'<p class="meta">Command: <code>{html.escape(report.command)}</code></p>')
    out += ["<h2>Comparison</h2>", _html_table(report), '<ul class="notes">']
    out += [f"<li>{_inline_code(note)}</li>" for note in NOTES]
    out.append("</ul>")
    for kind, heading in (("matrix", "Result matrices"), ("curves", "Per-task curves across the stream")):
        drawn = [m for m in report.metrics if any(k[1] == m and k[2] == kind for k in report.figures)]
        if not drawn:
            continue
        out.append(f"<h2>{heading}</h2>")
        if kind == "matrix":
            out.append('<p class="meta">Row = after training that stage, column = evaluated task; one colour scale '
                       "per metric across all methods.</p>")
        else:
            out.append('<p class="meta">One line per task: its metric after each training stage; the large marker '
                       "is where the task itself is trained.</p>")
        for metric in drawn:
            out.append(f"<h3>{html.escape(metric)}</h3>")
            out.append('<div class="grid">')
            for name in report.methods:
                png = report.figures.get((name, metric, kind))
                if png is not None:
                    out.append(f'<figure class="{kind}"><figcaption>{html.escape(name)}</figcaption>'
                               f'<img alt="{html.escape(f"{name} {metric} {kind}")}" src="{_data_uri(png)}">'
                               "</figure>")
            out.append("</div>")
    out.append("<h2>Runs and resolved configs</h2>")
    for name, runs in report.methods.items():
        out.append(f"<h3>{html.escape(name)}</h3><p class=\"meta\">"
                   + ", ".join(f"<code>{html.escape(r['run_dir'])}</code>" for r in runs) + "</p>")
        text = runs[0].get("config_text")
        label = "config.yaml" + (f" of {runs[0]['run_dir']}" if len(runs) > 1 else "")
        if text:
            out.append(f"<details><summary>{html.escape(label)}</summary><pre>{html.escape(text)}</pre></details>")
        else:
            out.append('<p class="meta">No config.yaml in the run directory (the run was not started by '
                       "<code>clight fit</code>).</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- Markdown


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def write_images(report: Report, image_dir: Path, *, metrics: Sequence[str] | None = None) -> dict[tuple, Path]:
    """Writes the report's figures as PNG files; returns their paths by (method, metric, kind)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for (name, metric, kind), png in report.figures.items():
        if metrics is not None and metric not in metrics:
            continue
        path = image_dir / f"{_slug(name)}-{_slug(metric)}-{kind}.png"
        path.write_bytes(png)
        paths[(name, metric, kind)] = path
    return paths


def render_markdown(report: Report, md_path: Path, image_dir: Path, *, level: int = 1,
                    metrics: Sequence[str] | None = None, configs: bool = True, per_row: int = 3,
                    stamp: bool = True) -> str:
    """The Markdown twin; writes the images into ``image_dir`` and links them relative to ``md_path``.

    Args:
        report: From :func:`build`.
        md_path: Where the Markdown will be written (for relative image links).
        image_dir: Folder for the PNG files.
        level: Heading level of the title (2: sections become ###).
        metrics: Metrics to show figures of (default: all the report drew).
        configs: Include the resolved configs.
        per_row: Figures per row of the image grid.
        stamp: Say when the page was generated (off when the caller's page says it once).
    """
    paths = write_images(report, image_dir, metrics=metrics)
    h = "#" * level
    out = [f"{h} {report.title}", "",
           f"{len(report.methods)} methods on a stream of {len(report.tasks)} tasks ({', '.join(report.tasks)}); "
           f"{_roles_text(report)}.", ""]
    for line in report.environment_lines():
        out.append(f"Machine: {line}  ")
    finished = report.finished_range()
    if finished or stamp:
        out.append("; ".join(([f"Runs finished {finished}"] if finished else [])
                             + ([f"page generated {report.generated}"] if stamp else [])) + ".")
    if report.command:
        out += ["", f"Command: `{report.command}`"]
    out += ["", comparison_markdown(report.rows), ""]
    out += [f"- {note}" for note in NOTES]
    for kind, heading in (("matrix", "Result matrices"), ("curves", "Per-task curves across the stream")):
        drawn = [m for m in report.metrics if any(k[1] == m and k[2] == kind for k in paths)]
        for metric in drawn:
            out += ["", f"{h}# {heading}: {metric}", ""]
            names = [n for n in report.methods if (n, metric, kind) in paths]
            for start in range(0, len(names), per_row):
                chunk = names[start : start + per_row]
                out.append("| " + " | ".join(chunk) + " |")
                out.append("|" + "---|" * len(chunk))
                links = [f"![{n} {metric} {kind}]({Path(os.path.relpath(paths[(n, metric, kind)], md_path.parent)).as_posix()})"
                         for n in chunk]
                out += ["| " + " | ".join(links) + " |", ""]
    if configs:
        out += ["", f"{h}# Runs and resolved configs"]
        for name, runs in report.methods.items():
            out += ["", f"{h}## {name}", "", "Run directories: " + ", ".join(f"`{r['run_dir']}`" for r in runs), ""]
            text = runs[0].get("config_text")
            if text:
                out += ["<details><summary>config.yaml</summary>", "", "```yaml", text.rstrip("\n"), "```", "",
                        "</details>"]
            else:
                out.append("No config.yaml in the run directory (the run was not started by `clight fit`).")
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories, method folders (seed<k>/ runs), bench output "
                        "folders, or NAME=PATH")
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file (default: report.html)")
    parser.add_argument("--md", type=Path, default=None, help="also write a Markdown twin (images in <name>_files/)")
    parser.add_argument("--title", default="clight comparison")
    parser.add_argument("--naive", default=None, help="the lower-bound method (default: the one named naive)")
    parser.add_argument("--joint", default=None, help="the upper-bound method (default: the one named joint, or the "
                        "only jointly trained run)")
    args = parser.parse_args(argv)
    report = build(discover(args.runs), title=args.title, naive=args.naive, joint=args.joint)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_html(report), encoding="utf-8")
    print(f"wrote {args.out}")
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        image_dir = args.md.with_name(f"{args.md.stem}_files")
        args.md.write_text(render_markdown(report, args.md, image_dir), encoding="utf-8")
        print(f"wrote {args.md} (images in {image_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
