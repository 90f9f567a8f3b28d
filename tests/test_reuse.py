"""clight callbacks in someone else's Lightning project: their own module, `trainer.fit` once per task."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import clight
from clight import ContinualCallback, TaskInfo
from clight.callbacks import Distillation
from clight.errors import ClightConfigError


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


def _trainer(callbacks, tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_epochs=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


def test_callbacks_work_with_a_plain_lightning_module_and_one_fit_per_task(tmp_path) -> None:
    callback = TaskLog()
    module = UserModule()
    for task in range(2):
        data = TensorDataset(torch.randn(8, 4), torch.full((8,), task))
        _trainer([callback], tmp_path).fit(module, DataLoader(data, batch_size=4))
    assert [(kind, t.index, t.name) for kind, t in callback.events] == [
        ("start", 0, "task-0"), ("end", 0, "task-0"), ("start", 1, "task-1"), ("end", 1, "task-1")]
    assert callback.state_dict() == {"tasks_seen": 2}


# ---- a loss-term technique in a foreign module, through the one documented call ------------------------------
class MLPClassifier(pl.LightningModule):
    """A user's own module: a plain torch MLP on feature tensors, with the three methods of
    `clight.contracts.ContinualModel` and `clight.add_loss_terms` at the end of `training_step`."""

    def __init__(self, *, collect: bool = True) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6))
        self.collect = collect
        self.logged: dict[str, list[float]] = {}

    def forward(self, batch):
        return {"logits": self.net(batch["x"])}

    def task_loss(self, batch, outputs):
        return F.cross_entropy(outputs["logits"], batch["labels"])

    def per_example_loss(self, batch, outputs):
        return F.cross_entropy(outputs["logits"], batch["labels"], reduction="none")

    def training_step(self, batch, batch_idx):
        outputs = self(batch)
        loss = self.task_loss(batch, outputs)
        return clight.add_loss_terms(self, loss, batch, outputs) if self.collect else loss

    def log(self, name, value, *args, **kwargs):  # keep every logged value for the test
        self.logged.setdefault(name, []).append(float(value.detach() if torch.is_tensor(value) else value))
        super().log(name, value, *args, **kwargs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def _task_loader(task: int) -> DataLoader:
    g = torch.Generator().manual_seed(task)
    x = torch.randn(32, 6, generator=g) + 2.0 * task
    labels = torch.full((32,), 2 * task) + (x[:, 0] > 2.0 * task).long()  # two classes per task
    rows = [{"x": x[i], "labels": labels[i]} for i in range(32)]
    return DataLoader(rows, batch_size=8, collate_fn=lambda b: {k: torch.stack([r[k] for r in b]) for k in b[0]})


def test_a_foreign_module_gets_distillation_through_add_loss_terms(tmp_path) -> None:
    torch.manual_seed(0)
    module, lwf = MLPClassifier(), Distillation(alpha=0.5, temperature=2.0)
    teachers = []
    for task in range(3):
        before = len(module.logged.get("train/loss_distill", []))
        _trainer([lwf], tmp_path).fit(module, _task_loader(task))
        terms = module.logged["train/loss_distill"][before:]
        assert len(terms) == 4  # one term per training batch
        if task == 0:
            assert terms == [0.0] * 4  # no teacher before the first task ends
        else:  # the student starts as the teacher; once it moves, the previous task's model pulls on its outputs
            assert terms[0] == pytest.approx(0.0, abs=1e-7) and all(t > 1e-6 for t in terms[1:])
        teachers.append({k: v.clone() for k, v in lwf.teacher.items()})
    assert lwf.teacher_tasks == 3 and set(teachers[0]) == {n for n, _ in module.named_parameters()}
    assert not torch.equal(teachers[0]["net.0.weight"], teachers[2]["net.0.weight"])
    # the term is what Distillation computes from the snapshot: rebuild it by hand for one batch
    batch = next(iter(_task_loader(2)))
    with torch.no_grad():
        student = module(batch)["logits"]
        teacher = torch.func.functional_call(module, teachers[1], (batch,))["logits"]
    expected = F.kl_div(F.log_softmax(student / 2.0, -1), F.log_softmax(teacher / 2.0, -1), log_target=True,
                        reduction="batchmean") * 4.0
    lwf.teacher = teachers[1]
    assert torch.allclose(lwf.distillation_loss(module, batch, {"logits": student}), expected, atol=1e-6)


def test_a_module_that_does_not_collect_the_loss_terms_is_stopped_at_its_first_step(tmp_path) -> None:
    module = MLPClassifier(collect=False)
    with pytest.raises(ClightConfigError, match=r"`Distillation` adds the loss terms \['distill'\], but "
                                                r"`MLPClassifier.training_step` did not collect them.*add_loss_terms"):
        _trainer([Distillation()], tmp_path, max_steps=1).fit(module, _task_loader(0))


def test_a_module_without_the_contract_is_refused_before_training(tmp_path) -> None:
    with pytest.raises(ClightConfigError, match=r"`Distillation` needs a module that provides \['per_example_loss', "
                                                r"'task_loss'\]"):
        _trainer([Distillation()], tmp_path).fit(UserModule(), DataLoader(TensorDataset(torch.randn(4, 4))))
