"""Run one contract case under 2-process CPU DDP (gloo); every rank saves its callback state, its weights and a
parameter checksum after every optimizer step (the end state alone cannot show ranks drifting apart mid-task:
each new Trainer's DDP wrap re-broadcasts rank 0's weights).

Usage: python tests/ddp_harness_script.py CASE_ID OUT_DIR   (Lightning's launcher re-runs this for rank 1)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "callbacks")]
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from cases import case_by_id  # noqa: E402
from clight_testing import run_stream  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402


class StepChecksums(Callback):
    """Sum of all parameters after each optimizer step."""

    def __init__(self) -> None:
        self.sums: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.sums.append(sum(p.detach().double().sum().item() for p in pl_module.parameters()))


def main() -> None:
    case_id, out = sys.argv[1], Path(sys.argv[2])
    case = case_by_id(case_id)
    callback = case.cls(**case.kwargs)
    checksums = StepChecksums()
    results, module = run_stream(
        out / "run", [callback, checksums], kind=case.kind, max_steps=4,
        module_kwargs=dict(case.module_kwargs), stream_kwargs=dict(case.stream_kwargs),
        trainer_kwargs=dict(strategy="ddp", devices=2, accelerator="cpu"),
    )
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.save({"callback": callback.state_dict(), "module": module.state_dict(), "results": results["matrices"],
                "step_checksums": checksums.sums},
               out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
