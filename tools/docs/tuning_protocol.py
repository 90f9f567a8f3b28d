"""The two-phase tuning protocol of docs/RESULTS.md ("Hyperparameters in Continual Learning: a Reality Check").

Phase 1 tunes every technique with `clight tune` on the WordNet *tuning* stream (clight/data/wordnet_tune:
categories the evaluation stream never uses), reading validation data only. Phase 2 runs each technique's default
and tuned settings on the evaluation streams — the WordNet class-incremental stream and the continual-pretraining
domain stream — with 3 seeds, next to naive (and joint), and writes the verdict table: mean ± std of every
cell, the difference to naive with its spread, and whether that difference is measurable (more than twice its
standard error). Every step is an ordinary clight run in its own folder, so an interrupted protocol continues
where it stopped.

    python tools/docs/tuning_protocol.py --trials 6 --seeds 0 1 2            # everything (hours on 2 cores)
    python tools/docs/tuning_protocol.py --phase 1 --techniques ewc replay   # tune two techniques only
    python tools/docs/tuning_protocol.py --phase 2 --streams wordnet         # evaluate what phase 1 chose
    python tools/docs/tuning_protocol.py --techniques ewc --epochs 1 --trials 8 --streams wordnet  # the cheap cut

`--epochs N` sets `trainer.max_epochs` in both phases (the protocol's budget knob: the setting is tuned at the
budget it is evaluated at).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TECHNIQUES = ("replay", "der", "distillation", "ewc", "mas", "si", "l2_anchor", "freeze_lower",
              "gradient_mask_importance", "ema", "wise_ft", "merge_ties")
TUNE_DATA = {"train_file": "clight/data/wordnet_tune/train.jsonl", "test_file": "clight/data/wordnet_tune/test.jsonl",
             "val_fraction": 0.25}
STREAMS = {"wordnet": ("naive.yaml", "class_il_acc"), "domains": ("continual_pretraining.yaml", "ppl")}


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def dump(cfg: dict[str, Any], path: Path, comment: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {comment}\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def phase1(techniques: list[str], out: Path, trials: int, epochs: int | None = None) -> None:
    for name in techniques:
        cfg = load(ROOT / "configs" / f"{name}.yaml")
        cfg["data"]["init_args"].update(TUNE_DATA)
        if epochs is not None:
            cfg["trainer"]["max_epochs"] = epochs
        config = dump(cfg, out / name / "config.yaml", f"configs/{name}.yaml on the tuning stream (validation split)")
        cmd = [sys.executable, "-m", "clight", "tune", "-c", str(config), "--space",
               str(ROOT / "configs" / "tune" / f"{name}.space.yaml"), "--trials", str(trials), "--out", str(out / name)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)


def stream_config(stream: str, technique: str | None, values: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluation stream's naive config with the technique's callbacks (and the tuned values) in it."""
    from clight.tuning import apply

    cfg = load(ROOT / "configs" / STREAMS[stream][0])
    if technique is not None:
        cfg["trainer"]["callbacks"] = load(ROOT / "configs" / f"{technique}.yaml")["trainer"]["callbacks"]
    return apply(cfg, values) if values else cfg


def phase2(techniques: list[str], tuned_dir: Path, out: Path, streams: list[str], seeds: list[int],
           epochs: int | None = None) -> None:
    for stream in streams:
        configs = [dump(stream_config(stream, None, None), out / stream / "configs" / "naive.yaml", "naive")]
        if stream == "wordnet":
            configs.append(ROOT / "configs" / "joint.yaml")
        for name in techniques:
            configs.append(dump(stream_config(stream, name, None), out / stream / "configs" / f"{name}.yaml",
                                f"{name}, defaults"))
            best = tuned_dir / name / "trials.json"
            study = json.loads(best.read_text()) if best.exists() else {}
            chosen = (study.get("best") or {}).get("values")
            if chosen and chosen == (study.get("default") or {}).get("values"):
                print(f"{name}: the tuned setting is the default {chosen}; nothing more to run", flush=True)
            elif chosen:
                configs.append(dump(stream_config(stream, name, chosen), out / stream / "configs" / f"{name}_tuned.yaml",
                                    f"{name}, tuned on the tuning stream: {chosen}"))
        cmd = [sys.executable, "-m", "clight", "bench", *map(str, configs), "--seeds", *map(str, seeds), "--out",
               str(out / stream / "bench"), "--naive", "naive", "--joint", "joint",
               *(["--", "--trainer.max_epochs", str(epochs)] if epochs is not None else [])]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)


