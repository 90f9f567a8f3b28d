"""Rows of the training batches (callbacks/_rows.py): what rehearsal, EWC, MAS and WiSE-FT's `alpha: auto` keep when
the datamodule has no `train_examples` — seeded, bounded, fixed-shape, checkpointed mid-task, gathered under DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from reuse_modules import task_rows  # tests/, on the path through conftest.py

from clight.callbacks._rows import TaskRows, reservoir_slots, stack_rows
from clight.callbacks._utils import seeded_generator
from clight.errors import ClightConfigError

TESTS = Path(__file__).resolve().parents[1]


def fake_trainer(epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(), global_rank=0, world_size=1, current_epoch=epoch,
                           sanity_checking=False)


def batches(n: int, size: int = 4):
    for b in range(n):
        x = torch.arange(b * size, (b + 1) * size, dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds i
        yield {"x": x, "labels": torch.arange(b * size, (b + 1) * size), "name": "not a tensor"}


def test_reservoir_keeps_every_row_with_equal_probability() -> None:
    kept = Counter()
    for seed in range(400):
        slots, rows = reservoir_slots(0, 5, 5, seeded_generator(seed))
        assert slots.tolist() == list(range(5)) and rows.tolist() == list(range(5))  # below capacity: all kept
        held = list(range(5))
        for b in range(3):  # 15 more rows, 5 at a time
            slots, rows = reservoir_slots(5 + 5 * b, 5, 5, seeded_generator(seed, b))
            for s, r in zip(slots.tolist(), rows.tolist()):
                held[s] = 5 + 5 * b + r
        kept.update(held)
    assert sorted(kept) == list(range(20))
    assert all(60 <= c <= 140 for c in kept.values()), kept  # expectation 400 * 5 / 20 = 100


def test_rows_are_a_seeded_sample_of_the_first_epoch_stacked_back_into_batches() -> None:
    samples = []
    for _ in range(2):
        rows = TaskRows(6, "Replay")
        rows.start(fake_trainer(), task_index=0)
        for batch in batches(5):
            rows.observe(fake_trainer(), batch, seed=3)
        rows.observe(fake_trainer(epoch=1), next(batches(1)), seed=3)  # a later epoch repeats rows: ignored
        samples.append(rows.gather(fake_trainer()))
    assert len(samples[0]) == 6 and rows.seen == 20
    batch = stack_rows(samples[0])
    assert set(batch) == {"x", "labels"} and batch["x"].shape == (6, 3)  # the non-tensor entry is left out
    assert torch.equal(batch["x"][:, 0].long(), batch["labels"])  # each row's fields stay together
    assert torch.equal(stack_rows(samples[1])["labels"], batch["labels"])  # the same seed, the same sample


def test_rows_resume_mid_task_from_a_checkpoint() -> None:
    whole, first = TaskRows(6, "EWC"), TaskRows(6, "EWC")
    for rows in (whole, first):
        rows.start(fake_trainer(), task_index=2)
    stream = list(batches(5))
    for batch in stream:
        whole.observe(fake_trainer(), batch, seed=0)
    for batch in stream[:2]:
        first.observe(fake_trainer(), batch, seed=0)
    resumed = TaskRows(6, "EWC")
    resumed.load_state_dict(first.state_dict())
    resumed.start(fake_trainer(), task_index=2)
    for batch in stream[2:]:
        resumed.observe(fake_trainer(), batch, seed=0)
    assert torch.equal(stack_rows(resumed.gather(fake_trainer()))["labels"],
                       stack_rows(whole.gather(fake_trainer()))["labels"])


def test_rows_need_fixed_shapes_and_dict_batches() -> None:
    rows = TaskRows(4, "Replay")
    rows.start(fake_trainer(), task_index=0)
    rows.observe(fake_trainer(), {"ids": torch.zeros(2, 8, dtype=torch.long)}, seed=0)
    with pytest.raises(ClightConfigError, match=r"`Replay`: batch field `ids` changed from \(8,\) torch.int64 to "
                                                r"\(9,\).*padding=\"max_length\""):
        rows.observe(fake_trainer(), {"ids": torch.zeros(2, 9, dtype=torch.long)}, seed=0)
    with pytest.raises(ClightConfigError, match=r"must be a dict of tensors .* got a `tuple`"):
        rows.observe(fake_trainer(), (torch.zeros(2, 8),), seed=0)


@pytest.mark.ddp
def test_under_ddp_every_rank_holds_the_same_rows_of_both_ranks_batches(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run([sys.executable, str(TESTS / "reuse_ddp_script.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    replay = [s["Replay"]["memory"]["fields"] for s in states]
    assert all(torch.equal(replay[0][k], replay[1][k]) for k in replay[0])  # identical memories
    assert sorted(replay[0]["task"].tolist()) == [0, 0, 0, 1, 1, 1]
    ewc = [s["EWC"]["importance"] for s in states]
    assert all(torch.equal(ewc[0][k], ewc[1][k]) for k in ewc[0])
    wise = [s["WeightInterpolation"] for s in states]
    assert wise[0]["alphas"] == wise[1]["alphas"] and len(wise[0]["samples"]) == 2
    assert all(torch.equal(wise[0]["samples"][t][k], wise[1]["samples"][t][k]) for t in range(2)
               for k in wise[0]["samples"][t])
    # the DistributedSampler gives rank 0 the even rows of a task and rank 1 the odd ones: both ranks' are kept
    data = torch.stack([r["x"] for r in task_rows("mlp", 0)])
    origin = {int((data == x).all(1).nonzero()) % 2 for x in wise[0]["samples"][0]["x"]}
    assert origin == {0, 1}
    mid = torch.load(tmp_path / "mid_task.ckpt", weights_only=True)["callbacks"]
    pooled = next(v for k, v in mid.items() if k.startswith("Replay"))["batch_rows"]["ranks"]
    assert len(pooled) == 2 and all(r["seen"] == 8 for r in pooled)  # one batch of 8 rows on each rank
    assert not torch.equal(pooled[0]["fields"]["x"], pooled[1]["fields"]["x"])  # each rank's own rows
