"""``clight evaluate``: evaluate the final model of a ``clight fit`` run (the state after its last finished task)
on every task of its own stream, or of another stream.

The run's module, stream and continual callbacks are rebuilt from RUN_DIR/config.yaml and their state is loaded
from RUN_DIR/stream.pt (callbacks take part in evaluation as in the run: a per-task adapter serves its task).
``--config`` evaluates on another config's stream instead (one with the same classes, or any causal-LM stream).
Run it from the folder the run was started in: data paths in a config are relative to it.

    clight evaluate runs/quickstart                                   # its own stream
    clight evaluate runs/quickstart --config configs/other.yaml --out eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clight evaluate", description=__doc__.split("\n\n")[0].removeprefix(
        "``clight evaluate``: "), formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dir", help="the `stream.run_dir` of a finished (or partly finished) run")
    parser.add_argument("--config", type=Path, default=None, help="evaluate on this config's stream instead")
    parser.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (default: cpu)")
    parser.add_argument("--progress", action="store_true", help="show the evaluation progress bar")
    args = parser.parse_args(argv)
    from clight.errors import ClightConfigError

    try:
        report = evaluate(args.run_dir, config=args.config, accelerator=args.accelerator, progress=args.progress)
    except ClightConfigError as err:
        print(f"clight evaluate: error: {err}", file=sys.stderr)
        return 2
    width = max(len(t) for t in report["metrics"])
    names = report["metric_names"]
    print(f"{'task':<{width}}  " + "  ".join(f"{n:>12}" for n in names))
    for task, values in report["metrics"].items():
        print(f"{task:<{width}}  " + "  ".join(f"{values[n]:>12.4f}" for n in names))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def evaluate(run_dir: str | Path, *, config: str | Path | None = None, accelerator: str = "cpu",
             progress: bool = False) -> dict:
    """Evaluate a run's final model; returns ``{"run_dir", "stream", "completed_stages", "metric_names",
    "metrics": {task: {metric: value}}}``."""
    import lightning.pytorch as pl

    from clight.runs import build_from_config, load_run
    from clight.stream import prepare_stream, stream_metrics

    module, datamodule, saved, callbacks = load_run(run_dir, callbacks=True)
    stages = list(datamodule.stage_names)
    done = stages[: int(saved["state"]["completed"])]
    if config is not None:
        _, datamodule, _ = build_from_config(config)
        prepare_stream(module, datamodule)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, callbacks=list(callbacks),
                         enable_progress_bar=progress, enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(module, dataloaders=datamodule.eval_dataloaders(), verbose=False)
    metrics = {datamodule.task_names[i]: r for i, r in module.eval_results.items()}
    return {"run_dir": str(run_dir), "stream": datamodule.task_names, "completed_stages": done,
            "metric_names": list(stream_metrics(module, datamodule)), "metrics": metrics}
