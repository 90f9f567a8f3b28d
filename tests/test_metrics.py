"""Tests for clight.functional.metrics and clight.metrics."""

from __future__ import annotations

import doctest
import json
import math

import pytest
import torch

import clight.functional.metrics as fm
import clight.metrics as cm
from clight.functional import (
    SUMMARY_KEYS,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forward_transfer,
    learning_accuracy,
    summarize,
)
from clight.metrics import ResultMatrix

NAN = math.nan

# Accuracy (higher is better). Row i = after training task i, column j = task j.
ACC = [
    [0.9, 0.2, 0.1],
    [0.7, 0.8, 0.3],
    [0.6, 0.7, 0.9],
]
ACC_INITIAL = [0.1, 0.15, 0.2]

# Perplexity (lower is better).
PPL = [
    [10.0, 50.0, 60.0],
    [14.0, 12.0, 40.0],
    [16.0, 13.0, 11.0],
]
PPL_INITIAL = [80.0, 70.0, 90.0]


def approx(value: float) -> pytest.approx:
    return pytest.approx(value, abs=1e-12)


# --------------------------------------------------------------------------- accuracy


def test_accuracy_average() -> None:
    # (0.6 + 0.7 + 0.9) / 3 = 2.2 / 3
    assert average_accuracy(ACC) == approx(2.2 / 3)


def test_accuracy_bwt() -> None:
    # ((0.6 - 0.9) + (0.7 - 0.8)) / 2 = (-0.3 - 0.1) / 2 = -0.2
    assert backward_transfer(ACC) == approx(-0.2)


def test_accuracy_fwt() -> None:
    # ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((0.2 - 0.15) + (0.3 - 0.2)) / 2 = 0.15 / 2
    assert forward_transfer(ACC, ACC_INITIAL) == approx(0.075)


def test_accuracy_forgetting() -> None:
    # j=0: max(0.9, 0.7) - 0.6 = 0.3 ; j=1: max(0.8) - 0.7 = 0.1 ; mean = 0.2
    assert average_forgetting(ACC) == approx(0.2)


def test_accuracy_learning() -> None:
    # (0.9 + 0.8 + 0.9) / 3 = 2.6 / 3
    assert learning_accuracy(ACC) == approx(2.6 / 3)


def test_forgetting_only_counts_stages_after_learning() -> None:
    R = [
        [0.9, 0.6, 0.1],
        [0.8, 0.5, 0.2],
        [0.7, 0.4, 0.8],
    ]
    # j=0: max(0.9, 0.8) - 0.7 = 0.2
    # j=1: max over l in {1} only: 0.5 - 0.4 = 0.1   (R[0,1] = 0.6 is before training task 1)
    # mean = 0.15   (an unrestricted max would give (0.2 + 0.2) / 2 = 0.2)
    assert average_forgetting(R) == approx(0.15)


def test_forgetting_is_not_clamped() -> None:
    # Task 0 improves after training it: max(0.5) - 0.7 = -0.2 ; T=2 -> mean over one term
    assert average_forgetting([[0.5, 0.1], [0.7, 0.9]]) == approx(-0.2)


def test_accuracy_summarize() -> None:
    s = summarize(ACC, initial=ACC_INITIAL)
    assert list(s) == list(SUMMARY_KEYS) == ["average", "bwt", "fwt", "forgetting", "learning"]
    assert s["average"] == approx(2.2 / 3)
    assert s["bwt"] == approx(-0.2)
    assert s["fwt"] == approx(0.075)
    assert s["forgetting"] == approx(0.2)
    assert s["learning"] == approx(2.6 / 3)


def test_accepts_tensor_input() -> None:
    s_list = summarize(ACC, initial=ACC_INITIAL)
    s_tensor = summarize(torch.tensor(ACC, dtype=torch.float32), initial=torch.tensor(ACC_INITIAL))
    for key in SUMMARY_KEYS:
        assert s_tensor[key] == pytest.approx(s_list[key], abs=1e-6)


# --------------------------------------------------------------------------- perplexity


def test_perplexity_average() -> None:
    # (16 + 13 + 11) / 3 = 40 / 3
    assert average_accuracy(PPL, higher_is_better=False) == approx(40 / 3)


def test_perplexity_bwt_keeps_raw_difference() -> None:
    # ((16 - 10) + (13 - 12)) / 2 = (6 + 1) / 2 = 3.5   (positive = perplexity went up = forgot)
    assert backward_transfer(PPL, higher_is_better=False) == approx(3.5)


