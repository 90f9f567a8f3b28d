"""The real-LLM table of docs/RESULTS.md from the cells of `clight bench configs/llm_*.yaml --out runs/llm_bench`.

Per method: the four tasks' final ROUGE-L and exact match (the mean of the last row), backward transfer and
forgetting of ROUGE-L, every probe's score before and after the stream and its retention, and the cost (seconds per
step and its ratio to naive from a timing file of tools/bench/llm_step_time.py-style runs when given, else the
cells' own, flagged; peak RSS). Prints Markdown.

    python tools/docs/llm_results.py runs/llm_bench [--timing runs/llm_timing.json | --no-speed]

`--no-speed` leaves the seconds-per-step columns out, for cells that ran while other work shared the cores (their
step times measure the contention, not the method).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

PROBES = (("word-meaning", "mc_acc"), ("city-country", "mc_acc"), ("prose-ppl", "ppl"))


def load_cells(bench: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for results in sorted(bench.glob("*/seed*/results.json")):
        out.setdefault(results.parent.parent.name, []).append(json.loads(results.read_text()))
    return out


def fmt(values: list[float | None], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(cells: dict[str, list[dict]], timing: dict[str, float] | None, naive: str = "llm_naive",
          speed: bool = True) -> str:
    head = ["method", "seeds", "ROUGE-L avg", "EM avg", "ROUGE-L BWT", "ROUGE-L forgetting"]
    head += [f"{p} {m} (base → final, retention)" for p, m in PROBES]
    head += ["s/step", "× naive", "peak RSS MB"] if speed else ["peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_step = None
    if timing and naive in timing:
        base_step = timing[naive]
    elif naive in cells:
        base_step = statistics.mean(r["timing"]["seconds_per_step"] for r in cells[naive])
    for method, runs in cells.items():
        s = [r["summary"] for r in runs]
        row = [method.removeprefix("llm_"), str(len(runs)), fmt([x["rouge_l"]["average"] for x in s]),
               fmt([x["exact_match"]["average"] for x in s]), fmt([x["rouge_l"]["bwt"] for x in s]),
               fmt([x["rouge_l"]["forgetting"] for x in s])]
        for probe, metric in PROBES:
            entries = [r["probes"]["retention"].get(probe, {}).get(metric) for r in runs]
            entries = [e for e in entries if e]
            if not entries:
                row.append("—")
                continue
            digits = 1 if metric == "ppl" else 3
            row.append(f"{fmt([e['initial'] for e in entries], digits)} → {fmt([e['final'] for e in entries], digits)}"
                       f" ({fmt([e['retention'] for e in entries])})")
        step = timing.get(method) if timing else statistics.mean(r["timing"]["seconds_per_step"] for r in runs)
        if speed:
            row += [f"{step:.2f}" if step else "—", f"{step / base_step:.2f}" if step and base_step else "—"]
        row.append(fmt([r["peak_rss_mb"] for r in runs], 0))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--timing", type=Path, default=None, help="JSON {method: seconds per step} of a quiet run")
    parser.add_argument("--no-speed", action="store_true", help="leave the seconds-per-step columns out")
    args = parser.parse_args()
    timing = json.loads(args.timing.read_text()) if args.timing else None
    print(table(load_cells(args.bench), timing, speed=not args.no_speed))


if __name__ == "__main__":
    main()
