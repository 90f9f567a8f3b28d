"""`on_task_end` runs once per task: from `on_train_end` (before Lightning's teardown moves the model off its
device), or from `on_fit_end` when a resumed fit finds the task already trained and skips the training loop."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from clight_testing import tiny_module, tiny_stream
from lightning.pytorch.callbacks import ModelCheckpoint

from clight import ContinualCallback


class Recorder(ContinualCallback):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.events.append("train_end")
        super().on_train_end(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.events.append("fit_end")
        super().on_fit_end(trainer, pl_module)

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task) -> None:
        self.events.append(f"task_end:{task.name}")


def _fit(callback: Recorder, tmp_path: Path, ckpt_path: str | None = None) -> None:
    pl.seed_everything(0, verbose=False)
    data = tiny_stream()
    data.prepare_stream()
    data.set_stage(0)
    module = tiny_module()
    module.configure_stream(num_classes=data.num_classes, task_classes=data.task_classes,
                            vocab_size=len(data.tokenizer))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=0, save_last=True,
                                 every_n_train_steps=3, enable_version_counter=False)
    trainer = pl.Trainer(max_steps=3, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[callback, checkpoint], use_distributed_sampler=False)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)


def test_task_ends_in_train_end_before_teardown(tmp_path: Path) -> None:
    recorder = Recorder()
    _fit(recorder, tmp_path)
    assert recorder.events == ["train_end", "task_end:wordnet-nature", "fit_end"]
    assert recorder.tasks_seen == 1


def test_resumed_fit_that_skips_training_still_ends_the_task_once(tmp_path: Path) -> None:
    _fit(Recorder(), tmp_path)  # writes last.ckpt at the task's last step
    resumed = Recorder()
    _fit(resumed, tmp_path, ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.events == ["fit_end", "task_end:wordnet-nature"]  # no training loop, no train_end
    assert resumed.tasks_seen == 1
