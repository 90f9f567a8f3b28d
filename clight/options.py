"""The ``stream:`` options of a run, and the checks of the trainer arguments and callbacks the runner is given."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from clight.callback import ContinualCallback
from clight.checkpoint import (
    callback_key,
)
from clight.errors import ClightConfigError


@dataclass
class StreamOptions:
    """Options of a stream run (the ``stream:`` section of a config).

    Args:
        run_dir: where results, TensorBoard events and checkpoints go.
        resume: continue the run in ``run_dir`` at the task (and mid-task step) where it stopped; refused when any
            setting that shapes the result differs from the run's (each difference named), or when there is
            nothing to resume. A finished run is reported and left as it is.
        overwrite: replace the run in ``run_dir``: its files are removed once the new run has passed every check,
            just before it starts, so a run that fails its checks loses nothing and two runs never mix.
        eval_initial: evaluate every task before training (the baseline row needed for forward transfer).
        checkpoint_every_n_steps: mid-task checkpoint interval in optimizer steps (0 disables; then a killed task
            restarts from its beginning).
        keep_task_checkpoints: keep each finished task's mid-task checkpoint instead of deleting it.
    """

    run_dir: str = "runs/clight"
    resume: bool = False
    overwrite: bool = False
    eval_initial: bool = True
    checkpoint_every_n_steps: int = 50
    keep_task_checkpoints: bool = False


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_processes(kwargs: Mapping[str, Any]) -> int | None:
    """How many CPU processes the trainer arguments start (None: not a CPU run, or not a count clight reads)."""
    accelerator = kwargs.get("accelerator") or "auto"
    if not isinstance(accelerator, str):
        return None
    accelerator = accelerator.lower()
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    if accelerator in ("gpu", "cuda", "mps") and not gpu:
        raise ClightConfigError(
            f"`trainer.accelerator` is {accelerator!r}, but this machine has no usable GPU "
            f"(`torch.cuda.is_available()` is False, torch {torch.__version__}). Use `--trainer.accelerator cpu` "
            "(or `auto`), or run on a machine with a GPU."
        )
    if accelerator != "cpu" and not (accelerator == "auto" and not gpu):
        return None
    devices = kwargs.get("devices", "auto")
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    return None


# trainer arguments the stream runner sets itself on every task's Trainer: a value other than the one it uses
# would be silently ignored, so it is refused (the value, and why the runner sets it)
RUNNER_SETS: dict[str, tuple[tuple[Any, ...], str]] = {
    "logger": ((None, True, False), "clight writes TensorBoard events itself, to `<run_dir>/tensorboard` (one "
               "monotonic step axis across the stream's tasks)"),
    "default_root_dir": ((None,), "every file of a run goes to `stream.run_dir`; set that instead"),
    "use_distributed_sampler": ((False,), "the continual datamodule shards its batches over ranks itself"),
    "num_sanity_val_steps": ((0,), "the runner evaluates every task before and after training itself"),
}


def check_trainer_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse, in one line, trainer arguments that would train nothing, that the runner would ignore, or that would
    start more CPU processes than cores."""
    for key, (kept, why) in RUNNER_SETS.items():
        value = kwargs.get(key, kept[0])
        if not any(value is k or (type(value) is type(k) and value == k) for k in kept):
            raise ClightConfigError(
                f"`trainer.{key}` is {_short(value)}, but `clight fit` would ignore it: {why}. Remove "
                f"`trainer.{key}` from the config (`--print_config` shows what every task's Trainer gets)."
            )
    for key in ("max_steps", "max_epochs", "limit_train_batches"):
        value = kwargs.get(key)
        if value is not None and not isinstance(value, bool) and value == 0:
            raise ClightConfigError(
                f"`trainer.{key}` is 0, so no task would train and every row of the results would be the untrained "
                f"model's. Give a positive budget (e.g. `--trainer.{key} 1`), or leave it out."
            )
    processes, cores = _cpu_processes(kwargs), _available_cores()
    if processes is not None and processes > cores:
        raise ClightConfigError(
            f"`trainer.devices` asks for {processes} CPU processes, but this machine gives clight {cores} cores: the "
            f"processes would share cores and run slower than {cores} would. Use `--trainer.devices {cores}` or fewer."
        )


def check_callbacks(callbacks: Sequence[Callback]) -> None:
    """Refuse two stateful callbacks under one state key (their checkpoints would overwrite each other)."""
    seen: dict[str, Callback] = {}
    for cb in callbacks:
        if not (isinstance(cb, ContinualCallback) or is_overridden("state_dict", cb, Callback)):
            continue
        key = callback_key(cb)
        if key in seen:
            raise ClightConfigError(
                f"`trainer.callbacks`: {type(cb).__name__} is listed twice with the same state key {key!r}, so their "
                "states would overwrite each other in every checkpoint. List each technique once, or give the "
                "second one different arguments."
            )
        seen[key] = cb


def _short(value: Any) -> str:
    def name(v: Any) -> Any:
        return str(v["class_path"]).rsplit(".", 1)[-1] if isinstance(v, Mapping) and "class_path" in v else v

    text = repr([name(v) for v in value] if isinstance(value, (list, tuple)) else name(value))
    return text if len(text) <= 80 else text[:77] + "..."


def warn(message: str) -> None:
    if rank_zero_only.rank == 0:
        print(f"clight: warning: {message}", file=sys.stderr, flush=True)
