"""Base class of every continual-learning callback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from torch import Tensor

from clight.contracts import require
from clight.errors import ClightConfigError
from clight.task import TaskInfo


def current_task(trainer: pl.Trainer, fallback_index: int = 0) -> TaskInfo:
    """The task a trainer is fitting.

    clight's datamodules expose ``current_task`` (a :class:`~clight.task.TaskInfo`); any other datamodule (a
    user's own Lightning project calling ``trainer.fit`` once per task) gets ``task-<i>`` with ``i`` counted by
    the callback.
    """
    datamodule = getattr(trainer, "datamodule", None)
    info = getattr(datamodule, "current_task", None)
    if isinstance(info, TaskInfo):
        return info
    return TaskInfo(index=fallback_index, name=f"task-{fallback_index}")


def stream_seed(trainer: pl.Trainer, seed: int | None = None) -> int:
    """The seed a callback draws with: ``seed`` when given, else the datamodule's ``seed`` (0 when the datamodule
    has none, e.g. a user's own datamodule), so a draw is the same on every rank and on resume."""
    if seed is not None:
        return int(seed)
    return int(getattr(getattr(trainer, "datamodule", None), "seed", 0) or 0)


def is_sharded(strategy: Strategy) -> bool:
    """Whether ``strategy`` splits parameters across ranks (FSDP, DeepSpeed, model parallel)."""
    return isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy))


