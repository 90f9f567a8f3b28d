"""The task-named progress bar: training names the task, evaluation names the task or probe each loader holds."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from clight.progress import TaskProgressBar


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[str] = []

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        bar = next(c for c in self.trainer.callbacks if isinstance(c, TaskProgressBar))
        self.seen.append(bar.val_progress_bar.desc.removesuffix(": "))  # tqdm appends ": "


def test_the_evaluation_bar_names_each_task_and_probe_it_evaluates() -> None:
    loaders = [DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2) for _ in range(3)]
    bar = TaskProgressBar("task 2/2 · antonyms", eval_names=["hypernyms", "antonyms", "prose-ppl"])
    module = _Tiny()
    trainer = pl.Trainer(accelerator="cpu", callbacks=[bar], logger=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=loaders, verbose=False)
    assert module.seen == [f"eval after task 2/2 · antonyms: {n}" for n in
                           ("hypernyms", "hypernyms", "antonyms", "antonyms", "prose-ppl", "prose-ppl")]


def test_the_training_bar_shows_the_loss_but_not_the_loggers_version(tmp_path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    class Train(_Tiny):
        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    bar = TaskProgressBar("task 1/1 · t")
    trainer = pl.Trainer(accelerator="cpu", callbacks=[bar], logger=TensorBoardLogger(tmp_path, version="run"),
                         max_steps=2, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Train(), DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2))
    shown = bar.get_metrics(trainer, trainer.lightning_module)
    assert "train/loss" in shown and "v_num" not in shown
