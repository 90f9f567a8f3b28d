"""Progress bar that names the task: ``task 2/5 · wordnet-artifacts · epoch 1``, and while it evaluates, the task or
probe it evaluates: ``eval after task 2/5 · wordnet-artifacts: wordnet-verbs``."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class TaskProgressBar(TQDMProgressBar):
    """TQDM progress bar whose training description names the task of the stream."""

    def __init__(self, task_label: str, refresh_rate: int = 1, eval_names: list[str] | None = None,
                 eval_label: str | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.task_label = task_label
        self.eval_label = eval_label or f"after {task_label}"  # "eval <eval_label>: <loader's task or probe>"
        self.eval_names = list(eval_names or [])

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"{self.task_label} · epoch {trainer.current_epoch}")

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version is the run folder's name, the same for every task
        return metrics

    def init_validation_tqdm(self):  # noqa: ANN201 - tqdm type
        bar = super().init_validation_tqdm()
        bar.set_description(f"eval {self.eval_label}")
        return bar

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        changed = self._current_eval_dataloader_idx != dataloader_idx  # (has_dataloader_changed would record it)
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if changed and not trainer.sanity_checking:  # "eval after task 2/4 · hypernyms: antonyms", not "DataLoader 2"
            name = self.eval_names[dataloader_idx] if dataloader_idx < len(self.eval_names) else f"set {dataloader_idx}"
            self.val_progress_bar.set_description(f"eval {self.eval_label}: {name}")
