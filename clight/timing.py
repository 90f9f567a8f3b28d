"""Per-step wall-clock timing of training (forward, backward, optimizer step)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    """Measures each training batch from ``on_train_batch_start`` to ``on_train_batch_end``.

    With ``accumulate_grad_batches=1`` one batch is one optimizer step; the first ``warmup`` batches of each
    fit are excluded (allocator and kernel warm-up).
    """

    def __init__(self, warmup: int = 1) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._seen = 0
        self._t0 = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seen = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._seen += 1
        if self._seen > self.warmup:
            self.times.append(time.perf_counter() - self._t0)

    @property
    def mean_seconds(self) -> float | None:
        return sum(self.times) / len(self.times) if self.times else None
