"""Replay and its memory: storage policies, compact storage, memory-mapping, draws, mixed rehearsal."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from clight_testing import assert_state_equal, fake_module, run_stream, tiny_module
from lightning.pytorch.plugins.precision import Precision

from clight.callbacks import Replay
from clight.callbacks._utils import seeded_generator
from clight.callbacks.rehearsal import ExampleMemory
from clight.callbacks.rehearsal.base import forward_examples
from clight.callbacks.rehearsal.memory import (
    balanced_quotas,
    choose,
    examples_to_rows,
    plan_insert,
    reservoir_plan,
)
from clight.errors import ClightConfigError
from clight.task import TaskInfo


def make_task(task: int, classes: list[int], per_class: int) -> list[dict]:
    return [{"input_ids": [101, task, c, i] + [102] * (i % 3), "label": c, "task": task}
            for c in classes for i in range(per_class)]


def offer(memory: ExampleMemory, examples: list[dict], policy: str, task: int, seed: int = 0,
          scores: torch.Tensor | None = None) -> None:
    """What the callbacks do at task end, without a trainer."""
    src, take = plan_insert(memory, examples, policy, seeded_generator(seed, task, 1), scores=scores)
    rows = examples_to_rows([examples[i] for i in take.tolist()]) if len(take) else \
        {k: v[:0] for k, v in memory.fields.items()}
    memory.update(src, rows)
    memory.seen += len(examples)


def stream(memory: ExampleMemory, policy: str, tasks: int = 5, seed: int = 0) -> list[ExampleMemory]:
    for t in range(tasks):
        offer(memory, make_task(t, [4 * t + c for c in range(4)], per_class=30), policy, t, seed)
    return memory


def test_balanced_quotas() -> None:
    assert balanced_quotas([50, 50, 50, 50], 200) == [50, 50, 50, 50]
    assert balanced_quotas([10, 100, 100], 200) == [10, 95, 95]
    assert balanced_quotas([3, 3, 3], 200) == [3, 3, 3]
    assert balanced_quotas([5, 5, 5], 10) == [4, 3, 3]
    assert balanced_quotas([0, 7], 4) == [0, 4]


def test_class_balanced_counts() -> None:
    memory = ExampleMemory(200)
    expected = {1: [30] * 4, 2: [25] * 8, 3: [17] * 8 + [16] * 4, 5: [10] * 20}
    for t in range(5):
        offer(memory, make_task(t, [4 * t + c for c in range(4)], per_class=30), "class_balanced", t)
        counts = Counter(memory.fields["label"].tolist())
        if t + 1 in expected:
            assert [counts[c] for c in sorted(counts)] == expected[t + 1], t
    assert memory.size == 200 and memory.seen == 600


def test_task_balanced_counts() -> None:
    memory = ExampleMemory(200)
    for t, want in enumerate([[120], [100, 100], [67, 67, 66], [50] * 4, [40] * 5]):
        offer(memory, make_task(t, [4 * t + c for c in range(4)], per_class=30), "task_balanced", t)
        counts = Counter(memory.fields["task"].tolist())
        assert [counts[k] for k in sorted(counts)] == want


def test_reservoir_counts_and_uniformity() -> None:
    memory = stream(ExampleMemory(200), "reservoir")
    counts = Counter(memory.fields["task"].tolist())
    assert memory.size == 200 and memory.seen == 600 and sum(counts.values()) == 200
    assert all(20 <= counts[t] <= 60 for t in range(5)), counts
    # every example of the stream is kept with probability capacity / seen: 10 of 40 over two tasks of 20
    kept_first = []
    for seed in range(300):
        src, take = reservoir_plan(0, 0, 10, 20, seeded_generator(seed, 0))
        src2, take2 = reservoir_plan(10, 20, 10, 20, seeded_generator(seed, 1))
        kept_first.append(int((src2 >= 0).sum()))
        assert len(src) == 10 and len(take) == 10 and len(src2) == 10
    mean = sum(kept_first) / len(kept_first)
    assert 4.4 < mean < 5.6, mean  # expectation 5 (binomial-ish spread: sd of the mean ≈ 0.09)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced", "task_balanced"])
def test_memory_identical_given_seed(policy: str) -> None:
    a = stream(ExampleMemory(50), policy, tasks=3, seed=7)
    b = stream(ExampleMemory(50), policy, tasks=3, seed=7)
    c = stream(ExampleMemory(50), policy, tasks=3, seed=8)
    assert_state_equal(a.state_dict(), b.state_dict())
    assert not torch.equal(a.fields["tokens"], c.fields["tokens"])


def test_highest_loss_selection() -> None:
    assert choose(torch.arange(6), 2, seeded_generator(0), torch.tensor([0.1, 5, 0.3, 9, 0.0, 1.0])).tolist() == [1, 3]
    memory = ExampleMemory(4)
    examples = make_task(0, [0, 1], per_class=4)  # labels 0,0,0,0,1,1,1,1
    offer(memory, examples, "class_balanced", 0, scores=torch.tensor([1.0, 7, 3, 2, 9, 0, 8, 4]))
    assert memory.fields["label"].tolist() == [0, 0, 1, 1]
    assert memory.examples(torch.arange(4)) == [examples[i] for i in (1, 2, 4, 6)]


def test_compact_storage_round_trips_examples() -> None:
    lm = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "task": 1}, {"input_ids": [9], "labels": [9], "task": 2}]
    for examples in (make_task(3, [0, 1], 3), lm):
        memory = ExampleMemory(10)
        memory.update(-(torch.arange(len(examples)) + 1), examples_to_rows(examples))
        assert memory.fields["tokens"].dtype == torch.int32 and memory.fields["tokens"].dim() == 2
        assert memory.examples(torch.arange(len(examples))) == examples


def test_memmap_memory_survives_reload(tmp_path: Path) -> None:
    ram = stream(ExampleMemory(40), "task_balanced", tasks=4)
    mapped = stream(ExampleMemory(40, tmp_path / "mem"), "task_balanced", tasks=4)
    for name in ram.fields:
        assert torch.equal(ram.fields[name], mapped.fields[name]), name
    assert sorted(p.name for p in (tmp_path / "mem").iterdir()) == ["gen-000003", "gen-000004"]
    state = mapped.state_dict()
    assert "fields" not in state  # referenced, not copied
    torch.save(state, tmp_path / "state.pt")
    reloaded = ExampleMemory(40, tmp_path / "mem")
    reloaded.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert reloaded.examples(torch.arange(40)) == ram.examples(torch.arange(40))
    with pytest.raises(ClightConfigError, match="memmap_dir"):
        ExampleMemory(40).load_state_dict(state)
    with pytest.raises(ClightConfigError, match="memory_size"):
        ExampleMemory(41, tmp_path / "mem").load_state_dict(state)


def fake_trainer(memory_examples: list[dict], rank: int = 0, world: int = 2, **dm: object) -> SimpleNamespace:
    datamodule = SimpleNamespace(seed=0, collate=lambda exs: exs, train_examples=[memory_examples], **dm)
    return SimpleNamespace(world_size=world, global_rank=rank, global_step=3, datamodule=datamodule)


def test_per_batch_draw_is_seeded_and_split_over_ranks() -> None:
    cb = Replay(memory_size=64, replay_batch_size=5)
    examples = make_task(0, list(range(4)), per_class=16)
    offer(cb.memory, examples, "reservoir", 0)
    module = SimpleNamespace(device=torch.device("cpu"))
    draws = [cb._memory_batch(fake_trainer(examples, rank=r), module, 1, 3, 0)[1] for r in (0, 1)]
    assert len(draws[0]) == len(draws[1]) == 5
    assert len(set(torch.cat(draws).tolist())) == 10  # ranks replay distinct rows of one global draw
    again = cb._memory_batch(fake_trainer(examples, rank=0), module, 1, 3, 0)[1]
    other_step = cb._memory_batch(fake_trainer(examples, rank=0), module, 1, 4, 0)[1]
    assert torch.equal(again, draws[0]) and not torch.equal(other_step, draws[0])


def test_mixed_mode_extends_and_clears_the_task_data() -> None:
    cb = Replay(memory_size=8, mode="mixed", mixed_ratio=2.5)
    old = make_task(0, [0, 1], per_class=4)
    offer(cb.memory, old, "reservoir", 0)
    new = make_task(1, [2], per_class=4)
    trainer = fake_trainer(old, world=1, extra_train_examples=[], stage_train_examples=lambda: new)
    trainer.datamodule.train_examples.append(new)
    cb.on_task_start(trainer, None, TaskInfo(index=1, name="t1"))
    extra = trainer.datamodule.extra_train_examples
    assert len(extra) == 10 and all(ex in old for ex in extra)
    assert Counter(map(str, extra)).most_common(1)[0][1] <= 2  # the memory repeats evenly
    cb.on_task_start(trainer, None, TaskInfo(index=1, name="t1"))
    assert trainer.datamodule.extra_train_examples == extra  # idempotent (task start reruns on resume)


def test_setup_rejects_class_balanced_on_causal_lm_and_half_built_datamodules() -> None:
    module = fake_module()
    trainer = fake_trainer([{"input_ids": [1, 2], "labels": [1, 2], "task": 0}], world=1)
    with pytest.raises(ClightConfigError, match="class_balanced"):
        Replay(policy="class_balanced").setup(trainer, module, "fit")
    half_built = SimpleNamespace(train_examples=[[{"input_ids": [1]}]])
    with pytest.raises(ClightConfigError, match=r"provides \['collate'\].*ExampleStream"):
        Replay().setup(SimpleNamespace(datamodule=half_built), module, "fit")
    bare = Replay()  # a datamodule without the members: the memory keeps rows of the training batches
    bare.setup(SimpleNamespace(datamodule=object(), strategy=None), module, "fit")
    assert bare.batch_rows is not None


def test_replay_in_a_stream_keeps_a_class_balanced_memory(tmp_path: Path) -> None:
    cb = Replay(memory_size=24, replay_batch_size=4, policy="class_balanced")
    run_stream(tmp_path / "run", [cb], num_tasks=3, max_steps=2)
    counts = Counter(cb.memory.fields["label"].tolist())
    assert sorted(counts) == list(range(12)) and set(counts.values()) == {2}
    assert cb.memory.fields["tokens"].dtype == torch.int32


def test_scoring_at_task_end_restores_every_module_mode() -> None:
    module = tiny_module(num_classes=3)
    module.configure_stream(num_classes=3)
    module.train()
    module.backbone.eval()  # as after `from_pretrained`: the backbone in eval mode while the head trains
    modes = [m.training for m in module.modules()]
    collate = lambda exs: {"input_ids": torch.tensor([ex["input_ids"] for ex in exs]),  # noqa: E731
                           "attention_mask": torch.ones(len(exs), 4, dtype=torch.long),
                           "labels": torch.tensor([ex["label"] for ex in exs])}
    trainer = SimpleNamespace(world_size=1, global_rank=0, precision_plugin=Precision(),
                              datamodule=SimpleNamespace(collate=collate))
    examples = [{"input_ids": [101, 5, i, 102], "label": i % 3, "task": 0} for i in range(5)]
    out = forward_examples(trainer, module, examples, lambda b, o: {"score": module.per_example_loss(b, o)}, 2)
    assert out["score"].shape == (5,)
    assert [m.training for m in module.modules()] == modes