class ContinualCallback(Callback):
    """A Lightning callback that knows about task boundaries.

    Subclasses override :meth:`on_task_start` / :meth:`on_task_end`, and :meth:`loss_terms` to add terms to the
    training loss. They list what they need from the module and the datamodule as protocols of
    :mod:`clight.contracts` in ``module_contracts`` / ``stream_contracts``; ``setup`` checks them before any
    training and names what is missing. A callback that works on FSDP2-sharded parameters (Lightning's
    ``ModelParallelStrategy``, see :mod:`clight.sharding`) sets ``supports_sharded = True``; every other one
    refuses a sharded strategy in ``setup``, naming the strategy, ``sharded_reason`` and a way out. FSDP1
    (``FSDPStrategy``) and DeepSpeed are refused by every callback: they are not tested.

    ``on_task_start`` is dispatched from ``on_fit_start`` (from ``on_train_start`` under sharded strategies, which
    restore a checkpoint's callback state after ``on_fit_start``) and runs again when a task is resumed mid-way,
    so it must be idempotent (a subclass overriding ``on_train_start`` calls ``super()``); ``on_task_end`` is
    dispatched from ``on_train_end`` (the model still on its device) and runs exactly once per finished task
    (from ``on_fit_end`` when a resumed fit skips the training loop).

    Works in any Lightning project with one ``trainer.fit`` per task: the callback counts finished tasks itself.
    """

    module_contracts: tuple[type, ...] = ()  # protocols of clight.contracts that `setup` checks
    stream_contracts: tuple[type, ...] = ()
    supports_sharded: ClassVar[bool] = False
    sharded_reason: ClassVar[str] = "it has not been shown to work on sharded parameters"

    def __init__(self) -> None:
        super().__init__()
        self.tasks_seen = 0
        self._terms_collected = True

    # ---- task hooks for subclasses -------------------------------------------------------------------------
    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        """Called when training on ``task`` starts (or resumes)."""

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        """Called once when training on ``task`` has finished, before the model leaves the device."""

    # ---- loss terms ------------------------------------------------------------------------------------------
    @property
    def loss_term_names(self) -> tuple[str, ...]:
        """The names of the terms :meth:`loss_terms` returns (empty: the callback adds none)."""
        return ()

    def loss_terms(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                   outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """This training batch's terms, weighted, by name: each is added to the loss and logged as
        ``train/loss_<name>``. Called by :func:`clight.add_loss_terms` from the module's ``training_step``, after
        the task loss, once per micro-batch."""
        return {}

    # ---- Lightning hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and is_sharded(strategy):
            if not self.supports_sharded:
                raise ClightConfigError(
                    f"`{type(self).__name__}` cannot run under `{type(strategy).__name__}`: {self.sharded_reason}."
                    " Use `trainer.strategy: ddp` (or one device), or remove the callback."
                )
            if not isinstance(strategy, ModelParallelStrategy):
                raise ClightConfigError(
                    f"`{type(self).__name__}` runs on sharded parameters under FSDP2, i.e. Lightning's "
                    f"`ModelParallelStrategy` (which `ContinualModule` shards with `fully_shard`); it is not tested "
                    f"under `{type(strategy).__name__}`. Use `trainer.strategy: {{class_path: "
                    "lightning.pytorch.strategies.ModelParallelStrategy, init_args: {data_parallel_size: <devices>, "
                    "tensor_parallel_size: 1}}`, or `ddp`."
                )
        name = type(self).__name__
        for protocol in self.module_contracts:
            require(pl_module, protocol, who=name, role="module",
                    fix="Use `clight.ContinualModule`, add those members to your module (README: \"clight callbacks "
                        "in your own Lightning project\"), or remove the callback.")
        datamodule = getattr(trainer, "datamodule", None)
        if stage == "fit" and self.stream_contracts:
            for protocol in self.stream_contracts:
                require(datamodule, protocol, who=name, role="datamodule",
                        fix="Use a `clight.datamodules` stream, add those members to your datamodule, or remove the "
                            "callback.")
        if stage == "fit" and self.loss_term_names:
            _check_unique_terms(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._terms_collected = not self.loss_term_names

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not self._terms_collected:
            raise ClightConfigError(
                f"`{type(self).__name__}` adds the loss terms {list(self.loss_term_names)}, but "
                f"`{type(pl_module).__name__}.training_step` did not collect them: end it with "
                "`return clight.add_loss_terms(self, loss, batch, outputs)` (README: \"clight callbacks in your own "
                "Lightning project\"), or remove the callback."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._task_ended = False
        # Sharded strategies (ModelParallelStrategy, FSDP) restore a mid-task checkpoint, callback state included,
        # only after `on_fit_start`: under them the task starts from `on_train_start`, once any state is back.
        self._start_pending = bool(getattr(getattr(trainer, "strategy", None), "restore_checkpoint_after_setup",
                                           False))
        if not self._start_pending:
            self.on_task_start(trainer, pl_module, current_task(trainer, self.tasks_seen))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_pending_task(trainer, pl_module)

    def _start_pending_task(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(self, "_start_pending", False):
            self._start_pending = False
            self.on_task_start(trainer, pl_module, current_task(trainer, self.tasks_seen))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The end of the training loop, while the model is still on its device and the process group is up
        # (Lightning's `on_fit_end` runs after teardown has moved the model to the CPU).
        self._end_task(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Fallback: a fit resumed from a checkpoint taken after the task's last step skips the training loop and
        # with it `on_train_end`; the task still ends exactly once (on the CPU, after teardown).
        self._end_task(trainer, pl_module)

    def _end_task(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(self, "_task_ended", True):
            return
        self._start_pending_task(trainer, pl_module)  # a resumed fit that skipped the training loop
        self._task_ended = True
        self.on_task_end(trainer, pl_module, current_task(trainer, self.tasks_seen))
        self.tasks_seen += 1

    # ---- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain values and CPU tensors only (loadable with ``torch.load(weights_only=True)``)."""
        return {"tasks_seen": self.tasks_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks_seen = int(state_dict["tasks_seen"])


def _check_unique_terms(trainer: pl.Trainer) -> None:
    seen: dict[str, str] = {}
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, ContinualCallback):
            for term in cb.loss_term_names:
                if term in seen and seen[term] is not cb:
                    raise ClightConfigError(
                        f"callbacks: `{type(cb).__name__}` and `{type(seen[term]).__name__}` both add the loss term "
                        f"{term!r}; keep one of them (two instances of one technique add the same term).")
                seen[term] = cb


def add_loss_terms(module: pl.LightningModule, loss: Tensor, batch: Any, outputs: Mapping[str, Tensor], *,
                   batch_size: int | None = None) -> Tensor:
    """The task loss plus every loss term the trainer's continual callbacks add for this batch.

    The one call a LightningModule makes to support the loss-term techniques (Replay, DER, Distillation,
    FeatureDistillation, OrthogonalLoRA): end ``training_step`` with
    ``return clight.add_loss_terms(self, loss, batch, outputs)``. Each term is logged as ``train/loss_<name>``,
    the task loss as ``train/loss_task`` (when there are terms) and the sum as ``train/loss``.

    Args:
        module: the LightningModule (attached to a trainer).
        loss: the task loss of ``batch``.
        batch: the training batch, as ``training_step`` got it.
        outputs: the module's outputs on ``batch`` (``{"logits": ...}``, as its ``forward`` returns them).
        batch_size: for logging; default: the first dimension of ``outputs["logits"]``.
    """
    trainer = module.trainer
    size = batch_size if batch_size is not None else int(outputs["logits"].shape[0])
    total, any_term = loss, False
    for cb in trainer.callbacks:
        if isinstance(cb, ContinualCallback) and cb.loss_term_names:
            for name, term in cb.loss_terms(trainer, module, batch, outputs).items():
                module.log(f"train/loss_{name}", term, batch_size=size)
                total = total + term
                any_term = True
            cb._terms_collected = True
    if any_term:
        module.log("train/loss_task", loss, batch_size=size)
    module.log("train/loss", total, prog_bar=True, batch_size=size)
    return total


def logs_this_step(trainer: Any) -> bool:
    """Whether Lightning writes the step metrics of the optimizer step about to run (checked before it runs, in
    ``on_before_optimizer_step``), so that a value computed only on such steps is the one that gets logged. Lightning
    logs when ``(steps done + 1) % log_every_n_steps == 0``, not at ``global_step % n == 0``."""
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None:
        return bool(connector.should_update_logs)
    every = getattr(trainer, "log_every_n_steps", 1)
    return every > 0 and (trainer.global_step + 1) % every == 0
