"""Synaptic intelligence (SI): importance from each weight's contribution to the drop of the loss along the
training path."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from clight.callbacks._utils import check_arg
from clight.callbacks.regularization.base import QuadraticPenalty, StateDtype
from clight.sharding import gather_full, like_param, local
from clight.task import TaskInfo


class SI(QuadraticPenalty):
    """Penalise moving the weights whose updates reduced earlier tasks' loss the most: ``λ/2 · Σ Ω (θ − θ*)²``.

    Zenke et al. 2017, "Continual Learning Through Synaptic Intelligence". During a task the path integral
    ``ω += −g · Δθ`` is accumulated at every optimizer step, with ``g`` the accumulated gradient of the
    training loss (before this callback's own penalty is added) and ``Δθ`` the step's update: the pre-step
    weights are stashed in ``on_before_optimizer_step`` and ``ω`` is updated in ``on_train_batch_end`` with
    ``torch._foreach_*`` kernels. At the task end ``Ω_task = max(ω, 0) / ((θ_end − θ_start)² + ξ)`` (negative
    contributions clipped), normalised to mean 1 (``normalize``) and accumulated; the anchor moves to the task's
    end weights. Gradients are already all-reduced and weights identical under DDP, so ``ω`` is identical on
    every rank without communication. Under FSDP2 every one of these passes runs on the rank's own shards
    (``tests/test_sharded.py`` compares the result with DDP). ``train/penalty_si`` logs the penalty.

    Costs: four tensors the size of the trainable parameters (``ω``, ``Ω``, ``θ*`` and the stashed weights and
    gradient of the step, fp32), and three elementwise passes per optimizer step; no extra forward or backward.

    Args:
        strength: ``λ`` (SI's ``c``; on the scale of plain L2 when ``normalize``).
        damping: ``ξ``, keeps ``Ω`` finite for weights that barely moved.
        normalize: divide each task's importance by its mean.
        dtype: ``float32`` state (default) or the parameters' own dtype (``param``).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.SI
              init_args: {strength: 1.0, damping: 1.0e-3}
    """

    penalty_name = "si"
    supports_sharded = True  # elementwise on each rank's shard; state gathered for checkpoints

    def __init__(
        self,
        *,
        strength: float = 1.0,
        damping: float = 1e-3,
        normalize: bool = True,
        dtype: StateDtype = "float32",
    ) -> None:
        super().__init__(strength=strength, dtype=dtype, normalize=normalize)
        check_arg(isinstance(damping, (int, float)) and damping > 0, "damping", "a number > 0", damping,
                  "E.g. `damping: 1.0e-3` (ξ in the paper; small relative to the squared weight change).")
        self.damping = float(damping)
        self.omega: dict[str, Tensor] = {}
        self._names: list[str] = []
        self._prev: list[Tensor] = []
        self._grad: list[Tensor] = []
        self._pending = False

    def anchor_from_start(self) -> bool:
        return True  # Δθ of the first task is measured from its start weights

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        super().on_task_start(trainer, pl_module, task)
        for name, p in self._tracked:  # on the parameter's device, sharded like it under FSDP2
            w = self.omega.get(name)
            self.omega[name] = torch.zeros_like(p, dtype=self._state_dtype(p)) if w is None else like_param(w, p)
        self._names = [n for n, _ in self._tracked]
        self._prev = [torch.empty_like(local(self.omega[n])) for n in self._names]
        self._grad = [torch.empty_like(local(self.omega[n])) for n in self._names]
        self._pending = False

    def before_penalty(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = [local(p.detach()) for _, p in self._tracked]
        grads = [local(p.grad) if p.grad is not None else torch.zeros_like(q) for (_, p), q in zip(self._tracked, params)]
        torch._foreach_copy_(self._grad, grads)  # the training loss's gradient, before the penalty's
        torch._foreach_copy_(self._prev, params)
        self._pending = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not self._pending:  # a micro-batch that did not end an optimizer step (gradient accumulation)
            return
        self._pending = False
        params = [local(p.detach()) for _, p in self._tracked]
        torch._foreach_sub_(self._prev, params if params[0].dtype == self._prev[0].dtype
                            else [p.to(self._prev[0].dtype) for p in params])  # θ_before − θ_after = −Δθ
        torch._foreach_addcmul_([local(self.omega[n]) for n in self._names], self._grad, self._prev)  # ω += g·(−Δθ)

    def task_importance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo
                        ) -> dict[str, Tensor]:
        params = dict(self._tracked)  # the state follows the model (on the CPU after a resumed fit's teardown)
        self.omega = {n: like_param(t, params[n]) if n in params else t.to(pl_module.device)
                      for n, t in self.omega.items()}
        out = {}
        for name, p in self._tracked:
            start = self.anchor.get(name)
            omega = self.omega.get(name)
            if start is None or omega is None:
                continue
            delta2 = (p.detach().to(start.dtype) - start).pow_(2)
            out[name] = omega.clamp_min(0).div_(delta2.add_(self.damping))
            omega.zero_()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),  # gathered into full tensors under FSDP2 (a collective)
                "omega": {n: gather_full(t.detach()).cpu().clone() for n, t in self.omega.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.omega = dict(state_dict["omega"])
