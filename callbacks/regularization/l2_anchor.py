"""L2 toward an anchor: the weights at the start of the task, or the pretrained weights (L2-SP)."""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
from torch import Tensor

from clight.callbacks._utils import check_arg
from clight.callbacks.regularization.base import QuadraticPenalty, StateDtype
from clight.task import TaskInfo

Anchor = Literal["task_start", "pretrained"]


class L2Anchor(QuadraticPenalty):
    """Pull every trainable weight toward an anchor with a plain L2 penalty: ``λ/2 · Σ (θ − θ*)²``.

    ``anchor: task_start`` anchors at the weights the current task started from (the previous task's result),
    the "plain L2 toward the previous weights" that Smith et al. 2023, "A Closer Look at Rehearsal-Free
    Continual Learning", found strong from a pretrained model; ``anchor: pretrained`` anchors at the weights
    before the first task for the whole stream (L2-SP, Li et al. 2018, "Explicit Inductive Bias for Transfer
    Learning with Convolutional Networks"). Unlike weight decay, which pulls toward zero, this pulls toward
    ``θ*``. With ``task_start`` the penalty applies from the second task on (the first task fine-tunes
    freely); with ``pretrained`` from the first task on (a classification head is pulled toward its
    initialisation). The gradient ``λ (θ − θ*)`` is added in
    ``on_before_optimizer_step`` and logged as ``train/penalty_l2``.

    Costs: one fp32 copy of the trainable parameters (with a LoRA adapter: the adapter and head only) and one
    elementwise pass per optimizer step; nothing at task end but the copy. Under FSDP (``ModelParallelStrategy``)
    each rank keeps the anchor of its own shard only, and checkpoints hold the gathered full anchor.

    Args:
        strength: ``λ``.
        anchor: ``task_start`` (the previous task's weights) or ``pretrained`` (L2-SP).
        dtype: ``float32`` state (default) or the parameters' own dtype (``param``).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.L2Anchor
              init_args: {strength: 1.0, anchor: task_start}
    """

    penalty_name = "l2"
    uses_importance = False
    supports_sharded = True  # elementwise on each rank's shard; state gathered for checkpoints (test_sharded.py)

    def __init__(self, *, strength: float = 1.0, anchor: Anchor = "task_start", dtype: StateDtype = "float32"
                 ) -> None:
        super().__init__(strength=strength, dtype=dtype, normalize=False)
        check_arg(anchor in ("task_start", "pretrained"), "anchor", "`task_start` or `pretrained`", anchor,
                  "`task_start` anchors at the previous task's weights, `pretrained` at the initial ones (L2-SP).")
        self.anchor_mode = anchor

    @property
    def state_key(self) -> str:
        return self._generate_state_key(strength=self.strength, anchor=self.anchor_mode)

    def anchor_from_start(self) -> bool:
        return self.anchor_mode == "pretrained"  # `task_start`: the first anchor is the first task's result

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.anchor_mode == "task_start":
            super().on_task_end(trainer, pl_module, task)  # the anchor moves to this task's end weights

    def task_importance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        return None

    def consolidate(self, new: dict[str, Tensor] | None, *, decay: float = 1.0) -> None:
        self.anchor = self._snapshot()
