"""The stream runner: a fresh Trainer per task, the same module and callbacks throughout, a stream
checkpoint after every task, the task x task result matrix at the end."""

from __future__ import annotations

import copy
import datetime
import os
import platform
import resource
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import transformers
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.strategies import Strategy

from clight.callback import ContinualCallback, is_sharded
from clight.errors import ClightConfigError
from clight.functional import summarize
from clight.metrics import ResultMatrix
from clight.progress import TaskProgressBar
from clight.reporting import (
    figure_to_chw_uint8,
    format_summary_table,
    render_heatmap,
    save_figure_png,
    write_results_json,
)
from clight.sharding import gather_full
from clight.tb import StreamTensorBoardLogger
from clight.timing import StepTimer

STREAM_CHECKPOINT = "stream.pt"
# The runner evaluates with explicit loaders after each task, so fit has no val loader by design; and the train
# loader *is* resumable mid-epoch (ResumableBatchSampler skips the trained batches), which Lightning can't see.
warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
FORMAT_VERSION = 1


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

    # ---- public ------------------------------------------------------------------------------------------
    def run(self, module: pl.LightningModule, datamodule: Any) -> dict[str, Any]:
        """Run the whole stream and return the results (also written to ``run_dir/results.json``)."""
        self._prepare(module, datamodule)
        state = self._initial_state(module, datamodule)
        self.logger = StreamTensorBoardLogger(str(self.run_dir))
        started = time.perf_counter()
        if self.config_text and state["completed"] == 0 and not state["initial_done"]:
            self._write_config()
        if self.options.eval_initial and not state["initial_done"]:
            trainer = self._trainer(datamodule, label="initial", extra=[])
            values, _ = self._evaluate(trainer, module, datamodule)
            for name, matrix in state["matrices"].items():
                matrix.set_initial({t: v[name] for t, v in values.items()})
            state["initial_done"] = True
            self._save_state(trainer, module, datamodule, state)
        n = len(datamodule.stage_names)
        for i in range(state["completed"], n):
            self._run_stage(i, n, module, datamodule, state)
        results = self._results(datamodule, state, time.perf_counter() - started)
        self._write_results(results, datamodule, state)
        return results

    # ---- setup ------------------------------------------------------------------------------------------
    def _prepare(self, module: pl.LightningModule, datamodule: Any) -> None:
        prepare_stream(module, datamodule)
        keys = [getattr(cb, "state_key", type(cb).__qualname__) for cb in self._continual_callbacks()]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ClightConfigError(
                f"callbacks: two instances share the state key {dupes}; give one of them a distinct argument "
                "(their `state_key` must differ so their checkpoints don't overwrite each other)."
            )

    def _continual_callbacks(self) -> list[ContinualCallback]:
        return [cb for cb in self.callbacks if isinstance(cb, ContinualCallback)]

    def _initial_state(self, module: pl.LightningModule, datamodule: Any) -> dict[str, Any]:
        path = self.run_dir / STREAM_CHECKPOINT
        fresh = {
            "completed": 0, "initial_done": False, "step_offset": 0, "timing": [],
            "matrices": {m: ResultMatrix(datamodule.task_names, metric=m, higher_is_better=datamodule.higher_is_better)
                         for m in datamodule.metric_names},
        }
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
            return fresh
        if not path.exists():
            return fresh  # nothing finished yet; a mid-task checkpoint of the first task may still exist
        saved = torch.load(path, map_location="cpu", weights_only=True)
        expected = datamodule.fingerprint()
        if saved["stream"] != expected:
            diff = [k for k in expected if saved["stream"].get(k) != expected[k]]
            raise ClightConfigError(
                f"`--stream.resume`: {str(path)!r} was written for a different stream (differs in {diff}: "
                f"checkpoint tasks {saved['stream'].get('tasks')}, config tasks {expected['tasks']}). Resume "
                "with the original data and task list, or start a new `stream.run_dir`."
            )
        load_module_state(module, saved["module"], saved.get("module_base"))
        for cb in self._continual_callbacks():
            key = getattr(cb, "state_key", type(cb).__qualname__)
            if key not in saved["callbacks"]:
                raise ClightConfigError(
                    f"`--stream.resume`: the checkpoint has no state for callback {key!r}; resume with the "
                    f"callbacks of the original run ({sorted(saved['callbacks'])})."
                )
            cb.load_state_dict(saved["callbacks"][key])
        for name, matrix in fresh["matrices"].items():
            matrix.load_state_dict(saved["matrices"][name])
        fresh.update(completed=saved["completed"], initial_done=saved["initial_done"],
                     step_offset=saved["step_offset"], timing=saved["timing"])
        return fresh

    # ---- one task -----------------------------------------------------------------------------------------
    def _trainer(self, datamodule: Any, *, label: str, extra: list[Callback], budget: Any = None) -> pl.Trainer:
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

    def _run_stage(self, i: int, n: int, module: pl.LightningModule, datamodule: Any, state: dict[str, Any]) -> None:
        datamodule.set_stage(i)
        name = datamodule.stage_names[i]
        label = f"task {i + 1}/{n} · {name}"
        ckpt_dir = self.run_dir / "checkpoints" / name
        mid_ckpt = ckpt_dir / "last.ckpt"
        resume_from = str(mid_ckpt) if self.options.resume and mid_ckpt.exists() else None
        extra: list[Callback] = [self.timer]
        if self.options.checkpoint_every_n_steps:
            extra.append(ModelCheckpoint(
                dirpath=ckpt_dir, filename="last", save_top_k=0, save_last=True, enable_version_counter=False,
                every_n_train_steps=self.options.checkpoint_every_n_steps,
            ))
        trainer = self._trainer(datamodule, label=label, extra=extra, budget=datamodule.current_budget)
        pl.seed_everything(self.seed + i, workers=True, verbose=False)
        self.logger.step_offset = state["step_offset"]
        self.timer.times.clear()
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        train_seconds = time.perf_counter() - t0
        steps = trainer.global_step
        values, eval_seconds = self._evaluate(trainer, module, datamodule)
        for metric, matrix in state["matrices"].items():
            matrix.add_row(name, {t: v[metric] for t, v in values.items()})
        self._log_stage(state, values, steps)
        state["step_offset"] += steps
        state["timing"].append({
            "stage": name, "train_seconds": train_seconds, "eval_seconds": eval_seconds, "optimizer_steps": steps,
            "seconds_per_step": self.timer.mean_seconds, "resumed_mid_task": resume_from is not None,
        })
        state["completed"] = i + 1
        self._save_state(trainer, module, datamodule, state)
        if trainer.is_global_zero and not self.options.keep_task_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    def _evaluate(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any
                  ) -> tuple[dict[str, dict[str, float]], float]:
        t0 = time.perf_counter()
        trainer.validate(module, dataloaders=datamodule.eval_dataloaders(), verbose=False)
        values = {datamodule.task_names[i]: r for i, r in module.eval_results.items()}
        return values, time.perf_counter() - t0

    def _log_stage(self, state: dict[str, Any], values: dict[str, dict[str, float]], steps: int) -> None:
        metrics: dict[str, float] = {}
        for task, vals in values.items():
            for metric in state["matrices"]:
                metrics[f"eval/{task}/{metric}"] = vals[metric]
        for metric, matrix in state["matrices"].items():
            for key, value in seen_summary(matrix).items():
                if value is not None:
                    metrics[f"stream/{metric}/{key}"] = value
        self.logger.log_metrics(metrics, step=steps)

    def _save_state(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, state: dict[str, Any]
                    ) -> None:
        # Sharded (FSDP) parameters and callback state are gathered on every rank (collectives); plain ones are
        # read on rank 0 only.
        if trainer.is_global_zero or is_sharded(trainer.strategy):
            module_state, module_base = module_checkpoint_state(module)
            callback_states = self._callback_states()
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            payload = {
                "format_version": FORMAT_VERSION,
                "stream": datamodule.fingerprint(),
                "completed": state["completed"], "initial_done": state["initial_done"],
                "step_offset": state["step_offset"], "timing": state["timing"],
                "module": module_state, "module_base": module_base,
                "callbacks": callback_states,
                "matrices": {m: mat.state_dict() for m, mat in state["matrices"].items()},
            }
            tmp = self.run_dir / (STREAM_CHECKPOINT + ".tmp")
            torch.save(payload, tmp)
            tmp.replace(self.run_dir / STREAM_CHECKPOINT)
        trainer.strategy.barrier("clight_stream_checkpoint")

    def _callback_states(self) -> dict[str, Any]:
        return {getattr(cb, "state_key", type(cb).__qualname__): gather_full(cb.state_dict())
                for cb in self._continual_callbacks()}

    # ---- the end ------------------------------------------------------------------------------------------
    def _results(self, datamodule: Any, state: dict[str, Any], seconds: float) -> dict[str, Any]:
        timing = state["timing"]
        steps = sum(t["optimizer_steps"] for t in timing)
        per_step = [t["seconds_per_step"] for t in timing if t["seconds_per_step"] is not None]
        return {
            "tasks": datamodule.task_names,
            "stages": datamodule.stage_names,
            "primary_metric": datamodule.primary_metric,
            "matrices": {m: mat.to_dict() for m, mat in state["matrices"].items()},
            "summary": {m: mat.summary() for m, mat in state["matrices"].items()},
            "timing": {
                "stages": timing,
                "train_seconds": sum(t["train_seconds"] for t in timing),
                "eval_seconds": sum(t["eval_seconds"] for t in timing),
                "optimizer_steps": steps,
                "seconds_per_step": sum(per_step) / len(per_step) if per_step else None,
                "wall_seconds_this_process": seconds,
            },
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated() / 2**20
                                   if torch.cuda.is_available() and torch.cuda.is_initialized() else None),
            "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "environment": environment(),
        }

    def _write_config(self) -> None:
        if pl.utilities.rank_zero.rank_zero_only.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.config_text)
        self.logger.add_text("config", "```yaml\n" + self.config_text + "\n```")

    def _write_results(self, results: dict[str, Any], datamodule: Any, state: dict[str, Any]) -> None:
        if pl.utilities.rank_zero.rank_zero_only.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_results_json(self.run_dir / "results.json", results)
        for metric, matrix in state["matrices"].items():
            fig = render_heatmap(
                matrix.matrix, matrix.stages, matrix.task_names,
                title=f"{metric} after each task", metric=metric, higher_is_better=datamodule.higher_is_better,
            )
            save_figure_png(fig, self.run_dir / f"matrix_{metric}.png")
            self.logger.add_image(f"stream/matrix_{metric}", figure_to_chw_uint8(fig), state["step_offset"])
        self.logger.experiment.flush()
        for metric in results["matrices"]:
            print(format_summary_table(results["matrices"][metric]))
        print(f"results: {self.run_dir / 'results.json'}  ·  tensorboard --logdir {self.run_dir / 'tensorboard'}")


