"""Progress bar that names the task: ``task 2/5 · wordnet-artifacts · epoch 1``."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class TaskProgressBar(TQDMProgressBar):
    """TQDM progress bar whose training description names the task of the stream."""

    def __init__(self, task_label: str, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.task_label = task_label

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"{self.task_label} · epoch {trainer.current_epoch}")

    def init_validation_tqdm(self):  # noqa: ANN201 - tqdm type
        bar = super().init_validation_tqdm()
        bar.set_description(f"eval {self.task_label}")
        return bar
