"""Model merging: every method against a merge worked out by hand on 2x2 task vectors, and TaskVectorMerge's
task-end merge on a tiny model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clight.callbacks import TaskVectorMerge
from clight.callbacks.weight_space.merging import pack, unpack
from clight.functional.merging import (
    breadcrumbs,
    dare,
    magmax,
    merge,
    model_stock,
    task_arithmetic,
    ties,
    trim_magnitude,
)
from clight.task import TaskInfo

# two task vectors of one 2x2 parameter; entries listed row-major
T1 = {"w": torch.tensor([[1.0, -2.0], [3.0, 0.5]])}
T2 = {"w": torch.tensor([[-3.0, 1.0], [1.0, -0.25]])}


def _w(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(2, 2)


def test_task_arithmetic_by_hand() -> None:
    # 0.5 * (T1 + T2) = 0.5 * [-2, -1, 4, 0.25]
    assert torch.equal(task_arithmetic([T1, T2], scale=0.5)["w"], _w([-1.0, -0.5, 2.0, 0.125]))


def test_ties_by_hand() -> None:
    # trim to density 0.5 (k = 2 per tensor): T1 -> [0, -2, 3, 0]; T2 has |1| twice at the 2nd place, both kept
    # -> [-3, 1, 1, 0]. Elected signs of the sum [-3, -1, 4, 0]: [-, -, +, +]. Disjoint means: -3 (only T2 is
    # negative), -2 (only T1), (3 + 1) / 2 = 2, and 0 (no non-zero value).
    assert torch.equal(trim_magnitude(T2, 0.5)["w"], _w([-3.0, 1.0, 1.0, 0.0]))
    assert torch.equal(ties([T1, T2], density=0.5)["w"], _w([-3.0, -2.0, 2.0, 0.0]))
    assert torch.equal(ties([T1, T2], density=0.5, scale=2.0)["w"], _w([-6.0, -4.0, 4.0, 0.0]))


def test_dare_by_hand() -> None:
    # torch.rand(8, generator=Generator().manual_seed(0)) = [0.4963, 0.7682, 0.0885, 0.1320 | 0.3074, 0.6341,
    # 0.4901, 0.8964]; with p = 0.5 an entry survives when u >= 0.5 and is doubled:
    # T1 -> [0, -4, 0, 0], T2 -> [0, 2, 0, -0.5]; summed: [0, -2, 0, -0.5]
    merged = dare([T1, T2], drop_rate=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(merged["w"], _w([0.0, -2.0, 0.0, -0.5]))


def test_dare_without_drop_is_task_arithmetic() -> None:
    assert torch.equal(dare([T1, T2], drop_rate=0.0)["w"], task_arithmetic([T1, T2])["w"])


def test_magmax_by_hand() -> None:
    # per entry the value of larger magnitude: [-3, -2, 3, 0.5], times 0.5
    assert torch.equal(magmax([T1, T2], scale=0.5)["w"], _w([-1.5, -1.0, 1.5, 0.25]))


def test_breadcrumbs_by_hand() -> None:
    # bottom = top = 0.25 masks one smallest and one largest entry per tensor: T1 loses 0.5 and 3 -> [1, -2, 0, 0];
    # T2 loses -0.25 and -3 -> [0, 1, 1, 0]; summed: [1, -1, 1, 0]
    assert torch.equal(breadcrumbs([T1, T2], bottom=0.25, top=0.25)["w"], _w([1.0, -1.0, 1.0, 0.0]))


def test_model_stock_by_hand() -> None:
    vectors = [{"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0, 0.0]), "c": torch.tensor([1.0, 2.0])},
               {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([-2.0, 0.0]), "c": torch.tensor([1.0, 2.0])}]
    merged = model_stock(vectors)
    # a: cos = 1/sqrt(2), t = 2c / (1 + c) = 2 (sqrt(2) - 1); mean [1, 0.5]
    t = 2 * (math.sqrt(2) - 1)
    assert torch.allclose(merged["a"], torch.tensor([t, 0.5 * t]))
    assert torch.equal(merged["b"], torch.zeros(2))  # opposite vectors: cos -1, clamped to 0 -> t = 0 (the base)
    assert torch.allclose(merged["c"], torch.tensor([1.0, 2.0]))  # identical vectors: t = 1
    assert torch.equal(model_stock(vectors[:1])["a"], vectors[0]["a"])  # one model: itself


def test_merge_dispatches_and_rejects_unknown_methods() -> None:
    assert torch.equal(merge("magmax", [T1, T2])["w"], _w([-3.0, -2.0, 3.0, 0.5]))
    with pytest.raises(ValueError, match="average"):
        merge("average", [T1, T2])  # type: ignore[arg-type]


def test_sparse_packing_keeps_only_non_zero_entries() -> None:
    t = torch.tensor([[0.0, 1.5], [0.0, -2.0]])
    packed = pack(t, torch.float32, sparse=True)
    assert packed["index"].tolist() == [1, 3] and packed["value"].tolist() == [1.5, -2.0]
    assert torch.equal(unpack(packed), t)
    assert torch.equal(unpack(pack(t, torch.bfloat16, sparse=False)), t)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2, 2))
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)

    @property
    def device(self) -> torch.device:
        return self.w.device


def _task(cb: TaskVectorMerge, module: Tiny, index: int, trained: list[float]) -> None:
    trainer = SimpleNamespace(global_step=0, datamodule=SimpleNamespace(seed=0))
    task = TaskInfo(index=index, name=f"t{index}")
    cb.on_task_start(trainer, module, task)
    with torch.no_grad():
        module.w.copy_(_w(trained))  # what training on the task ended with
    cb.on_task_end(trainer, module, task)


def test_callback_magmax_over_a_stream_of_two_tasks() -> None:
    module, cb = Tiny(), TaskVectorMerge(method="magmax", scale=0.5)
    # pretrained w = 1; task 0 ends at 1 + T1; merged: 1 + 0.5 T1
    _task(cb, module, 0, [2.0, -1.0, 4.0, 1.5])
    assert torch.equal(module.w.detach(), _w([1.5, 0.0, 2.5, 1.25]))
    # continue_from finetuned: task 1 trains from 1 + T1 and ends at 1 + T1 + T2 = [-1, 0, 5, 1.25], whose task
    # vector from the pretrained weights is [-2, -1, 4, 0.25]; magmax with T1: [-2, -2, 4, 0.5], times 0.5
    trainer = SimpleNamespace(global_step=0, datamodule=SimpleNamespace(seed=0))
    cb.on_task_start(trainer, module, TaskInfo(index=1, name="t1"))
    assert torch.equal(module.w.detach(), _w([2.0, -1.0, 4.0, 1.5]))  # the fine-tuned weights are back
    cb.on_task_start(trainer, module, TaskInfo(index=1, name="t1"))  # a second start (resume) changes nothing
    assert torch.equal(module.w.detach(), _w([2.0, -1.0, 4.0, 1.5]))
    with torch.no_grad():
        module.w.copy_(_w([-1.0, 0.0, 5.0, 1.25]))
    cb.on_task_end(trainer, module, TaskInfo(index=1, name="t1"))
    assert torch.equal(module.w.detach(), _w([0.0, 0.0, 3.0, 1.25]))
    assert set(cb.pretrained) == {"w"}  # frozen parameters are not tracked
    assert torch.equal(module.frozen.detach(), torch.zeros(2))


def test_callback_ties_from_task_start_with_merged_continuation() -> None:
    module = Tiny()
    cb = TaskVectorMerge(method="ties", density=0.5, task_vector="from_task_start", continue_from="merged")
    _task(cb, module, 0, [2.0, -1.0, 4.0, 1.5])  # T1; trimmed: [0, -2, 3, 0]; merged 1 + that
    assert torch.equal(module.w.detach(), _w([1.0, -1.0, 4.0, 1.0]))
    assert cb.vectors[0]["w"]["index"].tolist() == [1, 2]  # stored sparse
    # task 1 starts from the merge and moves by T2; trimmed T2 = [-3, 1, 1, 0]; ties of both: [-3, -2, 2, 0]
    _task(cb, module, 1, [-2.0, 0.0, 5.0, 0.75])
    assert torch.equal(module.w.detach(), _w([-2.0, -1.0, 3.0, 1.0]))


def test_callback_state_round_trip_is_weights_only(tmp_path) -> None:
    module, cb = Tiny(), TaskVectorMerge(method="dare", drop_rate=0.5, storage_dtype="float16")
    _task(cb, module, 0, [2.0, -1.0, 4.0, 1.5])
    torch.save(cb.state_dict(), tmp_path / "s.pt")
    fresh = TaskVectorMerge(method="dare", drop_rate=0.5, storage_dtype="float16")
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert torch.equal(fresh.merged()["w"], cb.merged()["w"])
    assert cb.vectors[0]["w"]["value"].dtype == torch.float16
