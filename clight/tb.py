"""TensorBoard logging on one monotonic step axis across the fresh Trainer of every task."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class StreamTensorBoardLogger(TensorBoardLogger):
    """A TensorBoard logger shared by every task's Trainer.

    Each Trainer counts steps from zero; the runner sets :attr:`step_offset` to the optimizer steps of the
    tasks before, so ``train/loss`` of task 3 continues where task 2 stopped. Events go to
    ``<run_dir>/tensorboard/<run_dir's name>``, so TensorBoard names the run after its folder (also when it reads
    several runs' folders at once). Lightning's ``epoch`` scalar is left out: every task's Trainer restarts it.
    """

    def __init__(self, save_dir: str, **kwargs: Any) -> None:
        kwargs.setdefault("name", "tensorboard")
        kwargs.setdefault("version", Path(save_dir).resolve().name or "run")
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(save_dir, **kwargs)
        self.step_offset = 0

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if metrics:
            super().log_metrics(metrics, None if step is None else step + self.step_offset)

    @rank_zero_only
    def add_image(self, tag: str, chw: Any, step: int) -> None:
        self.experiment.add_image(tag, chw, step, dataformats="CHW")

    @rank_zero_only
    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        self.experiment.add_text(tag, text, step)
