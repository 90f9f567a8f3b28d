"""End-to-end runs of the stream runner on microscopic models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from clight_testing import CrashAt, SimulatedCrash, run_stream, tiny_module, tiny_stream
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clight import ContinualCallback, StreamOptions, StreamRunner
from clight.errors import ClightConfigError


def test_classification_stream_writes_results_heatmap_and_tensorboard(tmp_path: Path) -> None:
    results, module = run_stream(tmp_path, [], max_steps=3)
    assert [r["count"] for r in module.eval_results.values()] == [24, 24]  # every eval example counted once
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["tasks"] == ["wordnet-nature", "wordnet-artifacts"] == on_disk["stages"]
    assert on_disk["primary_metric"] == "class_il_acc"
    for metric in ("class_il_acc", "task_il_acc"):
        m = on_disk["matrices"][metric]
        assert len(m["matrix"]) == 2 and all(len(r) == 2 for r in m["matrix"])  # seen and unseen tasks
        assert len(m["initial"]) == 2
        assert set(on_disk["summary"][metric]) == {"average", "bwt", "fwt", "forgetting", "learning"}
        assert on_disk["summary"][metric]["average"] == pytest.approx(sum(m["matrix"][-1]) / 2)
        assert (tmp_path / f"matrix_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stages = on_disk["timing"]["stages"]
    assert [s["optimizer_steps"] for s in stages] == [3, 3]
    assert all(s["train_seconds"] > 0 and s["eval_seconds"] > 0 for s in stages)
    # TensorBoard: train loss on one monotonic step axis across tasks, eval metrics per task, matrix image.
    acc = EventAccumulator(str(tmp_path / "tensorboard" / tmp_path.name), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and max(steps) >= 5, steps
    assert "eval/wordnet-artifacts/class_il_acc" in tags["scalars"]
    assert [e.step for e in acc.Scalars("eval/wordnet-nature/class_il_acc")] == [0, 3, 6]  # before training too
    assert "stream/class_il_acc/average" in tags["scalars"]
    assert "stream/matrix_class_il_acc" in tags["images"]
    assert results["matrices"] == on_disk["matrices"] | {}  # returned == written (NaN-free here)


class _AddTerm(ContinualCallback):
    @property
    def loss_term_names(self):
        return ("l2_probe",)

    def loss_terms(self, trainer, pl_module, batch, outputs):
        return {"l2_probe": 0.0 * outputs["features"].pow(2).mean()}


def test_loss_terms_are_logged_under_their_names(tmp_path: Path) -> None:
    run_stream(tmp_path, [_AddTerm()], max_steps=2)
    acc = EventAccumulator(str(tmp_path / "tensorboard" / tmp_path.name), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"train/loss", "train/loss_task", "train/loss_l2_probe"} <= set(acc.Tags()["scalars"])


def test_joint_baseline_has_the_same_schema_with_one_row(tmp_path: Path) -> None:
    seq, _ = run_stream(tmp_path / "seq", [], max_steps=2)
    joint, _ = run_stream(tmp_path / "joint", [], max_steps=2, stream_kwargs={"joint": True})
    assert joint["stages"] == ["joint"] and joint["tasks"] == seq["tasks"]
    assert set(joint) == set(seq)
    m = joint["matrices"]["class_il_acc"]
    assert len(m["matrix"]) == 1 and len(m["matrix"][0]) == 2
    s = joint["summary"]["class_il_acc"]
    assert s["average"] is not None and s["bwt"] is None and s["forgetting"] is None


def test_task_incremental_restricts_training_softmax_and_reports_task_il_first(tmp_path: Path) -> None:
    results, module = run_stream(tmp_path, [], max_steps=2, stream_kwargs={"scenario": "task_incremental"})
    assert results["primary_metric"] == "task_il_acc"
    data = tiny_stream(scenario="task_incremental")
    data.prepare_stream()
    batch = data.collate(data.train_examples[1][:4])
    assert batch["class_mask"].shape == (4, 8)
    assert batch["class_mask"][:, 4:].all() and not batch["class_mask"][:, :4].any()


def test_causal_lm_stream_reports_perplexity_lower_is_better(tmp_path: Path) -> None:
    results, _ = run_stream(tmp_path, [], kind="causal_lm", max_steps=3)
    assert results["primary_metric"] == "ppl"
    m = results["matrices"]["ppl"]
    assert m["higher_is_better"] is False
    assert all(v > 1.0 for row in m["matrix"] for v in row)
    # training on the first domain lowers its perplexity from the random-init baseline
    assert m["matrix"][0][0] < m["initial"][0]


def test_rerun_into_a_used_run_dir_is_refused_with_a_way_out(tmp_path: Path) -> None:
    run_stream(tmp_path, [], max_steps=1)
    runner = StreamRunner({"max_steps": 1, "enable_progress_bar": False}, StreamOptions(run_dir=str(tmp_path)))
    with pytest.raises(ClightConfigError, match="--stream.resume true"):
        runner.run(tiny_module(), tiny_stream())


def test_resume_with_a_different_stream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SimulatedCrash):
        run_stream(tmp_path, [CrashAt(task=1, step=1)], max_steps=2)
    runner = StreamRunner({"max_steps": 2, "enable_progress_bar": False},
                          StreamOptions(run_dir=str(tmp_path), resume=True))
    other = tiny_stream(tasks=[{"name": "wordnet-nature"}, {"name": "wordnet-verbs-physical"}])
    with pytest.raises(ClightConfigError, match="different stream"):
        runner.run(tiny_module(), other)


@pytest.mark.parametrize(("task", "step"), [(0, 3), (1, 1)], ids=["mid-first-task", "between-tasks"])
def test_resume_equals_uninterrupted_run(tmp_path: Path, task: int, step: int) -> None:
    ref, ref_module = run_stream(tmp_path / "ref", [], max_steps=4)
    with pytest.raises(SimulatedCrash):
        run_stream(tmp_path / "b", [CrashAt(task=task, step=step)], max_steps=4)
    res, res_module = run_stream(tmp_path / "b", [], max_steps=4, resume=True)
    assert res["matrices"] == ref["matrices"]
    for name, value in ref_module.state_dict().items():
        assert torch.equal(value, res_module.state_dict()[name]), name
    assert res["timing"]["stages"][task]["resumed_mid_task"] is (step >= 2)


def test_user_logger_is_rejected_with_explanation(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    with pytest.raises(ClightConfigError, match="trainer.logger"):
        StreamRunner({"logger": CSVLogger(str(tmp_path))}, StreamOptions(run_dir=str(tmp_path)))
