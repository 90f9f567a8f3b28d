"""``clight report``: render clight runs as one self-contained HTML page (and a Markdown twin) comparing methods.

The page holds the comparison table (final average of every metric, BWT, FWT, forgetting, gap closed between
`naive` and `joint`, steps, train seconds, s/step and its ratio to naive, peak memory, checkpoint size; mean ± std
over seeds), the result matrices as heatmaps side by side on one colour scale, per-task curves across the
training stages, and each method's resolved config. Images are inlined as base64 PNG and the CSS is inline, so
the file opens offline; the Markdown twin writes its images beside it in `<name>_files/`.

    clight report runs/bench --out report.html --md report.md     # a `clight bench` output folder
    clight report runs/naive runs/replay --out report.html        # single run directories
    clight report base=runs/a ewc=runs/b --naive base --out report.html   # name the runs yourself

A run directory is one holding `results.json`; a method folder holds `seed<k>/` run directories; a bench folder
holds method folders (its `table.json`, when present, gives the method order).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from clight.reporting.html import render_html, render_markdown
from clight.reporting.page import build, discover


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clight report", description=__doc__.split("\n\n")[0].removeprefix("``clight report``: "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
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