def test_perplexity_fwt_keeps_raw_difference() -> None:
    # ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((50 - 70) + (40 - 90)) / 2 = (-20 - 50) / 2 = -35
    # (negative = earlier tasks lowered the perplexity of the unseen task = beneficial)
    assert forward_transfer(PPL, PPL_INITIAL, higher_is_better=False) == approx(-35.0)


def test_perplexity_forgetting() -> None:
    # j=0: 16 - min(10, 14) = 6 ; j=1: 13 - min(12) = 1 ; mean = 3.5  (positive = forgot)
    assert average_forgetting(PPL, higher_is_better=False) == approx(3.5)
    # With the wrong orientation the max is used instead:
    # j=0: max(10, 14) - 16 = -2 ; j=1: 12 - 13 = -1 ; mean = -1.5
    assert average_forgetting(PPL, higher_is_better=True) == approx(-1.5)


def test_perplexity_learning() -> None:
    # (10 + 12 + 11) / 3 = 11
    assert learning_accuracy(PPL, higher_is_better=False) == approx(11.0)


def test_perplexity_summarize() -> None:
    s = summarize(PPL, initial=PPL_INITIAL, higher_is_better=False)
    assert list(s) == list(SUMMARY_KEYS)
    assert s == {
        "average": approx(40 / 3),
        "bwt": approx(3.5),
        "fwt": approx(-35.0),
        "forgetting": approx(3.5),
        "learning": approx(11.0),
    }


# --------------------------------------------------------------------------- NaN handling


def test_nan_in_history_is_ignored_by_forgetting() -> None:
    R = [[0.9, 0.2, 0.1], [NAN, 0.8, 0.3], [0.6, 0.7, 0.9]]
    # j=0: max(0.9, NaN -> ignored) - 0.6 = 0.3 ; j=1: 0.8 - 0.7 = 0.1 ; mean = 0.2
    assert average_forgetting(R) == approx(0.2)
    # BWT and average do not use R[1,0]: unchanged
    assert backward_transfer(R) == approx(-0.2)
    assert average_accuracy(R) == approx(2.2 / 3)


def test_nan_in_last_row_skips_terms() -> None:
    R = [[0.9, 0.2, 0.1], [0.7, 0.8, 0.3], [NAN, 0.7, 0.9]]
    # average over evaluated tasks: (0.7 + 0.9) / 2 = 0.8
    assert average_accuracy(R) == approx(0.8)
    # bwt: task 0 term is NaN -> skipped; (0.7 - 0.8) / 1 = -0.1
    assert backward_transfer(R) == approx(-0.1)
    # forgetting: task 0 term NaN -> skipped; (0.8 - 0.7) / 1 = 0.1
    assert average_forgetting(R) == approx(0.1)
    # learning uses the diagonal only: (0.9 + 0.8 + 0.9) / 3
    assert learning_accuracy(R) == approx(2.6 / 3)


def test_nan_in_diagonal_and_initial() -> None:
    R = [[0.9, 0.2, 0.1], [0.7, NAN, 0.3], [0.6, 0.7, 0.9]]
    # learning: (0.9 + 0.9) / 2 = 0.9
    assert learning_accuracy(R) == approx(0.9)
    # bwt: j=0: 0.6 - 0.9 = -0.3 ; j=1: NaN -> skipped
    assert backward_transfer(R) == approx(-0.3)
    # fwt with b1 = NaN: only j=2 term: 0.3 - 0.2 = 0.1
    assert forward_transfer(R, [0.1, NAN, 0.2]) == approx(0.1)


def test_all_nan_gives_nan_not_none() -> None:
    R = [[NAN, NAN], [NAN, NAN]]
    s = summarize(R, initial=[NAN, NAN])
    for key in SUMMARY_KEYS:
        assert s[key] is not None and math.isnan(s[key]), key


# --------------------------------------------------------------------------- non-square / degenerate


def test_joint_single_row() -> None:
    joint = [[0.6, 0.7, 0.9]]
    # (0.6 + 0.7 + 0.9) / 3
    assert average_accuracy(joint) == approx(2.2 / 3)
    assert backward_transfer(joint) is None
    assert forward_transfer(joint, [0.1, 0.1, 0.1]) is None
    assert average_forgetting(joint) is None
    assert learning_accuracy(joint) is None
    assert summarize(joint, initial=[0.1, 0.1, 0.1]) == {
        "average": approx(2.2 / 3),
        "bwt": None,
        "fwt": None,
        "forgetting": None,
        "learning": None,
    }


