"""Elastic weight consolidation (EWC) and online EWC: a Fisher-weighted quadratic pull toward past weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import lightning.pytorch as pl
from torch import Tensor

from clight.callbacks._utils import check_arg
from clight.callbacks.regularization.base import QuadraticPenalty, StateDtype
from clight.contracts import ContinualModel, LabelSampler
from clight.task import TaskInfo

FisherKind = Literal["empirical", "true"]


class EWC(QuadraticPenalty):
    """Penalise moving the weights that mattered for earlier tasks: ``λ/2 · Σ F (θ − θ*)²``.

    Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks"; online EWC: Schwarz et
    al. 2018, "Progress & Compress". At the end of each task the diagonal Fisher information ``F`` of the
    trained model is estimated on ``num_examples`` of that task's training examples (a seeded random subset,
    split across ranks, summed and all-reduced, so every rank holds the same ``F``; with a datamodule that has no
    ``train_examples``, rows of the task's training batches, docs/reuse.md): the mean squared gradient
    of the log-likelihood of the true labels (``fisher: empirical``) or of labels drawn from the model's own
    predictive distribution (``fisher: true``; causal LMs draw one token per labelled position). With
    ``estimate_batch_size: 1`` (default) the squares are per example, as the Fisher is defined; larger micro-
    batches are faster and approximate it by ``m · g_m²``. ``normalize`` divides each task's ``F`` by its mean,
    so ``strength`` is on the scale of plain L2 (``Ω = 1``) whatever the model and loss.

    Separate EWC (``online: false``) keeps one penalty per finished task, ``Σ_t λ/2 F_t (θ − θ*_t)²``; its
    gradient equals ``λ (Σ_t F_t)(θ − θ̄)`` with ``θ̄`` the ``F``-weighted mean of the task anchors, so two
    tensors per parameter hold every task's penalty (the logged value differs from the sum by a constant).
    Online EWC (``online: true``) keeps ``F ← γ F + F_task`` and anchors at the latest weights.

    The penalty's gradient ``λ F (θ − θ*)`` is added to the accumulated gradient in ``on_before_optimizer_step``
    (one ``torch._foreach_*`` pass; exact under gradient accumulation and AMP, see
    ``callbacks/regularization/base.py``), logged as ``train/penalty_ewc``. Costs: two fp32 tensors the
    size of the trainable parameters (``Ω`` and ``θ*``; with a LoRA adapter only the adapter and head), one
    elementwise pass per optimizer step, and ``num_examples`` forward+backward passes at each task end.

    Args:
        strength: ``λ``. With the normalised Fisher and AdamW at lr 5e-5 (the quickstart), 1 balances old and
            new tasks; 10 keeps more of the old classes (class-IL) at the cost of learning later tasks, and
            100 or more all but freezes the model after the first task (see the README).
        online: online EWC (one decayed Fisher, latest anchor) instead of one penalty per task.
        gamma: online EWC's decay ``γ`` of the earlier Fisher, in ``(0, 1]``.
        fisher: ``empirical`` (gradients of the true labels' log-likelihood) or ``true`` (of sampled labels;
            the generator is seeded from ``(seed, task)``).
        num_examples: training examples of the finished task used to estimate the Fisher.
        estimate_batch_size: examples per backward pass of the estimate (1: exact per-example squares).
        normalize: divide each task's Fisher by its mean (``strength`` then has a model-independent scale).
        dtype: ``float32`` state (default) or the parameters' own dtype (``param``, half the memory for a
            16-bit model).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.EWC
              init_args: {strength: 1.0, num_examples: 256}
    """

    penalty_name = "ewc"
    # under FSDP every rank runs the estimate's examples and keeps its shard's statistic; the penalty is
    # elementwise on the shards (tests/test_sharded.py compares with DDP)
    supports_sharded = True

    def __init__(
        self,
        *,
        strength: float = 1.0,
        online: bool = False,
        gamma: float = 1.0,
        fisher: FisherKind = "empirical",
        num_examples: int = 256,
        estimate_batch_size: int = 1,
        normalize: bool = True,
        dtype: StateDtype = "float32",
    ) -> None:
        super().__init__(strength=strength, dtype=dtype, normalize=normalize)
        check_arg(isinstance(online, bool), "online", "true or false", online, "`true` for online EWC.")
        check_arg(isinstance(gamma, (int, float)) and 0 < gamma <= 1, "gamma", "a number in (0, 1]", gamma,
                  "E.g. `gamma: 0.9` lets older tasks' Fisher fade in online EWC; 1 keeps it all.")
        check_arg(online or gamma == 1, "gamma", "1 unless `online: true`", gamma,
                  "Set `online: true` to decay the Fisher, or drop `gamma`.")
        check_arg(fisher in ("empirical", "true"), "fisher", "`empirical` or `true`", fisher,
                  "`empirical` uses the data's labels, `true` labels sampled from the model.")
        check_arg(isinstance(num_examples, int) and num_examples >= 1, "num_examples", "an integer >= 1",
                  num_examples, "E.g. `num_examples: 256` examples of each finished task.")
        check_arg(isinstance(estimate_batch_size, int) and estimate_batch_size >= 1, "estimate_batch_size",
                  "an integer >= 1", estimate_batch_size, "1 gives the exact per-example Fisher.")
        self.online, self.gamma, self.fisher = online, float(gamma), fisher
        self.num_examples, self.estimate_batch_size = num_examples, estimate_batch_size
        self.anchor_update = "latest" if online else "weighted_mean"
        self.module_contracts = (ContinualModel, LabelSampler) if fisher == "true" else (ContinualModel,)
        self.estimate_examples = num_examples

    @property
    def state_key(self) -> str:
        return self._generate_state_key(strength=self.strength, online=self.online)

    @property
    def decay(self) -> float:
        return self.gamma

    def task_importance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo
                        ) -> dict[str, Tensor]:
        sampled = self.fisher == "true"
        width = 0
        if sampled:
            width = pl_module.label_width(int(getattr(trainer.datamodule, "max_length", 512)))

        def nll(module: pl.LightningModule, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor],
                uniforms: Tensor | None) -> Tensor:
            if uniforms is not None:
                batch = module.sample_labels(batch, outputs, uniforms)
            return module.task_loss(batch, outputs)

        return self.gradient_statistic(trainer, pl_module, task, nll, "square", num_examples=self.num_examples,
                                       batch_size=self.estimate_batch_size, uniform_width=width)
