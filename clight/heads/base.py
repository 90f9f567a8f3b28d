"""The task-head interface: what a task type (classification, causal LM, instruction following) decides about
the model, its loss and its evaluation, so that neither the module nor a callback branches on task names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn
from torchmetrics import Metric

Batch = Mapping[str, Tensor]


class TaskHead(nn.Module):
    """Base of the task heads of :class:`~clight.module.ContinualModule`.

    A head owns the part of the network on top of the backbone (the classification layer; nothing for a causal
    LM, whose LM head is the backbone's), the forward pass from a batch, the task loss (mean and per example),
    the labels EWC's true Fisher samples, and the evaluation: its metric names, whether higher is better for
    each, and one set of torchmetrics ``Metric`` objects per evaluated task (their ``compute()`` syncs across
    processes).
    """

    #: ``transformers`` auto class that loads the backbone (``AutoModel`` or ``AutoModelForCausalLM``).
    auto_class: ClassVar[str] = "AutoModel"
    #: the metrics of :meth:`new_metrics`, in report order, and whether higher is better for each.
    higher_is_better: ClassVar[dict[str, bool]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.task_classes: list[list[int]] = []  # class ids (output rows) of each task; empty without classes
        self.samples: dict[int, list[dict[str, str]]] = {}  # generated examples of the last evaluation, by task

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.higher_is_better)

    def output_layer(self) -> nn.Module | None:
        """The head's own trainable layer (what freezing keeps trainable and masking leaves alone); ``None`` when
        the head has no parameters of its own."""
        return None

    def prepare_backbone(self, backbone: nn.Module) -> None:
        """Adapt a freshly loaded backbone (e.g. drop a pooler the head does not use). Default: nothing."""

    def configure(self, backbone: nn.Module, **stream: Any) -> None:
        """Size the head for a stream (its classes); called before the first task and before a resume."""

    def encode(self, backbone: nn.Module, batch: Batch) -> Any:
        """Run the backbone on a batch. Kept out of :meth:`forward` so that the backbone never runs inside the
        head's own call: under FSDP2 the two are separate units, gathered and resharded one after the other."""
        raise NotImplementedError

    def forward(self, encoded: Any, batch: Batch) -> dict[str, Tensor]:
        """The outputs from the backbone's (:meth:`encode`); they have at least ``logits``."""
        raise NotImplementedError

    def loss(self, batch: Batch, outputs: Mapping[str, Tensor]) -> Tensor:
        """The mean task loss of a batch (the training objective)."""
        raise NotImplementedError

    def per_example_loss(self, batch: Batch, outputs: Mapping[str, Tensor]) -> Tensor:
        """The task loss of every example, ``(B,)``."""
        raise NotImplementedError

    def sample_labels(self, batch: Batch, outputs: Mapping[str, Tensor], uniforms: Tensor) -> dict[str, Tensor]:
        """``batch`` with its labels drawn from the model's predictive distribution by inverse CDF from
        ``uniforms`` ``(B, W)`` (EWC's true Fisher)."""
        raise NotImplementedError

    def label_width(self, max_length: int) -> int:
        """Uniforms per example that :meth:`sample_labels` reads."""
        return 1

    def new_metrics(self, task_index: int) -> dict[str, Metric]:
        """Fresh metric states for evaluating one task (one dict per evaluation loader)."""
        raise NotImplementedError

    def update_metrics(self, metrics: dict[str, Metric], batch: Batch, outputs: Mapping[str, Tensor],
                       valid: Tensor, task_index: int, backbone: nn.Module | None = None) -> None:
        """Add one evaluation batch; ``valid`` ``(B,)`` is False for the repeats that pad a rank's shard (a head that
        generates runs ``backbone``)."""
        raise NotImplementedError

    def compute_metrics(self, metrics: dict[str, Metric]) -> dict[str, float]:
        """The task's metric values (every name of :attr:`metric_names`, plus ``count``), synced across ranks."""
        return {name: float(metric.compute()) for name, metric in metrics.items()}
