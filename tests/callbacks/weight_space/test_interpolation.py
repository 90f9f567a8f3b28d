"""WeightInterpolation: the interpolation by hand for both anchors, the head left alone on request, and the
choice of alpha (lowest mean loss over the seen tasks, each task weighted equally; ties to the larger alpha)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import clight.callbacks.weight_space.interpolation as interpolation
from clight.callbacks import WeightInterpolation
from clight.task import TaskInfo


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.0, 4.0]))
        self.head = nn.Linear(1, 2)

    @property
    def device(self) -> torch.device:
        return self.w.device

    def output_head(self) -> nn.Module:
        return self.head


def _trainer(examples: list[list[int]] | None = None) -> SimpleNamespace:
    dm = SimpleNamespace(seed=0, joint=False, train_examples=examples or [], eval_batch_size=4)
    return SimpleNamespace(global_step=0, datamodule=dm)


def _task(cb: WeightInterpolation, module: Tiny, index: int, trained: list[float], trainer=None) -> None:
    trainer = trainer or _trainer()
    cb.on_task_start(trainer, module, TaskInfo(index=index, name=f"t{index}"))
    with torch.no_grad():
        module.w.copy_(torch.tensor(trained))
    cb.on_task_end(trainer, module, TaskInfo(index=index, name=f"t{index}"))


def test_pretrained_anchor_by_hand() -> None:
    module, cb = Tiny(), WeightInterpolation(alpha=0.25, anchor="pretrained")
    _task(cb, module, 0, [2.0, 0.0])  # 0.75 * [0, 4] + 0.25 * [2, 0]
    assert torch.equal(module.w.detach(), torch.tensor([0.5, 3.0]))
    _task(cb, module, 1, [4.5, 3.0])  # still toward the stream's start: 0.75 * [0, 4] + 0.25 * [4.5, 3]
    assert torch.equal(module.w.detach(), torch.tensor([1.125, 3.75]))
    assert cb.alphas == [0.25, 0.25]


def test_previous_anchor_by_hand() -> None:
    module, cb = Tiny(), WeightInterpolation(alpha=0.5, anchor="previous")
    _task(cb, module, 0, [2.0, 0.0])  # 0.5 * [0, 4] + 0.5 * [2, 0]
    assert torch.equal(module.w.detach(), torch.tensor([1.0, 2.0]))
    _task(cb, module, 1, [3.0, 0.0])  # 0.5 * [1, 2] + 0.5 * [3, 0]
    assert torch.equal(module.w.detach(), torch.tensor([2.0, 1.0]))


def test_head_is_kept_when_asked() -> None:
    module, cb = Tiny(), WeightInterpolation(alpha=0.5, interpolate_head=False)
    trainer = _trainer()
    cb.on_task_start(trainer, module, TaskInfo(index=0, name="t0"))
    with torch.no_grad():
        module.head.weight.fill_(3.0)
        module.w.copy_(torch.tensor([2.0, 0.0]))
    cb.on_task_end(trainer, module, TaskInfo(index=0, name="t0"))
    assert torch.equal(module.head.weight.detach(), torch.full((2, 1), 3.0))
    assert torch.equal(module.w.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("target, expected", [(0.6, 0.5), (None, 1.0)])
def test_auto_alpha_picks_the_lowest_mean_loss(monkeypatch, target, expected) -> None:
    # the "examples" are numbers; a fake model pass gives each the loss (w[0] - target)^2 * example, so the
    # per-task mean is minimal where w[0] is nearest to target. w[0] goes from 0 (anchor) to 1 (fine-tuned), so
    # w[0] = alpha. target None: every alpha has the same loss, and the tie goes to the larger alpha.
    seen_sizes = []

    def fake_forward(trainer, module, examples, fn, batch_size, collate=None):
        seen_sizes.append(len(examples))
        x = torch.tensor(examples, dtype=torch.float64)
        w0 = float(module.w[0].detach())
        return {"loss": x * ((w0 - target) ** 2 if target is not None else 1.0)}

    monkeypatch.setattr(interpolation, "forward_examples", fake_forward)
    module = Tiny()
    cb = WeightInterpolation(alpha="auto", alpha_grid=[0.0, 0.25, 0.5, 0.75, 1.0], selection_examples=3)
    trainer = _trainer([[1, 2, 3, 4, 5], [7, 8]])  # task 0 (5 examples), task 1 (2 examples)
    _task(cb, module, 1, [1.0, 4.0], trainer)
    assert cb.alphas == [expected]
    assert seen_sizes == [5] * 5  # 3 of task 0 + both of task 1, for each of the 5 candidates
    assert torch.equal(module.w.detach(), torch.tensor([expected, 4.0]))
