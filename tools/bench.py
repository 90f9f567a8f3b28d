"""Run a list of configs (methods) over the same stream and seeds, and tabulate what each costs and saves.

Every cell is one `clight fit` run in its own run directory; finished cells (with results.json) are skipped, so
an interrupted benchmark resumes. The table gives, per method, the final average of the headline metric, BWT,
FWT, average forgetting (also for task-IL accuracy when the stream has it), the gap closed between the `naive`
and `joint` methods, train seconds, seconds per optimizer step and its ratio to `naive` (same invocation, same
machine), peak RSS and the stream-checkpoint size. With several seeds: mean ± std.

    python tools/bench.py configs/naive.yaml configs/joint.yaml --out runs/bench
    python tools/bench.py configs/naive.yaml configs/joint.yaml configs/replay.yaml --seeds 0 1 --out runs/bench \
        -- --trainer.max_epochs 1        # arguments after `--` go to every run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_cell(config: Path, seed: int, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    results = run_dir / "results.json"
    if not results.exists():
        cmd = [sys.executable, "-m", "clight", "fit", "-c", str(config), "--seed_everything", str(seed),
               "--stream.run_dir", str(run_dir), "--stream.overwrite", "true", "--trainer.enable_progress_bar",
               "false", *extra]
        print("$", " ".join(cmd), flush=True)
        log = run_dir.parent / f"{run_dir.name}.log"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"{config} (seed {seed}) failed with exit code {proc.returncode}; see {log}")
    data = json.loads(results.read_text())
    ckpt = run_dir / "stream.pt"
    data["checkpoint_mb"] = ckpt.stat().st_size / 2**20 if ckpt.exists() else None
    return data


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize_method(cells: list[dict[str, Any]]) -> dict[str, Any]:
    primary = cells[0]["primary_metric"]
    row: dict[str, Any] = {"metric": primary, "seeds": len(cells)}
    for metric in cells[0]["summary"]:
        for key in ("average", "bwt", "fwt", "forgetting"):
            row[f"{metric}/{key}"] = _mean_std([c["summary"][metric][key] for c in cells])
    row["train_seconds"] = _mean_std([c["timing"]["train_seconds"] for c in cells])
    row["seconds_per_step"] = _mean_std([c["timing"]["seconds_per_step"] for c in cells])
    row["peak_rss_mb"] = _mean_std([c["peak_rss_mb"] for c in cells])
    row["checkpoint_mb"] = _mean_std([c["checkpoint_mb"] for c in cells])
    return row


def _fmt(ms: tuple[float | None, float | None] | None, digits: int = 3) -> str:
    if ms is None or ms[0] is None:
        return "—"
    mean, std = ms
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")


def table(rows: dict[str, dict[str, Any]]) -> str:
    first = next(iter(rows.values()))
    primary = first["metric"]
    metrics = sorted({k.split("/")[0] for r in rows.values() for k in r if "/" in k}, key=lambda m: m != primary)
    naive, joint = rows.get("naive"), rows.get("joint")
    header = ["method"]
    for m in metrics:
        header += [f"{m} avg", f"{m} BWT", f"{m} FWT", f"{m} forgetting"]
    header += ["gap closed", "train s", "s/step", "× naive", "peak RSS MB", "ckpt MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows.items():
        cells = [name]
        for m in metrics:
            cells += [_fmt(r.get(f"{m}/{k}")) for k in ("average", "bwt", "fwt", "forgetting")]
        gap = "—"
        key = f"{primary}/average"
        if naive and joint and r[key][0] is not None and joint[key][0] != naive[key][0]:
            gap = f"{(r[key][0] - naive[key][0]) / (joint[key][0] - naive[key][0]):.2f}"
        ratio = "—"
        if naive and r["seconds_per_step"][0] and naive["seconds_per_step"][0]:
            ratio = f"{r['seconds_per_step'][0] / naive['seconds_per_step'][0]:.2f}"
        cells += [gap, _fmt(r["train_seconds"], 0), _fmt(r["seconds_per_step"]), ratio,
                  _fmt(r["peak_rss_mb"], 0), _fmt(r["checkpoint_mb"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="configs to compare; name them naive.yaml / "
                        "joint.yaml for the gap-closed column")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    for config in args.configs:
        if not config.is_file():
            parser.error(f"config {str(config)!r} does not exist")
    rows = {}
    for config in args.configs:
        cells = [run_cell(config, seed, args.out / config.stem / f"seed{seed}", extra) for seed in args.seeds]
        rows[config.stem] = summarize_method(cells)
    text = table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "table.json").write_text(json.dumps(rows, indent=2))
    print(text)


if __name__ == "__main__":
    main()
