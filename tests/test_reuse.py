"""clight callbacks in someone else's Lightning project: their own module, `trainer.fit` once per task."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from clight import ContinualCallback, TaskInfo


class TaskLog(ContinualCallback):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, TaskInfo]] = []

    def on_task_start(self, trainer, pl_module, task):
        self.events.append(("start", task))

    def on_task_end(self, trainer, pl_module, task):
        self.events.append(("end", task))


class UserModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callbacks_work_with_a_plain_lightning_module_and_one_fit_per_task(tmp_path) -> None:
    callback = TaskLog()
    module = UserModule()
    for task in range(2):
        data = TensorDataset(torch.randn(8, 4), torch.full((8,), task))
        trainer = pl.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(module, DataLoader(data, batch_size=4))
    assert [(kind, t.index, t.name) for kind, t in callback.events] == [
        ("start", 0, "task-0"), ("end", 0, "task-0"), ("start", 1, "task-1"), ("end", 1, "task-1")]
    assert callback.state_dict() == {"tasks_seen": 2}
