"""Techniques that keep rows of the training batches (Replay, EWC, WiSE-FT's ``alpha: auto``) in a foreign MLP under
2-process CPU DDP (gloo): every rank saves its callbacks' states, and a mid-task Lightning checkpoint of the first
task (which holds every rank's rows).

Usage: python tests/reuse_ddp_script.py OUT_DIR   (Lightning's launcher re-runs this for rank 1)
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]
os.environ["HF_HUB_OFFLINE"] = "1"

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402
from reuse_modules import loader, make_module  # noqa: E402

import clight.callbacks as cb  # noqa: E402


class SaveAt(Callback):
    """Save a Lightning checkpoint after optimizer step ``step`` of the first task (on every rank, as
    ``ModelCheckpoint`` does)."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step, self.done = path, step, False

    def on_train_batch_end(self, trainer, *args) -> None:
        if not self.done and trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            self.done = True


def main(out: Path) -> None:
    callbacks = [cb.Replay(memory_size=6, replay_batch_size=2, policy="task_balanced"), cb.EWC(num_examples=6),
                 cb.WeightInterpolation(alpha="auto", alpha_grid=[0.0, 1.0], selection_examples=4)]
    module = make_module("mlp")
    saver = SaveAt(out / "mid_task.ckpt", step=1)
    for task in range(2):
        trainer = pl.Trainer(max_epochs=1, callbacks=[*callbacks, saver], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, devices=2, accelerator="cpu",
                             strategy=DDPStrategy(timeout=timedelta(minutes=2)), default_root_dir=out)
        trainer.fit(module, loader("mlp", task))
    rank = trainer.global_rank
    torch.save({type(c).__name__: c.state_dict() for c in callbacks}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