def test_partial_sequence_is_not_square() -> None:
    R = ACC[:2]  # 2 stages of a 3-task sequence
    assert average_accuracy(R) == approx((0.7 + 0.8 + 0.3) / 3)
    assert backward_transfer(R) is None
    assert average_forgetting(R) is None
    assert learning_accuracy(R) is None


def test_single_task() -> None:
    assert average_accuracy([[0.8]]) == approx(0.8)
    assert learning_accuracy([[0.8]]) == approx(0.8)
    assert backward_transfer([[0.8]]) is None
    assert forward_transfer([[0.8]], [0.1]) is None
    assert average_forgetting([[0.8]]) is None


def test_fwt_without_initial_is_none() -> None:
    assert forward_transfer(ACC, None) is None
    assert summarize(ACC)["fwt"] is None


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "bad, match",
    [
        ([0.1, 0.2, 0.3], r"R must be a 2-D matrix of shape \(S, T\); got shape \(3,\)"),
        ([[[0.1]]], r"R must be a 2-D matrix of shape \(S, T\); got shape \(1, 1, 1\)"),
        ([[]], r"R must have shape \(S, T\) with S >= 1 and T >= 1; got shape \(1, 0\)"),
        ([[0.1, 0.2], [0.3]], r"R must be a rectangular array of numbers"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [average_accuracy, backward_transfer, average_forgetting, learning_accuracy, summarize],
)
def test_invalid_matrix_raises(fn, bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn(bad)


def test_invalid_initial_raises() -> None:
    with pytest.raises(ValueError, match=r"initial must be a 1-D row of shape \(3,\).*got shape \(2,\)"):
        forward_transfer(ACC, [0.1, 0.2])
    with pytest.raises(ValueError, match=r"initial must be a 1-D row of shape \(3,\).*got shape \(1, 3\)"):
        summarize(ACC, initial=[ACC_INITIAL])


def test_doctests() -> None:
    for module in (fm, cm):
        result = doctest.testmod(module, raise_on_error=False, verbose=False)
        assert result.attempted > 0, module.__name__
        assert result.failed == 0, module.__name__


# --------------------------------------------------------------------------- ResultMatrix


TASKS = ["sst2", "rte", "boolq"]


def make_acc_matrix() -> ResultMatrix:
    rm = ResultMatrix(TASKS, metric="acc", higher_is_better=True)
    rm.set_initial(dict(zip(TASKS, ACC_INITIAL, strict=True)))
    for stage, row in zip(TASKS, ACC, strict=True):
        rm.add_row(stage, dict(zip(TASKS, row, strict=True)))
    return rm


def test_result_matrix_rows_and_summary() -> None:
    rm = make_acc_matrix()
    assert len(rm) == 3
    assert rm.stages == TASKS
    assert rm.task_names == TASKS
    assert rm.matrix.dtype == torch.float64
    assert rm.matrix.shape == (3, 3)
    torch.testing.assert_close(rm.matrix, torch.tensor(ACC, dtype=torch.float64))
    assert rm.summary() == summarize(ACC, initial=ACC_INITIAL)


def test_result_matrix_values_are_ordered_by_task_name() -> None:
    rm = ResultMatrix(TASKS)
    rm.add_row("s0", {"boolq": 0.3, "sst2": 0.1, "rte": 0.2})
    assert rm.matrix.tolist() == [[0.1, 0.2, 0.3]]


def test_result_matrix_missing_task_is_nan() -> None:
    rm = ResultMatrix(TASKS)
    rm.add_row("sst2", {"sst2": 0.9})
    row = rm.matrix[0]
    assert row[0].item() == pytest.approx(0.9)
    assert torch.isnan(row[1:]).all()
    rm.set_initial({"rte": 0.5})
    assert math.isnan(rm.initial[0]) and rm.initial[1] == 0.5 and math.isnan(rm.initial[2])


def test_result_matrix_unknown_task_raises() -> None:
    rm = ResultMatrix(TASKS)
    with pytest.raises(ValueError, match=r"unknown task name\(s\) \['mnli'\]"):
        rm.add_row("sst2", {"sst2": 0.9, "mnli": 0.5})
    assert len(rm) == 0  # nothing was appended
    with pytest.raises(ValueError, match="mnli"):
        rm.set_initial({"mnli": 0.5})


@pytest.mark.parametrize(
    "names, match",
    [([], "at least one task"), (["a", "a"], r"unique; duplicated: \['a'\]"), (["a", 1], "strings")],
)
def test_result_matrix_invalid_task_names(names, match) -> None:
    with pytest.raises(ValueError, match=match):
        ResultMatrix(names)


def test_result_matrix_empty() -> None:
    rm = ResultMatrix(TASKS)
    assert rm.matrix.shape == (0, 3)
    assert rm.summary() == dict.fromkeys(SUMMARY_KEYS)
    d = rm.to_dict()
    assert d["matrix"] == [] and d["stages"] == [] and d["initial"] is None
    json.dumps(d, allow_nan=False)


def test_result_matrix_joint_row() -> None:
    rm = ResultMatrix(TASKS)
    rm.add_row("joint", dict(zip(TASKS, ACC[2], strict=True)))
    s = rm.summary()
    assert s["average"] == approx(2.2 / 3)
    assert s["bwt"] is s["fwt"] is s["forgetting"] is s["learning"] is None


def test_result_matrix_lower_is_better() -> None:
    rm = ResultMatrix(TASKS, metric="ppl", higher_is_better=False)
    rm.set_initial(dict(zip(TASKS, PPL_INITIAL, strict=True)))
    for stage, row in zip(TASKS, PPL, strict=True):
        rm.add_row(stage, dict(zip(TASKS, row, strict=True)))
    assert rm.summary()["forgetting"] == approx(3.5)
    assert rm.to_dict()["higher_is_better"] is False


def test_result_matrix_state_dict_round_trip(tmp_path) -> None:
    rm = make_acc_matrix()
    rm.add_row("extra", {"sst2": 0.5})  # NaN entries must survive
    path = tmp_path / "rm.pt"
    torch.save(rm.state_dict(), path)
    state = torch.load(path, weights_only=True)

    restored = ResultMatrix(TASKS, metric="acc")
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.matrix, rm.matrix, equal_nan=True)
    assert restored.stages == rm.stages
    assert restored.initial == rm.initial
    assert restored.to_dict() == rm.to_dict()

    rebuilt = ResultMatrix.from_state_dict(state)
    torch.testing.assert_close(rebuilt.matrix, rm.matrix, equal_nan=True)
    assert rebuilt.metric == "acc" and rebuilt.higher_is_better is True


def test_result_matrix_state_dict_is_plain_python() -> None:
    def check(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str)
                check(item)
        elif isinstance(value, list):
            for item in value:
                check(item)
        else:
            assert value is None or type(value) in (str, float, int, bool), type(value)

    check(make_acc_matrix().state_dict())


def test_result_matrix_load_state_dict_mismatch() -> None:
    state = make_acc_matrix().state_dict()
    with pytest.raises(ValueError, match="saved for tasks"):
        ResultMatrix(["sst2", "rte"]).load_state_dict(state)
    with pytest.raises(ValueError, match="saved for metric 'acc'"):
        ResultMatrix(TASKS, metric="ppl", higher_is_better=False).load_state_dict(state)
    bad = dict(state, rows=[[0.1, 0.2]] * 3)
    with pytest.raises(ValueError, match=r"state rows must have shape \(3, 3\)"):
        ResultMatrix(TASKS).load_state_dict(bad)
    with pytest.raises(ValueError, match="missing key 'rows'"):
        ResultMatrix(TASKS).load_state_dict({k: v for k, v in state.items() if k != "rows"})


def test_result_matrix_to_dict_is_strict_json() -> None:
    rm = ResultMatrix(TASKS)
    rm.set_initial({"sst2": 0.5})
    rm.add_row("sst2", {"sst2": 0.9})
    rm.add_row("rte", {"sst2": 0.8, "rte": 0.7})
    d = rm.to_dict()
    assert list(d) == ["metric", "higher_is_better", "tasks", "stages", "initial", "matrix", "summary"]
    text = json.dumps(d, allow_nan=False)  # raises on NaN
    loaded = json.loads(text)
    assert loaded["matrix"] == [[0.9, None, None], [0.8, 0.7, None]]
    assert loaded["initial"] == [0.5, None, None]
    assert loaded["tasks"] == TASKS and loaded["stages"] == ["sst2", "rte"]
    assert loaded["summary"]["average"] == approx(0.75)  # (0.8 + 0.7) / 2, NaN skipped
    assert loaded["summary"]["bwt"] is None  # 2 x 3: not square


def test_result_matrix_to_dict_nan_summary_becomes_none() -> None:
    rm = ResultMatrix(["a", "b"])
    rm.add_row("a", {})
    rm.add_row("b", {})
    summary = rm.to_dict()["summary"]
    assert summary == dict.fromkeys(SUMMARY_KEYS)
