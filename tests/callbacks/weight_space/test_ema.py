"""EMAWeights: the average by hand (plain, warm-up, accumulation), the task-end copy and the fast weights'
return, the rows of new classes, and the swap for validation inside fit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from clight.callbacks import EMAWeights
from clight.task import TaskInfo


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.head = nn.Linear(1, 4)
        self.task_classes = [[0, 1], [2, 3]]
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    @property
    def device(self) -> torch.device:
        return self.w.device

    def output_head(self) -> nn.Module:
        return self.head


def _trainer(step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, datamodule=SimpleNamespace(joint=False),
                           state=SimpleNamespace(fn=TrainerFn.FITTING))


def _step(cb: EMAWeights, module: Tiny, step: int, w: list[float]) -> None:
    with torch.no_grad():
        module.w.copy_(torch.tensor(w))
    cb.on_train_batch_end(_trainer(step), module)


def test_average_by_hand_with_gradient_accumulation() -> None:
    module, cb = Tiny(), EMAWeights(decay=0.5)
    cb.on_task_start(_trainer(), module, TaskInfo(index=0, name="a"))
    _step(cb, module, 1, [1.0, 2.0])  # 0.5 * 0 + 0.5 * [1, 2] = [0.5, 1]
    _step(cb, module, 1, [9.0, 9.0])  # same global step: a micro-batch, no optimizer step, no update
    _step(cb, module, 2, [2.0, 0.0])  # 0.5 * [0.5, 1] + 0.5 * [2, 0] = [1.25, 0.5]
    assert torch.allclose(cb.ema["w"], torch.tensor([1.25, 0.5]))
    assert cb.num_updates == 2


def test_warmup_decay_by_hand() -> None:
    module, cb = Tiny(), EMAWeights(decay=0.9, warmup=True)
    cb.on_task_start(_trainer(), module, TaskInfo(index=0, name="a"))
    _step(cb, module, 1, [1.0, 1.0])  # n = 0: decay min(0.9, 1/10) = 0.1 -> 0.9
    _step(cb, module, 2, [2.0, 2.0])  # n = 1: decay 2/11 -> 2/11 * 0.9 + 9/11 * 2 = 1.8
    assert torch.allclose(cb.ema["w"], torch.tensor([1.8, 1.8]))


def test_every_n_steps() -> None:
    module, cb = Tiny(), EMAWeights(decay=0.5, every_n_steps=2)
    cb.on_task_start(_trainer(), module, TaskInfo(index=0, name="a"))
    _step(cb, module, 1, [4.0, 4.0])  # skipped
    _step(cb, module, 2, [2.0, 2.0])  # 0.5 * 0 + 0.5 * 2
    assert torch.equal(cb.ema["w"], torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("continue_from", ["ema", "fast"])
def test_task_end_installs_the_average_and_the_next_task_trains_from_the_chosen_weights(continue_from: str) -> None:
    module, cb = Tiny(), EMAWeights(decay=0.5, continue_from=continue_from)
    cb.on_task_start(_trainer(), module, TaskInfo(index=0, name="a"))
    _step(cb, module, 1, [4.0, 2.0])
    cb.on_task_end(_trainer(1), module, TaskInfo(index=0, name="a"))
    assert torch.equal(module.w.detach(), torch.tensor([2.0, 1.0]))  # evaluated and checkpointed: the EMA
    cb.on_task_start(_trainer(), module, TaskInfo(index=1, name="b"))
    expected = [2.0, 1.0] if continue_from == "ema" else [4.0, 2.0]
    assert torch.equal(module.w.detach(), torch.tensor(expected))
    assert torch.equal(cb.ema["w"], torch.tensor([2.0, 1.0]))  # the average goes on across tasks


def test_rows_of_new_classes_follow_the_fast_weights_in_their_task() -> None:
    module, cb = Tiny(), EMAWeights(decay=0.5)
    cb.on_task_start(_trainer(), module, TaskInfo(index=1, name="b"))  # classes 2 and 3 are new in task 1
    with torch.no_grad():
        module.head.weight.copy_(torch.tensor([[4.0], [4.0], [4.0], [4.0]]))
    cb.on_train_batch_end(_trainer(1), module)
    assert cb.ema["head.weight"].view(-1).tolist() == [2.0, 2.0, 4.0, 4.0]
    plain = EMAWeights(decay=0.5, new_class_rows="ema")
    module = Tiny()
    plain.on_task_start(_trainer(), module, TaskInfo(index=1, name="b"))
    with torch.no_grad():
        module.head.weight.fill_(4.0)
    plain.on_train_batch_end(_trainer(1), module)
    assert plain.ema["head.weight"].view(-1).tolist() == [2.0, 2.0, 2.0, 2.0]


def test_validation_inside_fit_sees_the_average() -> None:
    module, cb = Tiny(), EMAWeights(decay=0.5)
    cb.on_task_start(_trainer(), module, TaskInfo(index=0, name="a"))
    _step(cb, module, 1, [4.0, 2.0])
    cb.on_validation_start(_trainer(1), module)
    assert torch.equal(module.w.detach(), torch.tensor([2.0, 1.0]))
    cb.on_validation_end(_trainer(1), module)
    assert torch.equal(module.w.detach(), torch.tensor([4.0, 2.0]))
    assert torch.equal(cb.ema["w"], torch.tensor([2.0, 1.0]))