def cells(bench: Path, method: str, metric: str) -> dict[str, list[float]]:
    """Per seed: the final average and the forgetting of ``metric`` (class-IL), and task-IL's forgetting."""
    out: dict[str, list[float]] = {"average": [], "forgetting": [], "task_il_forgetting": []}
    for run in sorted((bench / method).glob("seed*/results.json")):
        results = json.loads(run.read_text())
        out["average"].append(results["summary"][metric]["average"])
        out["forgetting"].append(results["summary"][metric]["forgetting"])
        if "task_il_acc" in results["summary"]:
            out["task_il_forgetting"].append(results["summary"]["task_il_acc"]["forgetting"])
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a`` minus mean of ``b`` and the standard error of that difference (Welch)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return ma - mb, math.sqrt(sa**2 / len(a) + sb**2 / len(b)) if len(a) > 1 and len(b) > 1 else math.nan


def verdict_table(out: Path, streams: list[str], techniques: list[str]) -> str:
    lines = []
    for stream in streams:
        metric = STREAMS[stream][1]
        lower = metric == "ppl"
        bench = out / stream / "bench"
        naive = cells(bench, "naive", metric)
        if not naive["average"]:
            continue
        lines += [f"### {stream} ({metric}, {'lower' if lower else 'higher'} is better; {len(naive['average'])} seeds)",
                  "", "| method | final avg | Δ avg vs naive (± s.e.) | forgetting | Δ forgetting vs naive | "
                  "task-IL forgetting | Δ task-IL forgetting vs naive | verdict |", "|---|---|---|---|---|---|---|---|"]
        for method in ["naive", *[m for t in techniques for m in (t, f"{t}_tuned")]]:
            got = cells(bench, method, metric)
            if not got["average"]:
                continue
            (avg, s), (fgt, sf) = mean_std(got["average"]), mean_std(got["forgetting"])
            da, sa = difference(got["average"], naive["average"])
            df, sdf = difference(got["forgetting"], naive["forgetting"])
            better = -da if lower else da
            effects = []
            if abs(da) > 2 * sa:
                effects.append(f"{'improves' if better > 0 else 'worsens'} avg by {abs(da):.3g}")
            til = ""
            if got["task_il_forgetting"] and naive["task_il_forgetting"]:
                (tf, stf), (dt, sdt) = (mean_std(got["task_il_forgetting"]),
                                        difference(got["task_il_forgetting"], naive["task_il_forgetting"]))
                til = f"{tf:.3f} ± {stf:.3f} | {dt:+.3f} ± {sdt:.3f}"
                if abs(dt) > 2 * sdt:
                    effects.append(f"{'cuts' if dt < 0 else 'raises'} task-IL forgetting by {abs(dt):.3g}")
            verdict = "—" if method == "naive" else "; ".join(effects) or "no measurable benefit on this stream"
            lines.append(f"| {method} | {avg:.3f} ± {s:.3f} | {da:+.3f} ± {sa:.3f} | {fgt:.3f} ± {sf:.3f} | "
                         f"{df:+.3f} ± {sdf:.3f} | {til or '— | —'} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["1", "2", "all"], default="all")
    parser.add_argument("--techniques", nargs="+", default=list(TECHNIQUES), choices=TECHNIQUES)
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs in both phases (default: "
                        "each config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "protocol")
    args = parser.parse_args(argv)
    if args.phase in ("1", "all"):
        phase1(args.techniques, args.out / "phase1", args.trials, args.epochs)
    if args.phase in ("2", "all"):
        phase2(args.techniques, args.out / "phase1", args.out / "phase2", args.streams, args.seeds, args.epochs)
    table = verdict_table(args.out / "phase2", args.streams, args.techniques)
    (args.out / "verdicts.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
