"""`drop_last`: every training batch of an epoch has the full batch size, and a too-small task is refused."""

from __future__ import annotations

import pytest
from clight_testing import tiny_stream

from clight.errors import ClightConfigError


def test_drop_last_keeps_only_full_batches() -> None:
    keep = tiny_stream(batch_size=7)
    drop = tiny_stream(batch_size=7, drop_last=True)
    for data in (keep, drop):
        data.prepare_stream()
        data.set_stage(0)
    n = len(keep.stage_train_examples())
    assert n % 7, "the task size must not be a multiple of the batch size for this test"
    kept = [len(b["input_ids"]) for b in keep.train_dataloader()]
    dropped = [len(b["input_ids"]) for b in drop.train_dataloader()]
    assert kept[-1] == n % 7 and sum(kept) == n
    assert dropped == [7] * (n // 7)


def test_drop_last_refuses_a_task_smaller_than_a_batch() -> None:
    data = tiny_stream(batch_size=10_000, drop_last=True)
    data.prepare_stream()
    data.set_stage(0)
    with pytest.raises(ClightConfigError, match="drop_last"):
        data.train_dataloader()
