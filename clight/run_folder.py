"""The run folder (``stream.run_dir``): what a run leaves in it, the checks made before a run writes anything
(writable; not another run's folder unless resumed or overwritten; something there to resume), and the removal of
an old run that ``stream.overwrite`` replaces."""

from __future__ import annotations

import os
from pathlib import Path

from clight.checkpoint import MID_TASK_CHECKPOINT, STREAM_CHECKPOINT, TMP_SUFFIX, remove_path
from clight.errors import ClightConfigError

RESULTS = "results.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
#: what a run writes into its folder (besides the matrix heatmaps, `matrix_<metric>.png`)
RUN_FILES = (RESULTS, STREAM_CHECKPOINT, CONFIG, CHECKPOINTS, TENSORBOARD, STREAM_CHECKPOINT + TMP_SUFFIX)


def run_artifacts(run_dir: Path) -> list[str]:
    """The names of the run files in ``run_dir`` (empty when it holds no run, or does not exist)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return [n for n in RUN_FILES if (run_dir / n).exists()] + sorted(p.name for p in run_dir.glob("matrix_*.png"))


def mid_task_checkpoints(run_dir: Path) -> list[Path]:
    """Every task's mid-task checkpoint in ``run_dir``."""
    return sorted((Path(run_dir) / CHECKPOINTS).glob(f"*/{MID_TASK_CHECKPOINT}"))


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, in one line, a run folder the run cannot use; writes nothing.

    Raises:
        ClightConfigError: ``resume`` and ``overwrite`` together; the folder (or the nearest folder above it that
            exists) is a file or not writable; a new run into a folder that holds a run, without ``overwrite``; a
            resume with nothing to resume.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ClightConfigError(
            "`stream.resume` and `stream.overwrite` contradict each other: `--resume` continues the run in "
            "`stream.run_dir`, `--stream.overwrite true` replaces it. Pass one of them."
        )
    base = run_dir
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        where = "is a file" if base == run_dir else f"is inside {str(base)!r}, which is a file"
        raise ClightConfigError(
            f"`stream.run_dir` {str(run_dir)!r} {where}, not a folder; choose another `--stream.run_dir`."
        )
    if not os.access(base, os.W_OK | os.X_OK):
        where = "" if base == run_dir else f" (its nearest existing parent {str(base)!r} is not writable)"
        raise ClightConfigError(
            f"`stream.run_dir` {str(run_dir)!r} cannot be written{where}: permission denied or a read-only "
            "filesystem. Choose a writable `--stream.run_dir`."
        )
    found = run_artifacts(run_dir)
    if resume:
        if not (run_dir / STREAM_CHECKPOINT).is_file() and not mid_task_checkpoints(run_dir):
            held = (f"; it holds {', '.join(found)} of a run stopped before its first checkpoint, so start it "
                    "afresh with `--stream.overwrite true` instead of `--resume`") if found else (
                "; check `stream.run_dir` (a mistyped folder?), or start a new run without `--resume`")
            raise ClightConfigError(
                f"`--stream.resume`: {str(run_dir)!r} holds no run to resume (no {STREAM_CHECKPOINT} and no "
                f"mid-task {MID_TASK_CHECKPOINT}){held}."
            )
    elif found and not overwrite:
        raise ClightConfigError(
            f"`stream.run_dir` {str(run_dir)!r} already holds a run ({', '.join(found)}). Pass "
            "`--stream.resume true` (`--resume`) to continue it, `--stream.overwrite true` to replace it, or choose "
            "another `--stream.run_dir`."
        )


def remove_run(run_dir: Path) -> None:
    """Remove the run in ``run_dir`` (its run files only; anything else in the folder stays)."""
    for name in run_artifacts(run_dir):
        remove_path(Path(run_dir) / name)
