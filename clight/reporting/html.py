"""Render a :class:`~clight.reporting.page.Report` as one self-contained HTML page (images inlined as base64 PNG,
inline CSS: it opens offline) and as a Markdown twin whose images sit beside it."""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clight.reporting.comparison import (
    comparison_cells,
    comparison_columns,
    comparison_markdown,
)
from clight.reporting.page import NOTES, Report

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
