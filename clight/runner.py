"""The stream runner: a fresh Trainer per task, the same module and callbacks throughout, a stream
checkpoint after every task, the task x task result matrix at the end."""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint, ProgressBar
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from clight.callback import ContinualCallback, is_sharded
from clight.checkpoint import (
    MID_TASK_CHECKPOINT,
    AtomicCheckpointIO,
    MidTaskCheckpoint,
    callback_states,
    module_checkpoint_state,
    write_stream_checkpoint,
)
from clight.datamodules.base import ContinualDataModule
from clight.errors import ClightConfigError
from clight.fingerprint import runner_fingerprint
from clight.options import StreamOptions, check_callbacks, check_trainer_kwargs
from clight.progress import TaskProgressBar
from clight.results import build_results, samples_markdown, stage_metrics, write_results
from clight.resume import ResumeMixin
from clight.run_folder import (
    CHECKPOINTS,
    RESULTS,
    check_run_dir,
)
from clight.state import StreamState
from clight.stream import prepare_stream
from clight.tb import StreamTensorBoardLogger
from clight.timing import StepTimer, machine_load, process_cpu_seconds


class StreamRunner(ResumeMixin):
    """Train a :class:`~clight.module.ContinualModule` on every task of a continual datamodule in turn.

    Args:
        trainer_kwargs: keyword arguments of :class:`lightning.pytorch.Trainer` (``callbacks`` included); the
            runner builds a fresh Trainer from them for every task, adding its logger, progress bar and
            checkpointing, and passing the *same* callback instances, so callback state lives on.
        options: :class:`StreamOptions`.
        seed: base seed; every task starts from ``seed + task index`` so a resumed run matches an
            uninterrupted one.
        config_text: resolved config (YAML) to store beside the results and in TensorBoard.
        run_fingerprint: every setting that shapes the result, as flat named values (``clight fit`` passes its
            whole config, :func:`clight.fingerprint.config_fingerprint`); a resume with any of them changed is
            refused by name. Default: what the runner can see itself (:func:`clight.fingerprint.runner_fingerprint`:
            the seed, the trainer's arguments, the continual callbacks and their arguments, the module's
            hyperparameters and optimizer, the datamodule's settings). The world size is always added.
        stage_hook: called as ``stage_hook(state, index)`` after every task's evaluation and stream checkpoint
            (``clight tune`` reports a trial's validation score there and may stop it); on every rank.
    """

    def __init__(
        self,
        trainer_kwargs: dict[str, Any] | None = None,
        options: StreamOptions | None = None,
        *,
        seed: int = 0,
        config_text: str | None = None,
        run_fingerprint: Mapping[str, Any] | None = None,
        stage_hook: Callable[[StreamState, int], None] | None = None,
    ) -> None:
        self.stage_hook = stage_hook
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
        check_trainer_kwargs(self.trainer_kwargs)
        check_callbacks(self.callbacks)
        self.run_fingerprint = dict(run_fingerprint) if run_fingerprint is not None else None
        self.fingerprint: dict[str, Any] = {}
        self._resume_from: Path | None = None  # the checked mid-task checkpoint of the first task to run
        # A strategy *instance* (e.g. `DDPStrategy(timeout=...)` from YAML) binds to the first Trainer that uses
        # it; every task's fresh Trainer gets its own copy of the pristine instance.
        strategy = self.trainer_kwargs.get("strategy")
        self._strategy_template = copy.deepcopy(strategy) if isinstance(strategy, Strategy) else None
        self.logger: StreamTensorBoardLogger | None = None
        self.timer = StepTimer()
        self._summary_shown = False

    @property
    def continual_callbacks(self) -> list[ContinualCallback]:
        return [cb for cb in self.callbacks if isinstance(cb, ContinualCallback)]

    # ---- public ------------------------------------------------------------------------------------------
    def run(self, module: pl.LightningModule, datamodule: ContinualDataModule) -> dict[str, Any]:
        """Run the whole stream and return the results (also written to ``run_dir/results.json``).

        Everything is checked before anything is written: the run folder, the data, the model, the optimizer, and
        on resume the checkpoints and the fingerprints. A run that fails before its first checkpoint removes what
        it wrote."""
        rank0 = rank_zero_only.rank == 0
        if rank0:  # other DDP ranks start once rank 0 trains, and find the folder rank 0 prepared
            check_run_dir(self.run_dir, resume=self.options.resume, overwrite=self.options.overwrite)
        self._prepare(module, datamodule)
        state = self._initial_state(module, datamodule)
        n = len(datamodule.stage_names)
        if self.options.resume and state.completed == n and (self.run_dir / RESULTS).is_file():
            return self._finished(n)
        created = self._start_folder() if rank0 else []
        try:
            return self._run(module, datamodule, state, n)
        except BaseException:
            if rank0:
                self._discard(created)
            raise

    def _run(self, module: pl.LightningModule, datamodule: ContinualDataModule, state: StreamState, n: int
             ) -> dict[str, Any]:
        self.logger = StreamTensorBoardLogger(str(self.run_dir))
        started = time.perf_counter()
        if self.config_text and state.completed == 0 and not state.initial_done:
            self._write_config()
        if self.options.eval_initial and not state.initial_done:
            trainer = self._trainer(label="initial", extra=[], eval_names=datamodule.eval_names,
                                    eval_label="before training")
            values, validation, _ = self._evaluate(trainer, module, datamodule)
            state.set_initial(values, validation)
            self.logger.log_metrics(stage_metrics(state, values, validation), step=0)
            self._log_samples(module, datamodule, "initial", 0)
            self._save_state(trainer, module, datamodule, state)
        for i in range(state.completed, n):
            self._run_stage(i, n, module, datamodule, state)
        results = build_results(state, tasks=datamodule.task_names, stages=datamodule.stage_names,
                                seconds=time.perf_counter() - started)
        if rank_zero_only.rank == 0:
            write_results(self.run_dir, results, state, self.logger)
        return results

    # ---- setup ------------------------------------------------------------------------------------------
    def _prepare(self, module: pl.LightningModule, datamodule: ContinualDataModule) -> None:
        """Read the stream and size the module (every input check on the way), check the optimizer's arguments,
        and take the run's fingerprint."""
        prepare_stream(module, datamodule)
        optimizer = module.check_optimizer() if hasattr(module, "check_optimizer") else None
        if self.run_fingerprint is not None:
            fingerprint = dict(self.run_fingerprint)
        else:
            fingerprint = runner_fingerprint(seed=self.seed, trainer_kwargs=self.trainer_kwargs,
                                             callbacks=self.continual_callbacks, module=module, datamodule=datamodule,
                                             optimizer=optimizer)
        fingerprint["world_size"] = self._world_size()
        self.fingerprint = fingerprint

    def _world_size(self) -> int:
        """The number of processes the trainer arguments start (what every task's Trainer will have)."""
        keys = ("accelerator", "strategy", "devices", "num_nodes", "plugins")
        kwargs = {k: v for k, v in self.trainer_kwargs.items() if k in keys}
        if self._strategy_template is not None:
            kwargs["strategy"] = copy.deepcopy(self._strategy_template)
        trainer = pl.Trainer(**kwargs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        return int(trainer.world_size)

    # ---- one task -----------------------------------------------------------------------------------------
    def _trainer(self, *, label: str, extra: list[Callback], budget: Any = None,
                 eval_names: list[str] | None = None, eval_label: str | None = None) -> pl.Trainer:
        kwargs = dict(self.trainer_kwargs)
        if self._strategy_template is not None:
            kwargs["strategy"] = copy.deepcopy(self._strategy_template)
        callbacks = [*self.callbacks, *extra]
        if kwargs.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(TaskProgressBar(label, eval_names=eval_names, eval_label=eval_label))
        if budget is not None and budget.max_epochs is not None:
            kwargs["max_epochs"] = budget.max_epochs
        if budget is not None and budget.max_steps is not None:
            kwargs["max_steps"] = budget.max_steps
        if self._summary_shown:  # the model summary is worth printing once per stream, not once per task
            kwargs["enable_model_summary"] = False
        self._summary_shown = True
        plugins = kwargs.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())  # checkpoints written beside their final path, then renamed
        kwargs.update(
            callbacks=callbacks, logger=self.logger, default_root_dir=str(self.run_dir),
            use_distributed_sampler=False, enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
            num_sanity_val_steps=0, plugins=plugins,
        )
        return pl.Trainer(**kwargs)

    def _run_stage(self, i: int, n: int, module: pl.LightningModule, datamodule: ContinualDataModule,
                   state: StreamState) -> None:
        datamodule.set_stage(i)
        name = datamodule.stage_names[i]
        ckpt_dir = self.run_dir / CHECKPOINTS / name
        resume_from = str(self._resume_from) if self._resume_from is not None else None
        self._resume_from = None  # only the first task to run continues mid-way
        extra: list[Callback] = [self.timer]
        if self.options.checkpoint_every_n_steps:
            extra.append(MidTaskCheckpoint(ckpt_dir / MID_TASK_CHECKPOINT, self.options.checkpoint_every_n_steps,
                                           {"run": self.fingerprint, "stream": datamodule.fingerprint()}))
        trainer = self._trainer(label=f"task {i + 1}/{n} · {name}", extra=extra, budget=datamodule.current_budget,
                                eval_names=datamodule.eval_names)
        pl.seed_everything(self.seed + i, workers=True, verbose=False)
        self.logger.step_offset = state.step_offset
        self.timer.times.clear()
        t0, cpu0 = time.perf_counter(), process_cpu_seconds()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        train_seconds = time.perf_counter() - t0
        load = machine_load(process_cpu_seconds() - cpu0, train_seconds)
        steps = trainer.global_step
        values, validation, eval_seconds = self._evaluate(trainer, module, datamodule)
        state.add_row(name, values, validation)
        self.logger.log_metrics(stage_metrics(state, values, validation), step=steps)
        self._log_samples(module, datamodule, name, state.step_offset + steps)
        state.step_offset += steps
        state.timing.append({
            "stage": name, "train_seconds": train_seconds, "eval_seconds": eval_seconds, "optimizer_steps": steps,
            "seconds_per_step": self.timer.mean_seconds, "resumed_mid_task": resume_from is not None, **load,
        })
        state.completed = i + 1
        self._save_state(trainer, module, datamodule, state)
        if trainer.is_global_zero and not self.options.keep_task_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        if self.stage_hook is not None:
            self.stage_hook(state, i)

    def _evaluate(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: ContinualDataModule
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]] | None, float]:
        """``(values, validation, seconds)``: every task's and probe's metrics, and with a validation split the
        tasks' metrics on it (a second pass, whose generated samples do not replace the test set's)."""
        t0 = time.perf_counter()
        trainer.validate(module, dataloaders=datamodule.eval_dataloaders(), verbose=False)
        names = datamodule.eval_names
        values = {names[i]: r for i, r in module.eval_results.items()}
        validation = None
        if getattr(datamodule, "val_examples", None):
            head = getattr(module, "head", None)
            samples = dict(getattr(head, "samples", None) or {})
            bars = [c for c in trainer.callbacks if isinstance(c, TaskProgressBar)]
            for bar in bars:
                bar.eval_names = [f"validation: {t}" for t in datamodule.task_names]
            trainer.validate(module, dataloaders=datamodule.validation_dataloaders(), verbose=False)
            validation = {datamodule.task_names[i]: r for i, r in module.eval_results.items()}
            for bar in bars:
                bar.eval_names = list(names)
            if samples:
                head.samples = samples
        return values, validation, time.perf_counter() - t0

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
                "stream": datamodule.fingerprint(), "run": self.fingerprint, "state": state.state_dict(),
                "module": module_state, "module_base": module_base, "callbacks": callbacks,
            })
        trainer.strategy.barrier("clight_stream_checkpoint")

    def _write_config(self) -> None:
        if pl.utilities.rank_zero.rank_zero_only.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.config_text)
        self.logger.add_text("config", "```yaml\n" + self.config_text + "\n```")
