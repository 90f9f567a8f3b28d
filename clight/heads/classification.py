"""Text classification from an encoder's mean-pooled token states: one linear layer over every class of the
stream, with class-incremental and task-incremental accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from clight.errors import ClightConfigError
from clight.heads.base import Batch, TaskHead


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average token states over the non-padding positions. ``(B, T, H), (B, T) -> (B, H)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class ClassificationHead(TaskHead):
    """Logits ``linear(mean_pool(last_hidden_state))`` over all classes of the stream.

    Class-incremental accuracy takes the argmax over every class; task-incremental accuracy over the evaluated
    task's own classes. A batch with a ``class_mask`` ``(B, C)`` (task-incremental training) restricts the
    training softmax to the masked classes.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"class_il_acc": True, "task_il_acc": True}

    def __init__(self) -> None:
        super().__init__()
        self.linear: nn.Linear | None = None

    def output_layer(self) -> nn.Module | None:
        return self.linear

    def prepare_backbone(self, backbone: nn.Module) -> None:
        if isinstance(getattr(backbone, "pooler", None), nn.Module):
            # We classify from mean-pooled token states; the [CLS] pooler would be an unused parameter (which
            # DDP rejects) and wasted compute.
            backbone.pooler = None

    def configure(self, backbone: nn.Module, *, num_classes: int | None = None,
                  task_classes: list[list[int]] | None = None, **_: Any) -> None:
        if num_classes is None:
            raise ClightConfigError("a classification module needs the stream's `num_classes`.")
        if self.linear is None:
            self.linear = nn.Linear(backbone.config.hidden_size, num_classes)
        elif self.linear.out_features != num_classes:
            raise ClightConfigError(
                f"`num_classes`: the module was built for {self.linear.out_features} classes but the stream "
                f"has {num_classes}. Remove `model.num_classes` (the runner sets it from the data)."
            )
        self.task_classes = [list(c) for c in (task_classes or [list(range(num_classes))])]

    def encode(self, backbone: nn.Module, batch: Batch) -> Tensor:
        out = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return mean_pool(out.last_hidden_state, batch["attention_mask"])  # (B, H)

    def forward(self, features: Tensor, batch: Batch) -> dict[str, Tensor]:
        if self.linear is None:
            raise RuntimeError("call `configure_stream(...)` (the runner does) before using the module.")
        return {"logits": self.linear(features), "features": features}

    @staticmethod
    def _train_logits(batch: Batch, logits: Tensor) -> Tensor:
        if "class_mask" in batch:  # task-incremental training: softmax over the task's own classes
            logits = logits.masked_fill(~batch["class_mask"], torch.finfo(logits.dtype).min)
        return logits

    def loss(self, batch: Batch, outputs: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(self._train_logits(batch, outputs["logits"]), batch["labels"])

    def per_example_loss(self, batch: Batch, outputs: Mapping[str, Tensor]) -> Tensor:
        logits = self._train_logits(batch, outputs["logits"].float())
        return F.cross_entropy(logits, batch["labels"], reduction="none")

    def sample_labels(self, batch: Batch, outputs: Mapping[str, Tensor], uniforms: Tensor) -> dict[str, Tensor]:
        logits = outputs["logits"].detach().float()
        if "class_mask" in batch:
            logits = logits.masked_fill(~batch["class_mask"], float("-inf"))
        cdf = logits.softmax(-1).cumsum(-1)  # (B, C)
        labels = torch.searchsorted(cdf, uniforms[:, :1].to(cdf.dtype)).squeeze(1).clamp_max(cdf.shape[-1] - 1)
        return {**batch, "labels": labels}

    def new_metrics(self, task_index: int) -> dict[str, Metric]:
        classes = self.linear.out_features
        # padding rows get the ignored label (-100): no filtering, so no empty updates and no host sync
        return {
            "class_il_acc": MulticlassAccuracy(classes, average="micro", ignore_index=-100, validate_args=False),
            "task_il_acc": MulticlassAccuracy(classes, average="micro", ignore_index=-100, validate_args=False),
            "count": SumMetric(),
        }

    def update_metrics(self, metrics: dict[str, Metric], batch: Batch, outputs: Mapping[str, Tensor],
                       valid: Tensor, task_index: int, backbone: nn.Module | None = None) -> None:
        logits, labels = outputs["logits"].float(), batch["labels"].masked_fill(~valid, -100)
        own = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        if task_index < len(self.task_classes):
            own[self.task_classes[task_index]] = True
        else:
            own[:] = True
        metrics["class_il_acc"].update(logits.argmax(-1), labels)
        metrics["task_il_acc"].update(logits.masked_fill(~own, float("-inf")).argmax(-1), labels)
        metrics["count"].update(valid.sum())