def environment() -> dict[str, Any]:
    """Where a run ran (for benchmark tables): library versions, CPU count and model, GPU name, finish time."""
    cpu_model = platform.processor() or None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu_model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu_model)
    except OSError:
        pass
    return {
        "python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(terse=True),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_stream(module: pl.LightningModule, datamodule: Any) -> None:
    """Read and tokenize the stream and size the module for it (what the runner does before the first task)."""
    if getattr(datamodule, "tokenizer_path", "") is None and getattr(module, "model_path", None) is not None:
        datamodule.tokenizer_path = str(module.model_path)
    datamodule.prepare_stream()
    if hasattr(module, "configure_stream"):
        tokenizer = getattr(datamodule, "tokenizer", None)
        module.configure_stream(
            num_classes=getattr(datamodule, "num_classes", None),
            task_classes=getattr(datamodule, "task_classes", None),
            vocab_size=len(tokenizer) if tokenizer is not None else None,
        )


def module_checkpoint_state(module: pl.LightningModule) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The module's weights for the stream checkpoint (CPU tensors): adapter-only for a peft
    :class:`~clight.module.ContinualModule` (see its ``checkpoint_state``), else the full state dict."""
    if hasattr(module, "checkpoint_state"):
        state, base = module.checkpoint_state()
        return gather_full(state), base
    return {k: v.detach().cpu() for k, v in gather_full(module.state_dict()).items()}, None


def load_module_state(module: pl.LightningModule, state: dict[str, torch.Tensor], base: dict[str, Any] | None) -> None:
    """Load what :func:`module_checkpoint_state` wrote (rebuilding adapters and checking the rebuilt base)."""
    if hasattr(module, "restore_checkpoint_state"):
        state = module.restore_checkpoint_state(state, base)
    module.load_state_dict(state)


def seen_summary(matrix: ResultMatrix) -> dict[str, float | None]:
    """Summary over the tasks trained so far: the leading square block of a sequential matrix (the whole
    row for a joint run)."""
    R = matrix.matrix
    k = R.shape[0]
    if len(matrix.stages) == 1 and matrix.stages[0] not in matrix.task_names:  # joint
        return summarize(R, matrix.initial, higher_is_better=matrix.higher_is_better)
    initial = matrix.initial[:k] if matrix.initial is not None else None
    return summarize(R[:k, :k], initial, higher_is_better=matrix.higher_is_better)
