"""Memory aware synapses (MAS): an unsupervised, output-sensitivity-weighted pull toward past weights."""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
from torch import Tensor

from clight.callbacks._utils import check_arg
from clight.callbacks.regularization.base import QuadraticPenalty, StateDtype
from clight.contracts import ContinualModel
from clight.task import TaskInfo


def output_sensitivity_loss(module: pl.LightningModule, batch: Mapping[str, Tensor],
                            outputs: Mapping[str, Tensor], uniforms: Tensor | None = None) -> Tensor:
    """MAS's function of the outputs: the squared L2 norm of the logits, ``‖f(x)‖²``, averaged over the
    examples (classification) or over the non-padding tokens (causal LM)."""
    logits = outputs["logits"].float()
    if logits.dim() == 2:  # (B, C)
        return logits.pow(2).sum(-1).mean()
    mask = batch.get("attention_mask")  # (B, T); a batch without one counts every position
    if mask is None:
        return logits.pow(2).sum(-1).mean()
    mask = mask.to(logits.dtype)
    return (logits.pow(2).sum(-1) * mask).sum() / mask.sum().clamp_min(1)


class MAS(QuadraticPenalty):
    """Penalise moving the weights the model's outputs are most sensitive to: ``λ/2 · Σ Ω (θ − θ*)²``.

    Aljundi et al. 2018, "Memory Aware Synapses: Learning what (not) to forget". At each task end the
    importance is the mean absolute gradient of ``‖f(x)‖²`` (the squared L2 norm of the logits) over
    ``num_examples`` of the finished task's training examples (or training-batch rows, as EWC's) — no labels
    needed. It is estimated like EWC's Fisher (seeded subset, split across ranks, all-reduced; per example with
    ``estimate_batch_size: 1``), normalised to mean 1 (``normalize``), accumulated over tasks, and anchored at
    the latest weights. The penalty's gradient is added in ``on_before_optimizer_step`` and logged as
    ``train/penalty_mas``. Costs as EWC's: ``Ω`` and ``θ*`` in fp32, one elementwise pass per step,
    ``num_examples`` backward passes per task.

    Args:
        strength: ``λ`` (on the scale of plain L2 when ``normalize``).
        num_examples: training examples of the finished task used to estimate the importance.
        estimate_batch_size: examples per backward pass of the estimate (1: exact per-example magnitudes).
        normalize: divide each task's importance by its mean.
        dtype: ``float32`` state (default) or the parameters' own dtype (``param``).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.MAS
              init_args: {strength: 1.0, num_examples: 256}
    """

    module_contracts = (ContinualModel,)
    penalty_name = "mas"
    # under FSDP every rank runs the estimate's examples and keeps its shard's statistic; the penalty is
    # elementwise on the shards (tests/test_sharded.py compares with DDP)
    supports_sharded = True

    def __init__(
        self,
        *,
        strength: float = 1.0,
        num_examples: int = 256,
        estimate_batch_size: int = 1,
        normalize: bool = True,
        dtype: StateDtype = "float32",
    ) -> None:
        super().__init__(strength=strength, dtype=dtype, normalize=normalize)
        check_arg(isinstance(num_examples, int) and num_examples >= 1, "num_examples", "an integer >= 1",
                  num_examples, "E.g. `num_examples: 256` examples of each finished task.")
        check_arg(isinstance(estimate_batch_size, int) and estimate_batch_size >= 1, "estimate_batch_size",
                  "an integer >= 1", estimate_batch_size, "1 gives exact per-example magnitudes.")
        self.num_examples, self.estimate_batch_size = num_examples, estimate_batch_size
        self.estimate_examples = num_examples

    def task_importance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo
                        ) -> dict[str, Tensor]:
        return self.gradient_statistic(trainer, pl_module, task, output_sensitivity_loss, "abs",
                                       num_examples=self.num_examples, batch_size=self.estimate_batch_size)
