"""Seconds per training step of each real-LLM method (configs/llm_*.yaml), measured one at a time on a quiet machine.

Each method is an ordinary `clight fit` of its config on the stream's first two tasks with a fixed number of
optimizer steps per task (evaluation cut to a few examples, no probes, no initial evaluation), so the second task
is where a remedy acts: replay mixes in old examples, distillation runs its teacher, self-rehearsal has generated
its targets, the penalty has an anchor. The figure is the step timer's mean seconds per step of the second task
(its first step excluded), next to that task's whole training time (which includes work done once per task, such
as self-rehearsal's generation before training), and the process's CPU time against its wall time and the load
average, so that a cell that shared the machine shows it. Run it with nothing else running.

    python tools/bench/llm_method_speed.py --steps 8 --out runs/llm_method_speed.json
    python tools/docs/llm_results.py runs/llm_bench_harsh --timing runs/llm_method_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("llm_naive", "llm_lora", "llm_replay", "llm_ssr", "llm_distillation", "llm_l2_anchor", "llm_wise_ft")
TASKS = "[{name: man-commands}, {name: hypernyms}]"


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_method(method: str, steps: int, log: Path) -> dict:
    """One cell: `clight fit` of ``configs/<method>.yaml`` over two tasks of ``steps`` steps each."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "clight", "fit", "-c", str(ROOT / "configs" / f"{method}.yaml"),
               "--stream.run_dir", f"{tmp}/run", "--stream.eval_initial", "false",
               "--stream.checkpoint_every_n_steps", "0", "--trainer.enable_progress_bar", "false",
               "--trainer.max_epochs", "-1", "--trainer.max_steps", str(steps),
               "--data.init_args.tasks", TASKS, "--data.init_args.probes", "[]",
               "--data.init_args.eval_max_examples", "4"]
        load_before, cpu_before, t0 = os.getloadavg()[0], cpu_seconds_of_children(), time.perf_counter()
        with log.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall, cpu = time.perf_counter() - t0, cpu_seconds_of_children() - cpu_before
        if proc.returncode != 0:
            raise SystemExit(f"{method}: clight fit exited with {proc.returncode}; see {log}")
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
    second = results["timing"]["stages"][1]
    return {"seconds_per_step": second["seconds_per_step"], "task2_train_seconds": second["train_seconds"],
            "task2_steps": second["optimizer_steps"], "peak_rss_mb": results["peak_rss_mb"],
            "process_cpu_over_wall": cpu / wall, "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0], "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per task")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "llm_method_speed.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cells = {}
    for method in args.methods:
        cells[method] = time_method(method, args.steps, args.out.with_name(f"{args.out.stem}.{method}.log"))
        c = cells[method]
        print(f"{method}: {c['seconds_per_step']:.3f} s/step (task 2 trains in {c['task2_train_seconds']:.1f} s), "
              f"CPU/wall {c['process_cpu_over_wall']:.2f}, load {c['load_average_before']:.2f} -> "
              f"{c['load_average_after']:.2f}, peak RSS {c['peak_rss_mb']:.0f} MB", flush=True)
    naive = cells.get("llm_naive", {}).get("seconds_per_step")
    for c in cells.values():
        c["ratio_to_naive"] = c["seconds_per_step"] / naive if naive else None
    figures = {m: c["seconds_per_step"] for m, c in cells.items()}
    args.out.write_text(json.dumps({**figures, "cells": cells, "steps_per_task": args.steps}, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
