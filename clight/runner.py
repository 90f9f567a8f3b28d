"""The stream runner: a fresh Trainer per task, the same module and callbacks throughout, a stream
checkpoint after every task, the task x task result matrix at the end."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.strategies import Strategy

from clight.callback import ContinualCallback, is_sharded
from clight.checkpoint import (
    STREAM_CHECKPOINT,
    callback_key,
    callback_states,
    load_module_state,
    module_checkpoint_state,
    read_stream_checkpoint,
    restore_callbacks,
    write_stream_checkpoint,
)
from clight.datamodules.base import ContinualDataModule
from clight.errors import ClightConfigError
from clight.progress import TaskProgressBar
from clight.results import build_results, samples_markdown, stage_metrics, write_results
from clight.state import StreamState
from clight.stream import prepare_stream, probe_metrics, stream_metrics
from clight.tb import StreamTensorBoardLogger
from clight.timing import StepTimer


@dataclass
class StreamOptions:
    """Options of a stream run (the ``stream:`` section of a config).

    Args:
        run_dir: where results, TensorBoard events and checkpoints go.
        resume: continue the run in ``run_dir`` at the task (and mid-task step) where it stopped.
        overwrite: start afresh even if ``run_dir`` holds an earlier run (its checkpoints are deleted).
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


