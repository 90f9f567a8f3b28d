"""What a run does with its folder before and after training: on resume, the stream checkpoint and the mid-task
checkpoint are read and checked (another stream or other settings are refused by name, an unreadable mid-task
checkpoint is set aside); a fresh run removes the run it replaces only once every check passed, and a run that
fails before its first checkpoint removes what it wrote."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from clight.checkpoint import (
    MID_TASK_CHECKPOINT,
    STREAM_CHECKPOINT,
    TMP_SUFFIX,
    UnreadableCheckpoint,
    callback_key,
    load_module_state,
    read_mid_task_fingerprint,
    read_stream_checkpoint,
    remove_path,
    restore_callbacks,
)
from clight.datamodules.base import ContinualDataModule
from clight.errors import ClightConfigError
from clight.fingerprint import describe_differences, differences
from clight.options import warn
from clight.run_folder import (
    CHECKPOINTS,
    CONFIG,
    RESULTS,
    TENSORBOARD,
    mid_task_checkpoints,
    remove_run,
)
from clight.state import StreamState
from clight.stream import probe_metrics, stream_metrics


class ResumeMixin:
    """The run-folder part of :class:`~clight.runner.StreamRunner` (it provides ``options``, ``run_dir``,
    ``fingerprint``, ``continual_callbacks`` and ``_resume_from``)."""

    def _initial_state(self, module: pl.LightningModule, datamodule: ContinualDataModule) -> StreamState:
        """A fresh state, or on resume the state of the stream checkpoint (its fingerprints checked, its weights and
        callback states loaded) and the checked mid-task checkpoint of the task to continue. Writes nothing."""
        state = StreamState.fresh(datamodule.task_names, stream_metrics(module, datamodule), datamodule.probe_names,
                                  probe_metrics(module, datamodule), validation=bool(getattr(datamodule, "val_examples", None)))
        self._resume_from = None
        if not self.options.resume:
            return state
        path = self.run_dir / STREAM_CHECKPOINT
        if path.exists():  # else: a mid-task checkpoint of the first task (`check_run_dir` saw one)
            saved = read_stream_checkpoint(path)
            self._check_same_run(datamodule, saved.get("stream"), saved.get("run"), path)
            dropped = sorted(set(saved["callbacks"]) - {callback_key(cb) for cb in self.continual_callbacks})
            if dropped:
                raise ClightConfigError(
                    f"`--stream.resume`: the run in {str(self.run_dir)!r} trained with the callbacks {dropped}, which "
                    "this config drops. Resume with the callbacks of the original run, or start afresh with "
                    "`--stream.overwrite true` or a new `--stream.run_dir`."
                )
            load_module_state(module, saved["module"], saved.get("module_base"))
            restore_callbacks(saved, self.continual_callbacks)
            state.load_state_dict(saved["state"])
        if state.completed < len(datamodule.stage_names):
            self._resume_from = self._mid_task_checkpoint(datamodule, state.completed, after_finished=path.exists())
        return state

    def _mid_task_checkpoint(self, datamodule: ContinualDataModule, stage: int, *, after_finished: bool
                             ) -> Path | None:
        """The mid-task checkpoint to continue ``stage`` from, checked: an unreadable one is set aside (the task
        restarts from the end of the last finished one), one of another run is refused."""
        name = datamodule.stage_names[stage]
        path = self.run_dir / CHECKPOINTS / name / MID_TASK_CHECKPOINT
        if not path.exists():
            return None
        try:
            carried = read_mid_task_fingerprint(path)
        except UnreadableCheckpoint as err:
            start = "the end of the last finished task (stream.pt)" if after_finished else "the beginning of the stream"
            warn(f"the mid-task checkpoint {err}; task {name!r} restarts from {start}. It is kept as "
                  f"{path.name}.unreadable.")
            if rank_zero_only.rank == 0:
                aside = path.with_name(path.name + ".unreadable")
                remove_path(aside)
                os.replace(path, aside)
            return None
        if carried:
            self._check_same_run(datamodule, carried.get("stream"), carried.get("run"), path)
        return path

    def _check_same_run(self, datamodule: ContinualDataModule, stream: Any, run: Mapping[str, Any] | None,
                        path: Path) -> None:
        """Refuse a checkpoint of another stream or of a run with other settings, naming every difference."""
        problems = []
        expected = datamodule.fingerprint()
        if stream != expected:
            stream = stream or {}
            diff = [k for k in expected if stream.get(k) != expected[k]]
            problems.append(f"was written for a different stream (differs in {diff}: checkpoint tasks "
                            f"{stream.get('tasks')}, config tasks {expected['tasks']})")
        lines = differences(run, self.fingerprint) if run is not None else []  # None: written before clight kept it
        if lines:
            problems.append(f"was made with other settings: {describe_differences(lines)}")
        if problems:
            raise ClightConfigError(
                f"`--stream.resume`: {str(path)!r} {' and '.join(problems)}. Resume with the data and settings of the "
                f"original run (its {CONFIG}), or start afresh with `--stream.overwrite true` or a new "
                "`--stream.run_dir`."
            )

    def _finished(self, n: int) -> dict[str, Any]:
        """A resumed run that had already finished: reported, nothing written."""
        path = self.run_dir / RESULTS
        if rank_zero_only.rank == 0:
            print(f"clight: the run in {str(self.run_dir)!r} already finished its {n} task{'s' * (n != 1)}: nothing to "
                  f"resume, nothing changed ({path}).", flush=True)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def _start_folder(self) -> list[Path]:
        """Rank 0, once every check has passed: remove the run that ``overwrite`` replaces, or a resumed run's
        partial writes; return what this run will create (removed again if it fails before its first
        checkpoint)."""
        if self.options.overwrite and not self.options.resume:
            remove_run(self.run_dir)
        if self.options.resume:
            remove_path(self.run_dir / (STREAM_CHECKPOINT + TMP_SUFFIX))
            for tmp in (self.run_dir / CHECKPOINTS).glob(f"*/{MID_TASK_CHECKPOINT}{TMP_SUFFIX}"):
                remove_path(tmp)
        paths = [self.run_dir, self.run_dir / CONFIG, self.run_dir / TENSORBOARD, self.run_dir / CHECKPOINTS]
        return [p for p in paths if not p.exists()]

    def _discard(self, created: list[Path]) -> None:
        """After a failure: remove what this run created, unless a checkpoint to resume from exists."""
        if (self.run_dir / STREAM_CHECKPOINT).exists() or mid_task_checkpoints(self.run_dir):
            return
        for path in reversed(created):
            if path == self.run_dir:
                try:
                    path.rmdir()  # only if empty: anything else in it is not this run's
                except OSError:
                    pass
            else:
                remove_path(path)
