"""Learning without forgetting: knowledge distillation from the previous task's model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from clight.callbacks._utils import check_arg
from clight.callbacks.distillation.base import TeacherCallback, TeacherDevice
from clight.contracts import HasTaskClasses
from clight.functional.penalties import distillation_kl
from clight.task import TaskInfo


class Distillation(TeacherCallback):
    """Learning without forgetting: keep the model's outputs on new data close to the previous task's model.

    Li & Hoiem 2016, "Learning without Forgetting" (knowledge distillation, Hinton et al. 2015). At every task
    end the trained model becomes the teacher (a snapshot of the trainable parameters; see
    :class:`TeacherCallback`); on every later training batch the loss term ``distill`` adds
    ``alpha · T² · KL(p_teacher ‖ p_student)``, both softened by temperature ``T``, on the current task's inputs:

    - classification: on the logits of the classes of the tasks the teacher was trained on (the old classes);
    - causal LM: on the next-token distributions at every non-padding position, optionally restricted to the
      teacher's ``top_k`` tokens per position (both distributions renormalised there).

    Costs: one teacher forward (no backward) per training batch and one copy of the trainable parameters
    (adapter and head only with a LoRA model; on the host with ``teacher_device: cpu``).

    Args:
        alpha: weight of the distillation term.
        temperature: softmax temperature ``T`` (the term is scaled by ``T²`` so gradients keep their size).
        top_k: causal LM only: restrict the KL to the teacher's ``top_k`` tokens per position (empty: the whole
            vocabulary).
        teacher_device: ``same`` (the model's device) or ``cpu`` (offloaded; copied over each step).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.Distillation
              init_args: {alpha: 1.0, temperature: 2.0}
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        temperature: float = 2.0,
        top_k: int | None = None,
        teacher_device: TeacherDevice = "same",
    ) -> None:
        check_arg(isinstance(alpha, (int, float)) and alpha > 0, "alpha", "a number > 0", alpha,
                  "Remove the callback to train without distillation.")
        check_arg(isinstance(temperature, (int, float)) and temperature > 0, "temperature", "a number > 0",
                  temperature, "E.g. `temperature: 2.0` (1 leaves the distributions as they are).")
        check_arg(top_k is None or (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1),
                  "top_k", "empty or an integer >= 1", top_k, "E.g. `top_k: 32`, or leave it empty.")
        super().__init__(weight=alpha, teacher_device=teacher_device)
        self.alpha, self.temperature, self.top_k = float(alpha), float(temperature), top_k
        self.old_classes: list[int] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(alpha=self.alpha, temperature=self.temperature, top_k=self.top_k)

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        super().on_task_end(trainer, pl_module, task)
        classes = pl_module.task_classes if isinstance(pl_module, HasTaskClasses) else []
        if getattr(trainer.datamodule, "joint", False):
            self.old_classes = sorted({c for cs in classes for c in cs})
        else:
            self.old_classes = sorted({c for cs in classes[: task.index + 1] for c in cs})

    def distillation_loss(self, module: pl.LightningModule, batch: Mapping[str, Tensor],
                          outputs: Mapping[str, Tensor]) -> Tensor:
        student = outputs["logits"]
        if not self.teacher:  # the first task has no teacher
            return student.new_zeros(())
        teacher = self.teacher_forward(module, batch)["logits"]
        if student.dim() == 2:  # classification (B, C): the old classes only
            if self.old_classes:
                index = torch.tensor(self.old_classes, device=student.device)
                student, teacher = student.index_select(-1, index), teacher.index_select(-1, index)
            return distillation_kl(student, teacher, self.temperature)
        mask = batch.get("attention_mask")  # (B, T); a batch without one distills every position
        return distillation_kl(student, teacher, self.temperature, top_k=self.top_k,
                               mask=mask.bool() if mask is not None else None)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "old_classes": list(self.old_classes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.old_classes = [int(c) for c in state_dict["old_classes"]]
