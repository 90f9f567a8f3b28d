"""Run one contract case under 2-process CPU DDP (gloo); every rank saves its callback state, its weights and a
parameter checksum after every optimizer step (the end state alone cannot show ranks drifting apart mid-task:
each new Trainer's DDP wrap re-broadcasts rank 0's weights).

Usage: python tests/ddp_harness_script.py OUT_DIR CASE_ID...   (Lightning's launcher re-runs this for rank 1)
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "callbacks")]
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from cases import case_by_id  # noqa: E402
from clight_testing import run_stream  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402


class StepChecksums(Callback):
    """Sum of all parameters after each optimizer step."""

    def __init__(self) -> None:
        self.sums: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.sums.append(sum(p.detach().double().sum().item() for p in pl_module.parameters()))


def run_case(case_id: str, out: Path) -> None:
    case = case_by_id(case_id)
    callback = case.cls(**case.kwargs)
    checksums = StepChecksums()
    results, module = run_stream(
        out / "run", [callback, checksums], kind=case.kind, max_steps=4,
        module_kwargs=dict(case.module_kwargs), stream_kwargs=dict(case.stream_kwargs),
        # a rank that raised leaves the other in a collective: fail it after 2 minutes, not gloo's 30
        trainer_kwargs=dict(strategy=DDPStrategy(timeout=timedelta(minutes=2)), devices=2, accelerator="cpu"),
    )
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.save({"callback": callback.state_dict(), "module": module.state_dict(), "results": results["matrices"],
                "step_checksums": checksums.sums},
               out / f"rank{rank}.pt")


def main() -> None:
    """``OUT_DIR CASE_ID...``: the cases run one after another in one 2-process job (one launch and import for
    all of them); each writes ``OUT_DIR/<case>/rank<r>.pt``, or ``OUT_DIR/<case>/error-rank<r>.txt`` if it
    raised, and the job goes on with the next case."""
    out, case_ids = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    for case_id in case_ids:
        (out / case_id).mkdir(parents=True, exist_ok=True)
        try:
            run_case(case_id, out / case_id)
        except Exception:  # recorded for the test of this case; a hung collective would hit the test timeout
            (out / case_id / f"error-rank{rank}.txt").write_text(traceback.format_exc())


if __name__ == "__main__":
    main()
