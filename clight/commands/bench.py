"""``clight bench``: run a list of configs (methods) over the same stream and seeds, and tabulate what each costs and
saves.

Every cell is one `clight fit` run in its own run directory `<out>/<method>/seed<k>`; finished cells (with
results.json) are skipped and a cell killed mid-stream resumes from its stream checkpoint, so an interrupted
benchmark continues where it stopped. The table gives, per method, the final average of the headline metric,
BWT, FWT, average forgetting (also for task-IL accuracy when the stream has it), the gap closed between the
`naive` and `joint` methods, optimizer steps, train seconds, seconds per optimizer step and its ratio to `naive`
(same invocation, same machine), peak RSS (and peak GPU memory when the runs used a GPU) and the
stream-checkpoint size. With several seeds: mean ± std. A failing cell is reported and the others still run.

    clight bench configs/naive.yaml configs/joint.yaml --out runs/bench
    clight bench configs/naive.yaml configs/joint.yaml configs/replay.yaml --seeds 0 1 --out runs/bench \
        -- --trainer.max_epochs 1        # arguments after `--` go to every run

`--val` tabulates the validation matrices (configs with `data.init_args.val_fraction`) instead of the test ones.
`--jobs N` runs up to N cells at once; the default 1 runs them one at a time, so that their timings stay honest
(every cell records its machine load, and `× naive` is flagged where the loads differ).

Render the cells as an HTML page with heatmaps and curves: `clight report runs/bench --out report.html`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from clight.reporting.comparison import compare_methods, comparison_markdown, load_run, summarize_runs


def run_cell(config: Path, seed: int, run_dir: Path, extra: Sequence[str]) -> dict[str, Any] | None:
    """Runs one (config, seed) cell unless it already finished; returns its results, or None if it failed."""
    results = run_dir / "results.json"
    if not results.exists():
        resume = (run_dir / "stream.pt").exists()  # killed mid-stream: continue from the stream checkpoint
        cmd = [sys.executable, "-m", "clight", "fit", "-c", str(config), "--seed_everything", str(seed),
               "--stream.run_dir", str(run_dir), *(["--stream.resume", "true"] if resume else
                                                   ["--stream.overwrite", "true"]),
               "--trainer.enable_progress_bar", "false", *extra]
        print("$", " ".join(cmd), flush=True)
        log = run_dir.parent / f"{run_dir.name}.log"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a" if resume else "w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0 or not results.exists():
            print(f"FAILED: {config} (seed {seed}) exited with code {proc.returncode}; see {log}", flush=True)
            return None
    return load_run(run_dir)


def validation_view(cell: dict[str, Any]) -> dict[str, Any] | None:
    """A cell's results with its validation matrices and summaries in place of the test ones (None: it has none)."""
    validation = cell.get("validation") or {}
    if not validation.get("matrices"):
        return None
    return {**cell, "matrices": validation["matrices"], "summary": validation["summary"]}


def run_bench(configs: Sequence[Path], seeds: Sequence[int], out: Path, extra: Sequence[str] = (), *,
              naive: str | None = "naive", joint: str | None = "joint", val: bool = False, jobs: int = 1
              ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Runs every (config, seed) cell (``jobs`` at a time) and writes `<out>/table.md` and `<out>/table.json`
    (`table_val.*` with ``val``: the validation matrices).

    Returns:
        The comparison rows (method name = config file stem, in the order given) and the failed cells.
    """
    failed: list[str] = []
    grid = [(config, seed) for config in configs for seed in seeds]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # each cell is its own process
        done = list(pool.map(lambda cs: run_cell(cs[0], cs[1], out / cs[0].stem / f"seed{cs[1]}", extra), grid))
    by_method: dict[str, list[dict[str, Any]]] = {config.stem: [] for config in configs}  # in the order given
    for (config, seed), cell in zip(grid, done):
        if cell is not None and val:
            cell = validation_view(cell)
            if cell is None:
                print(f"{config.stem}/seed{seed}: no validation matrix (give the config "
                      "`data.init_args.val_fraction`)", flush=True)
        if cell is None:
            failed.append(f"{config.stem}/seed{seed}")
        else:
            by_method[config.stem].append(cell)
    rows = {method: summarize_runs(cells) for method, cells in by_method.items() if cells}
    rows = compare_methods(rows, naive=naive, joint=joint)
    out.mkdir(parents=True, exist_ok=True)
    name = "table_val" if val else "table"
    if rows:
        note = (f"\n\nCells ran {jobs} at a time, so their timings share the machine." if jobs > 1 else "")
        (out / f"{name}.md").write_text(comparison_markdown(rows) + note + "\n")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows, failed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="clight bench", description=__doc__.split("\n\n")[0].removeprefix(
        "``clight bench``: "), formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("configs", nargs="+", type=Path, help="configs to compare; the method name is the file "
                        "stem (naive.yaml -> naive)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--naive", default="naive", help="method that is the lower bound for `gap closed` and the "
                        "reference of `× naive` (default: naive)")
    parser.add_argument("--joint", default="joint", help="method that is the upper bound for `gap closed` "
                        "(default: joint)")
    parser.add_argument("--val", action="store_true", help="tabulate the validation matrices (needs "
                        "`data.init_args.val_fraction` in the configs)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once (default 1: one at a time, so that "
                        "timings stay honest)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    for config in args.configs:
        if not config.is_file():
            parser.error(f"config {str(config)!r} does not exist")
    stems = [c.stem for c in args.configs]
    if len(set(stems)) != len(stems):
        parser.error(f"two configs share a file name {sorted({s for s in stems if stems.count(s) > 1})}; the "
                     "file stem names the method and its run directory, so rename one")
    rows, failed = run_bench(args.configs, args.seeds, args.out, extra, naive=args.naive, joint=args.joint,
                             val=args.val, jobs=args.jobs)
    if rows:
        print(comparison_markdown(rows))
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)} (logs beside their run directories)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
