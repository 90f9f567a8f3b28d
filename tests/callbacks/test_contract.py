"""The callback contract harness: every case of `cases.CASES` must pass every test here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cases import CASES, Case
from clight_testing import CrashAt, SimulatedCrash, assert_state_equal, run_stream

from clight.errors import ClightConfigError

PARAMS = [pytest.param(c, id=c.id) for c in CASES]


def _stream_args(case: Case) -> dict:
    return dict(kind=case.kind, module_kwargs=dict(case.module_kwargs), stream_kwargs=dict(case.stream_kwargs))


@pytest.mark.parametrize("case", PARAMS)
def test_constructor_validation(case: Case) -> None:
    case.cls(**case.kwargs)  # the good kwargs construct
    for bad, argument in case.bad_kwargs:
        with pytest.raises(ClightConfigError, match=argument):
            case.cls(**{**case.kwargs, **bad})


@pytest.mark.parametrize("case", PARAMS)
def test_state_dict_round_trip(case: Case, tmp_path: Path) -> None:
    callback = case.cls(**case.kwargs)
    run_stream(tmp_path / "run", [callback], max_steps=3, **_stream_args(case))
    state = callback.state_dict()
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh = case.cls(**case.kwargs)
    fresh.load_state_dict(loaded)
    assert_state_equal(state, fresh.state_dict())
    assert fresh.state_dict()["tasks_seen"] == 2


@pytest.mark.parametrize("case", PARAMS)
def test_crash_and_resume_equivalence(case: Case, tmp_path: Path) -> None:
    ref_cb = case.cls(**case.kwargs)
    ref, ref_module = run_stream(tmp_path / "ref", [ref_cb], **_stream_args(case))
    with pytest.raises(SimulatedCrash):  # killed in the second task, after its step-4 checkpoint
        run_stream(tmp_path / "crash", [case.cls(**case.kwargs), CrashAt(task=1, step=5)],
                   **_stream_args(case))
    resumed_cb = case.cls(**case.kwargs)
    res, res_module = run_stream(tmp_path / "crash", [resumed_cb], resume=True, **_stream_args(case))
    assert res["timing"]["stages"][1]["resumed_mid_task"] is True
    for metric, matrix in ref["matrices"].items():
        assert torch.allclose(torch.tensor(matrix["matrix"], dtype=torch.float64),
                              torch.tensor(res["matrices"][metric]["matrix"], dtype=torch.float64)), metric
    ref_state, res_state = ref_module.state_dict(), res_module.state_dict()
    for name in ref_state:
        assert torch.allclose(ref_state[name], res_state[name], atol=1e-6), name
    assert_state_equal(ref_cb.state_dict(), resumed_cb.state_dict())


@pytest.fixture(scope="module")
def ddp_runs(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The selected cases under 2-process CPU DDP, in one launched job (spawning and importing once, not per
    case)."""
    ids = [item.callspec.params["case"].id for item in request.session.items
           if getattr(item, "originalname", "") == "test_ddp_ranks_hold_identical_state"]
    out = tmp_path_factory.mktemp("ddp")
    script = Path(__file__).resolve().parents[1] / "ddp_harness_script.py"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(script), str(out), *ids], env=env, capture_output=True, text=True,
                          timeout=120 + 30 * len(ids))
    return out, proc


@pytest.mark.ddp
@pytest.mark.parametrize("case", PARAMS)
def test_ddp_ranks_hold_identical_state(case: Case, ddp_runs: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = ddp_runs
    errors = sorted((out / case.id).glob("error-rank*.txt"))
    assert not errors, "\n".join(e.read_text()[-3000:] for e in errors)
    assert (out / case.id / "rank1.pt").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = torch.load(out / case.id / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / case.id / "rank1.pt", weights_only=True)
    assert_state_equal(rank0["callback"], rank1["callback"], "callback")
    assert_state_equal(rank0["module"], rank1["module"], "module")
    assert rank0["results"] == rank1["results"]
    assert len(rank0["step_checksums"]) == 8  # 2 tasks x 4 steps, compared step by step
    assert rank0["step_checksums"] == rank1["step_checksums"]
    assert rank0["callback"]["tasks_seen"] == 2
