"""A-GEM: project every gradient so that it does not increase the loss on a batch of the memory."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from clight.callbacks.rehearsal.base import MemoryCallback
from clight.callbacks.rehearsal.memory import Policy, Selection
from clight.errors import ClightConfigError


def agem_project_(grads: list[Tensor], reference: Tensor) -> bool:
    """Project ``grads`` in place so they do not oppose ``reference`` (A-GEM's rule).

    With ``g`` the concatenation of ``grads`` and ``r`` the flat ``reference``: if ``g·r < 0`` then
    ``g ← g − (g·r / r·r) r``, else ``grads`` are left untouched. The dot products run on flattened vectors
    and the update is one ``torch._foreach_add_`` over the parameter list. Returns whether it projected."""
    flat = torch.cat([g.reshape(-1) for g in grads]).float()  # (P,)
    ref = reference.float()
    dot, norm2 = torch.stack([flat @ ref, ref @ ref]).tolist()  # one device sync
    if dot >= 0 or norm2 <= 0:
        return False
    views = [v.view_as(g).to(g.dtype) for v, g in zip(reference.split([g.numel() for g in grads]), grads)]
    torch._foreach_add_(grads, views, alpha=-dot / norm2)
    return True


class AGEM(MemoryCallback):
    """Averaged gradient episodic memory: keep each update from increasing the loss on past tasks' examples.

    Before every optimizer step (after gradient accumulation and AMP unscaling, before clipping) a batch of
    ``replay_batch_size`` memory examples per rank gives a reference gradient ``r``; when the accumulated
    gradient ``g`` points against it (``g·r < 0``) it is replaced by its projection
    ``g − (g·r / r·r) r``. Under DDP the memory forward runs through the LightningModule, not the DDP wrapper,
    and the reference comes from ``torch.autograd.grad``, which leaves ``.grad`` (the current, already
    synchronised gradient) and DDP's gradient hooks alone; the flat reference is then averaged over ranks, so
    every rank projects identically. The memory follows :class:`~clight.callbacks.Replay` (policies,
    selection, ``memmap_dir``). Sharded strategies (FSDP, DeepSpeed) are refused: the projection needs full
    gradients. ``train/agem_projected`` logs whether a step was projected.

    Args:
        memory_size: the most examples the memory holds.
        replay_batch_size: memory examples per rank for the reference gradient of each step.
        policy: ``reservoir``, ``class_balanced`` or ``task_balanced`` (see ``Replay``).
        selection: ``random`` or ``highest_loss`` (see ``Replay``).
        score_pool: examples scored per task for ``highest_loss``.
        seed: seed of the memory's random choices; empty: the datamodule's ``seed``.
        memmap_dir: keep the memory in memory-mapped files in this folder (relative: inside the run
            directory; see ``Replay``).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.AGEM
              init_args: {memory_size: 200, replay_batch_size: 32}
    """

    sharded_reason = ("its projection needs every parameter's full gradient, which a sharded strategy splits across "
                      "ranks; `Replay` and `DarkExperienceReplay` are the rehearsal alternatives")

    def __init__(
        self,
        *,
        memory_size: int = 200,
        replay_batch_size: int = 32,
        policy: Policy = "reservoir",
        selection: Selection = "random",
        score_pool: int = 4096,
        seed: int | None = None,
        memmap_dir: str | None = None,
    ) -> None:
        super().__init__(memory_size=memory_size, replay_batch_size=replay_batch_size, policy=policy,
                         selection=selection, score_pool=score_pool, seed=seed, memmap_dir=memmap_dir)
        self.steps = 0  # optimizer steps with a non-empty memory, over the stream
        self.projected = 0  # of which projected

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ClightConfigError("`AGEM` edits gradients in automatic optimization; the module uses manual "
                                    "optimization. Project the gradients in your own `training_step` instead.")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.memory.size == 0:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        batch, _ = self._memory_batch(trainer, pl_module, self._task_index, trainer.global_step, 0xA6E)
        reference = self._reference_gradient(trainer, pl_module, params, batch)
        projected = agem_project_([p.grad for p in params], reference)
        self.steps += 1
        self.projected += int(projected)
        pl_module.log("train/agem_projected", float(projected), on_step=True, on_epoch=False, batch_size=1)

    def _reference_gradient(self, trainer: pl.Trainer, pl_module: pl.LightningModule, params: list[Tensor],
                            batch: dict[str, Tensor] | None) -> Tensor:
        """The memory batch's loss gradient over ``params``, flattened and averaged over ranks. ``(P,)``"""
        grads: tuple[Tensor | None, ...] = (None,) * len(params)
        if batch is not None:  # a rank with no memory rows this step contributes zeros to the average
            # the optimizer step runs under no_grad; the forward bypasses the DDP wrapper on purpose
            with torch.enable_grad(), trainer.precision_plugin.forward_context():
                loss = pl_module.task_loss(batch, pl_module(batch))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        if trainer.world_size > 1:
            flat = trainer.strategy.reduce(flat, reduce_op="mean")
        return flat

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps": self.steps, "projected": self.projected}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.steps, self.projected = int(state_dict["steps"]), int(state_dict["projected"])
