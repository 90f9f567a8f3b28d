"""``clight tune``: tune a config's hyperparameters on its validation data with Optuna, and write the best config.

Every trial is an ordinary `clight fit` run of the config with the trial's values, in its own folder under OUT
(`trials/<hash of the values>/`), scored on the run's *validation* matrix (the config needs
`data.init_args.val_fraction`); the test matrix is recorded but never used to choose. After every task a trial
reports its validation objective so far, and Optuna's median pruner stops trials that fall behind. The study
lives in OUT/study.db: rerun the same command after a kill and it continues with the trials it had (a trial
killed mid-run resumes from its checkpoint). A failed trial is recorded (trials.json) and the study goes on.
OUT/best.yaml is the best trial's config, for `clight fit -c`.

    clight tune -c configs/tune/ewc.yaml --space configs/tune/ewc.space.yaml --trials 12 --out runs/tune/ewc
    clight tune -c my.yaml --space my.space.yaml --objective average_minus_forgetting -- --trainer.max_epochs 1

A space file maps config paths (list entries by index) to distributions:
`trainer.callbacks.0.init_args.strength: {log_uniform: [0.1, 10000]}`, `{uniform: [0, 1]}`,
`{int: [1, 8]}`, `{choice: [a, b]}`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    from clight.tuning import OBJECTIVES

    parser = argparse.ArgumentParser(prog="clight tune", description=__doc__.split("\n\n")[0].removeprefix(
        "``clight tune``: "), formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("-c", "--config", type=Path, required=True, help="the `clight fit` config to tune")
    parser.add_argument("--space", type=Path, required=True, help="the search space (YAML)")
    parser.add_argument("--trials", type=int, default=12, help="finished trials the study should have")
    parser.add_argument("--out", type=Path, required=True, help="the study's folder")
    parser.add_argument("--objective", choices=OBJECTIVES, default="average",
                        help="what to maximize on the validation matrix (default: average)")
    parser.add_argument("--metric", default=None, help="the matrix to read (default: the run's headline metric)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--no-prune", action="store_true", help="run every trial to its end")
    args = parser.parse_args(argv)
    from clight.cli import command_setup
    from clight.errors import ClightConfigError
    from clight.tuning import load_space, run_study

    command_setup()

    if args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    if not args.config.is_file():
        parser.error(f"config {str(args.config)!r} does not exist")
    try:
        summary = run_study(args.config, load_space(args.space), out=args.out, trials=args.trials,
                            objective=args.objective, metric=args.metric, seed=args.seed, prune=not args.no_prune,
                            extra=extra)
    except ClightConfigError as err:
        print(f"clight tune: error: {err}", file=sys.stderr)
        return 2
    best, default = summary["best"], summary.get("default")
    if default:
        print(f"clight tune: the config's own setting {default['values']} (trial {default['number']}): "
              f"{args.objective} {default['value']:.4f}")
    states = [t["state"] for t in summary["trials"]]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states)))
    print(f"clight tune: {len(states)} trials ({counts}); best: trial {best['number']}, {args.objective} "
          f"{best['value']:.4f}, {best['values']} -> {args.out / 'best.yaml'}" if best else
          f"clight tune: {len(states)} trials ({counts}); none finished")
    return 0
