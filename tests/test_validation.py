"""Validation splits (`data.val_fraction`): seeded, disjoint from training, evaluated after every task beside the test
sets, saved with the stream checkpoint, and handed to the runner's per-task hook."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
from clight_testing import CrashAt, SimulatedCrash, run_stream, tiny_module, tiny_stream
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clight import StreamOptions, StreamRunner
from clight.datamodules.validation import split_validation
from clight.errors import ClightConfigError


def _key(example: dict) -> str:
    return json.dumps(example, sort_keys=True, default=str)


def test_the_split_is_seeded_disjoint_and_takes_its_share_of_every_task() -> None:
    whole = tiny_stream(num_tasks=2, eval_max_examples=None)
    whole.prepare_stream()
    split = tiny_stream(num_tasks=2, val_fraction=0.25, eval_max_examples=None)
    split.prepare_stream()
    again = tiny_stream(num_tasks=2, val_fraction=0.25, eval_max_examples=None)
    again.prepare_stream()
    other_seed = tiny_stream(num_tasks=2, val_fraction=0.25, eval_max_examples=None, seed=1)
    other_seed.prepare_stream()
    for i, examples in enumerate(whole.train_examples):
        train, val = split.train_examples[i], split.val_examples[i]
        assert len(val) == round(0.25 * len(examples)) and len(train) + len(val) == len(examples)
        assert {_key(e) for e in train}.isdisjoint(_key(e) for e in val)
        assert sorted(map(_key, train + val)) == sorted(map(_key, examples))  # nothing lost, nothing invented
        assert list(map(_key, val)) == list(map(_key, again.val_examples[i]))  # the same split every run
        assert list(map(_key, val)) != list(map(_key, other_seed.val_examples[i]))
    assert split.test_examples == whole.test_examples  # the test sets are untouched
    assert split.fingerprint() != whole.fingerprint()  # a resume cannot mix the two


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.2", True])
def test_a_val_fraction_outside_0_1_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ClightConfigError, match=r"`val_fraction` must be a number in \[0, 1\)"):
        tiny_stream(val_fraction=bad)


def test_a_split_that_would_leave_nothing_to_train_is_refused() -> None:
    with pytest.raises(ClightConfigError, match="task 'tiny'.*leaves none to train on"):
        split_validation([{"x": 1}], 0.5, seed=0, task_index=0, task="tiny")


def test_the_validation_matrix_is_reported_logged_and_matches_a_fresh_evaluation(tmp_path: Path) -> None:
    results, module = run_stream(tmp_path, [], max_steps=2, stream_kwargs={"val_fraction": 0.25})
    validation = results["validation"]
    matrix = validation["matrices"]["class_il_acc"]
    assert matrix["stages"] == ["wordnet-nature", "wordnet-artifacts"] and len(matrix["initial"]) == 2
    assert set(validation["summary"]) == set(results["summary"])
    assert validation["summary"]["class_il_acc"]["average"] == pytest.approx(sum(matrix["matrix"][-1]) / 2)
    # The last row is the final model on the validation split: evaluate it afresh and compare.
    data = tiny_stream(num_tasks=2, val_fraction=0.25)
    data.prepare_stream()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.validate(module, dataloaders=data.validation_dataloaders(), verbose=False)
    fresh = [module.eval_results[i]["class_il_acc"] for i in range(2)]
    assert matrix["matrix"][-1] == pytest.approx(fresh)
    assert [r["count"] for r in module.eval_results.values()] == [len(v) for v in data.val_examples]
    acc = EventAccumulator(str(tmp_path / "tensorboard" / tmp_path.name), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/wordnet-nature/class_il_acc")] == [0, 2, 4]
    assert "val_stream/class_il_acc/average" in acc.Tags()["scalars"]


def test_without_a_split_there_is_no_validation_matrix_and_every_task_records_its_machine_load(tmp_path: Path
                                                                                               ) -> None:
    results, _ = run_stream(tmp_path, [], max_steps=1)
    assert results["validation"] == {"matrices": {}, "summary": {}}
    for stage in results["timing"]["stages"]:
        assert stage["load_average"] >= 0 and 0 < stage["cpu_over_wall"] <= 64  # CPU seconds per wall second
    assert results["timing"]["cpu_over_wall"] == pytest.approx(
        sum(s["cpu_over_wall"] for s in results["timing"]["stages"]) / 2)


def test_a_resumed_run_keeps_the_validation_rows_it_had(tmp_path: Path) -> None:
    ref, _ = run_stream(tmp_path / "ref", [], max_steps=2, stream_kwargs={"val_fraction": 0.25})
    with pytest.raises(SimulatedCrash):
        run_stream(tmp_path / "b", [CrashAt(task=1, step=1)], max_steps=2, stream_kwargs={"val_fraction": 0.25})
    resumed, _ = run_stream(tmp_path / "b", [], max_steps=2, resume=True, stream_kwargs={"val_fraction": 0.25})
    assert resumed["validation"] == ref["validation"]


def test_the_stage_hook_sees_every_task_s_validation_row(tmp_path: Path) -> None:
    seen = []

    def hook(state, index):
        seen.append((index, state.completed, len(state.validation["class_il_acc"].stages)))

    pl.seed_everything(0, verbose=False)
    runner = StreamRunner(dict(max_steps=1, max_epochs=-1, accelerator="cpu", devices=1, enable_progress_bar=False,
                               enable_model_summary=False), StreamOptions(run_dir=str(tmp_path)), stage_hook=hook)
    runner.run(tiny_module(), tiny_stream(num_tasks=2, val_fraction=0.25))
    assert seen == [(0, 1, 1), (1, 2, 2)]
