"""The ``clight`` command and its subcommands.

``clight fit`` is LightningCLI (:mod:`clight.cli`); the others are small argparse programs, one module each, that
ship in the wheel. Run ``clight <command> --help`` for each one's options.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

#: subcommand -> (module with ``main(argv) -> int``, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("clight.cli", "train a model on a stream of tasks, one fresh Trainer per task (LightningCLI)"),
    "evaluate": ("clight.commands.evaluate", "evaluate a run's final model on its stream or on another one"),
    "bench": ("clight.commands.bench", "run configs over seeds and tabulate what each method costs and saves"),
    "report": ("clight.commands.report", "render runs as one self-contained HTML page comparing methods"),
    "export": ("clight.commands.export", "write a run's model in Hugging Face format (peft adapters, head)"),
    "merge": ("clight.commands.merge", "merge fine-tuned models: task arithmetic, TIES, DARE, MagMax, ..."),
    "tune": ("clight.commands.tune", "tune a config's hyperparameters on validation data (Optuna); write the best"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: clight <command> [options]", "", "Continual fine-tuning of pretrained models on PyTorch Lightning.",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`clight <command> --help` shows a command's options; e.g. `clight fit -c configs/quickstart.yaml`."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``clight`` console script."""
    # before any Hugging Face import: clight never downloads at run time
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if args else 2)
    if args[0] == "--version":
        from clight import __version__

        print(f"clight {__version__}")
        raise SystemExit(0)
    name = args[0]
    if name not in COMMANDS:
        print(f"clight: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (`clight --help`).",
              file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    if name == "fit":  # LightningCLI reads the subcommand itself; DDP ranks re-run sys.argv
        module.main(None if argv is None else args)
        return
    raise SystemExit(module.main(args[1:]))
