"""``clight fit --print_config``: the resolved config as every task's Trainer will really get it.

jsonargparse's own ``--print_config`` prints the parsed arguments. ``clight fit`` builds one fresh Trainer per task
from the ``trainer`` section and sets a few arguments itself; this prints the config with those values filled in
(the logger, the root folder), and a header that lists what else each task's Trainer gets (its progress bar, the
stream's own callbacks and checkpoint plugin, the per-task budgets), so that what is printed is what runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jsonargparse import Namespace

PRINT_CONFIG = "--print_config"


def split_print_config(args: Sequence[str]) -> tuple[list[str], str | None]:
    """``args`` without ``--print_config[=flags]``, and the flags (``""`` when given bare, None when absent)."""
    kept, flags = [], None
    for arg in args:
        if arg == PRINT_CONFIG:
            flags = ""
        elif arg.startswith(PRINT_CONFIG + "="):
            flags = arg.split("=", 1)[1]
        else:
            kept.append(arg)
    return kept, flags


def runner_view(section: Namespace) -> list[str]:
    """Fill in the arguments the runner sets on ``section`` (the ``fit`` config) and return the header lines that
    say what else every task's Trainer gets."""
    trainer, stream = section["trainer"], section["stream"]
    run_dir = str(stream["run_dir"])
    trainer["logger"] = Namespace(class_path="clight.tb.StreamTensorBoardLogger", init_args=Namespace(save_dir=run_dir))
    trainer["default_root_dir"] = run_dir
    extra = []
    if trainer.get("enable_progress_bar") is not False:
        extra.append("TaskProgressBar (the task-named bar, unless a progress bar is listed)")
    extra.append("StepTimer (seconds per optimizer step, for results.json)")
    every = stream.get("checkpoint_every_n_steps") or 0
    if every:
        extra.append(f"MidTaskCheckpoint (every {every} steps, to {run_dir}/checkpoints/<task>/)")
    return [
        "# clight fit: one fresh Trainer per task from `trainer` below, as printed (logger and default_root_dir are",
        "# the runner's). Each task's Trainer also gets:",
        *(f"#   callback {name}" for name in extra),
        "#   plugin AtomicCheckpointIO (checkpoints are written beside their path, then renamed), unless one is given",
        "#   max_epochs / max_steps from the datamodule's per-task budget where it sets one",
        "#   enable_model_summary: false after the first task; enable_checkpointing: true only with a Checkpoint",
        "#   callback listed (the stream checkpoint is the runner's own, `<run_dir>/stream.pt`)",
    ]


def print_runner_config(parser: Any, section: Namespace, flags: str) -> None:
    """Print ``section`` (parsed by the subcommand's ``parser``) as the runner will use it."""
    header = runner_view(section)
    text = parser.dump(section, skip_none="skip_null" in flags, skip_check=True)
    print("\n".join(header) + "\n" + text, end="")