class StreamRunner:
    """Train a :class:`~clight.module.ContinualModule` on every task of a continual datamodule in turn.

    Args:
        trainer_kwargs: keyword arguments of :class:`lightning.pytorch.Trainer` (``callbacks`` included); the
            runner builds a fresh Trainer from them for every task, adding its logger, progress bar and
            checkpointing, and passing the *same* callback instances, so callback state lives on.
        options: :class:`StreamOptions`.
        seed: base seed; every task starts from ``seed + task index`` so a resumed run matches an
            uninterrupted one.
        config_text: resolved config (YAML) to store beside the results and in TensorBoard.
    """

    def __init__(
        self,
        trainer_kwargs: dict[str, Any] | None = None,
        options: StreamOptions | None = None,
        *,
        seed: int = 0,
        config_text: str | None = None,
    ) -> None:
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.options = options or StreamOptions()
        if self.options.checkpoint_every_n_steps < 0:
            raise ClightConfigError(
                f"`stream.checkpoint_every_n_steps` must be >= 0, got {self.options.checkpoint_every_n_steps}."
            )
        self.seed = seed
        self.config_text = config_text
        self.run_dir = Path(self.options.run_dir)
        self.callbacks: list[Callback] = list(self.trainer_kwargs.pop("callbacks", None) or [])
        # A strategy *instance* (e.g. `DDPStrategy(timeout=...)` from YAML) binds to the first Trainer that uses
        # it; every task's fresh Trainer gets its own copy of the pristine instance.
        strategy = self.trainer_kwargs.get("strategy")
        self._strategy_template = copy.deepcopy(strategy) if isinstance(strategy, Strategy) else None
        if self.trainer_kwargs.get("logger") not in (None, True, False):
            raise ClightConfigError(
                "`trainer.logger`: clight writes TensorBoard events itself (to `<run_dir>/tensorboard`, one "
                "monotonic step axis across the stream's tasks); remove `trainer.logger` from the config."
            )
        self.logger: StreamTensorBoardLogger | None = None
        self.timer = StepTimer()
        self._summary_shown = False

    @property
    def continual_callbacks(self) -> list[ContinualCallback]:
        return [cb for cb in self.callbacks if isinstance(cb, ContinualCallback)]

    # ---- public ------------------------------------------------------------------------------------------
    def run(self, module: pl.LightningModule, datamodule: ContinualDataModule) -> dict[str, Any]:
        """Run the whole stream and return the results (also written to ``run_dir/results.json``)."""
        self._prepare(module, datamodule)
        state = self._initial_state(module, datamodule)
        self.logger = StreamTensorBoardLogger(str(self.run_dir))
        started = time.perf_counter()
        if self.config_text and state.completed == 0 and not state.initial_done:
            self._write_config()
        if self.options.eval_initial and not state.initial_done:
            trainer = self._trainer(label="initial", extra=[])
            values, _ = self._evaluate(trainer, module, datamodule)
            state.set_initial(values)
            self.logger.log_metrics(stage_metrics(state, values), step=0)
            self._log_samples(module, datamodule, "initial", 0)
            self._save_state(trainer, module, datamodule, state)
        n = len(datamodule.stage_names)
        for i in range(state.completed, n):
            self._run_stage(i, n, module, datamodule, state)
        results = build_results(state, tasks=datamodule.task_names, stages=datamodule.stage_names,
                                seconds=time.perf_counter() - started)
        if pl.utilities.rank_zero.rank_zero_only.rank == 0:
            write_results(self.run_dir, results, state, self.logger)
        return results

    # ---- setup ------------------------------------------------------------------------------------------
    def _prepare(self, module: pl.LightningModule, datamodule: ContinualDataModule) -> None:
        prepare_stream(module, datamodule)
        keys = [callback_key(cb) for cb in self.continual_callbacks]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ClightConfigError(
                f"callbacks: two instances share the state key {dupes}; give one of them a distinct argument "
                "(their `state_key` must differ so their checkpoints don't overwrite each other)."
            )

    def _initial_state(self, module: pl.LightningModule, datamodule: ContinualDataModule) -> StreamState:
        path = self.run_dir / STREAM_CHECKPOINT
        state = StreamState.fresh(datamodule.task_names, stream_metrics(module, datamodule), datamodule.probe_names,
                                  probe_metrics(module, datamodule))
        if not self.options.resume:
            if path.exists() and not self.options.overwrite:
                raise ClightConfigError(
                    f"`stream.run_dir` {str(self.run_dir)!r} already holds a run ({STREAM_CHECKPOINT}). Pass "
                    "`--stream.resume true` to continue it, `--stream.overwrite true` to start afresh, or "
                    "choose another `--stream.run_dir`."
                )
            if self.options.overwrite and (self.run_dir / "checkpoints").exists():
                shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
                path.unlink(missing_ok=True)
            return state
        if not path.exists():
            return state  # nothing finished yet; a mid-task checkpoint of the first task may still exist
        saved = read_stream_checkpoint(path)
        expected = datamodule.fingerprint()
        if saved["stream"] != expected:
            diff = [k for k in expected if saved["stream"].get(k) != expected[k]]
            raise ClightConfigError(
                f"`--stream.resume`: {str(path)!r} was written for a different stream (differs in {diff}: "
                f"checkpoint tasks {saved['stream'].get('tasks')}, config tasks {expected['tasks']}). Resume "
                "with the original data and task list, or start a new `stream.run_dir`."
            )
        load_module_state(module, saved["module"], saved.get("module_base"))
        restore_callbacks(saved, self.continual_callbacks)
        state.load_state_dict(saved["state"])
        return state

    # ---- one task -----------------------------------------------------------------------------------------
    def _trainer(self, *, label: str, extra: list[Callback], budget: Any = None) -> pl.Trainer:
        kwargs = dict(self.trainer_kwargs)
        if self._strategy_template is not None:
            kwargs["strategy"] = copy.deepcopy(self._strategy_template)
        callbacks = [*self.callbacks, *extra]
        if kwargs.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(TaskProgressBar(label))
        if budget is not None and budget.max_epochs is not None:
            kwargs["max_epochs"] = budget.max_epochs
        if budget is not None and budget.max_steps is not None:
            kwargs["max_steps"] = budget.max_steps
        if self._summary_shown:  # the model summary is worth printing once per stream, not once per task
            kwargs["enable_model_summary"] = False
        self._summary_shown = True
        kwargs.update(
            callbacks=callbacks, logger=self.logger, default_root_dir=str(self.run_dir),
            use_distributed_sampler=False, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            num_sanity_val_steps=0,
        )
        return pl.Trainer(**kwargs)

    def _run_stage(self, i: int, n: int, module: pl.LightningModule, datamodule: ContinualDataModule,
                   state: StreamState) -> None:
        datamodule.set_stage(i)
        name = datamodule.stage_names[i]
        ckpt_dir = self.run_dir / "checkpoints" / name
        mid_ckpt = ckpt_dir / "last.ckpt"
        resume_from = str(mid_ckpt) if self.options.resume and mid_ckpt.exists() else None
        extra: list[Callback] = [self.timer]
        if self.options.checkpoint_every_n_steps:
            extra.append(ModelCheckpoint(
                dirpath=ckpt_dir, filename="last", save_top_k=0, save_last=True, enable_version_counter=False,
                every_n_train_steps=self.options.checkpoint_every_n_steps,
            ))
        trainer = self._trainer(label=f"task {i + 1}/{n} · {name}", extra=extra, budget=datamodule.current_budget)
        pl.seed_everything(self.seed + i, workers=True, verbose=False)
        self.logger.step_offset = state.step_offset
        self.timer.times.clear()
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        train_seconds = time.perf_counter() - t0
        steps = trainer.global_step
        values, eval_seconds = self._evaluate(trainer, module, datamodule)
        state.add_row(name, values)
        self.logger.log_metrics(stage_metrics(state, values), step=steps)
        self._log_samples(module, datamodule, name, state.step_offset + steps)
        state.step_offset += steps
        state.timing.append({
            "stage": name, "train_seconds": train_seconds, "eval_seconds": eval_seconds, "optimizer_steps": steps,
            "seconds_per_step": self.timer.mean_seconds, "resumed_mid_task": resume_from is not None,
        })
        state.completed = i + 1
        self._save_state(trainer, module, datamodule, state)
        if trainer.is_global_zero and not self.options.keep_task_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    def _evaluate(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: ContinualDataModule
                  ) -> tuple[dict[str, dict[str, float]], float]:
        t0 = time.perf_counter()
        trainer.validate(module, dataloaders=datamodule.eval_dataloaders(), verbose=False)
        names = datamodule.eval_names
        values = {names[i]: r for i, r in module.eval_results.items()}
        return values, time.perf_counter() - t0

    def _log_samples(self, module: pl.LightningModule, datamodule: ContinualDataModule, stage: str, step: int) -> None:
        """Generated answers of the evaluation just run, one TensorBoard text per task (``samples/<task>``)."""
        samples = getattr(getattr(module, "head", None), "samples", None) or {}
        names = datamodule.eval_names
        for index, rows in sorted(samples.items()):
            self.logger.add_text(f"samples/{names[index]}", samples_markdown(stage, rows), step)

    def _save_state(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: ContinualDataModule,
                    state: StreamState) -> None:
        # Sharded (FSDP) parameters and callback state are gathered on every rank (collectives); plain ones are
        # read on rank 0 only.
        if trainer.is_global_zero or is_sharded(trainer.strategy):
            module_state, module_base = module_checkpoint_state(module)
            callbacks = callback_states(self.continual_callbacks)
        if trainer.is_global_zero:
            write_stream_checkpoint(self.run_dir, {
                "stream": datamodule.fingerprint(), "state": state.state_dict(),
                "module": module_state, "module_base": module_base, "callbacks": callbacks,
            })
        trainer.strategy.barrier("clight_stream_checkpoint")

    def _write_config(self) -> None:
        if pl.utilities.rank_zero.rank_zero_only.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.config_text)
        self.logger.add_text("config", "```yaml\n" + self.config_text + "\n```")
