"""Per-step wall-clock timing of training (forward, backward, optimizer step)."""

from __future__ import annotations

import os
import resource
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


def process_cpu_seconds() -> float:
    """User and system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_load(cpu_seconds: float, wall_seconds: float) -> dict[str, float | None]:
    """How loaded the machine was while a task trained, for honest timings: the 1-minute load average at its end
    (this process's threads count too) and the process's CPU seconds per wall second (about the thread count when
    it ran alone, less when other work took its cores)."""
    return {"load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "cpu_over_wall": cpu_seconds / wall_seconds if wall_seconds > 0 else None}
