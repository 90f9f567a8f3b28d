"""Dark experience replay (DER / DER++): replay memory examples and match the logits stored with them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.fabric.utilities import move_data_to_device
from torch import Tensor

from clight.callbacks._utils import check_arg
from clight.callbacks.rehearsal.base import forward_examples
from clight.callbacks.rehearsal.memory import Example, Policy, Selection
from clight.callbacks.rehearsal.replay import Replay


def der_logit_loss(logits: Tensor, stored: Mapping[str, Tensor]) -> Tensor:
    """Mean squared error between the model's logits and the stored ones.

    Classification: ``logits`` ``(B, C)`` against ``stored["logits"]`` ``(B, C)``. Causal LM: ``logits``
    ``(B, T, V)`` gathered at ``stored["topk_indices"]`` ``(B, W, k)`` against ``stored["topk_values"]``,
    over the positions below ``stored["lengths"]`` (``W >= T``: the memory's width; every position for batch rows,
    which have no ``lengths``)."""
    if "logits" in stored:
        return F.mse_loss(logits.float(), stored["logits"].float())
    t = logits.shape[1]
    index = stored["topk_indices"][:, :t].long()  # (B, T, k)
    student = logits.float().gather(-1, index)  # (B, T, k)
    lengths = stored.get("lengths")
    if lengths is None:
        lengths = torch.full((logits.shape[0],), t, device=logits.device)
    mask = (torch.arange(t, device=logits.device) < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
    squared = (student - stored["topk_values"][:, :t].float()).pow(2) * mask
    return squared.sum() / (mask.sum() * index.shape[-1]).clamp_min(1)


class DarkExperienceReplay(Replay):
    """Replay memory examples and pull the model's logits on them toward the logits stored with them.

    DER (``beta: 0``) adds ``alpha * MSE(f(x), z)`` for a memory batch ``(x, z)`` each step; DER++
    (``beta > 0``) also ``beta * task_loss`` on the same memory batch's labels (the original draws a second
    batch for it; one batch serves both terms here, halving the cost). Terms are logged as ``der`` and
    ``der_ce``. Classification stores the full logit vector; causal LMs store the top-``top_k`` logits and
    their vocabulary indices per token, which keeps the memory to ``2 * top_k`` numbers per token.

    When logits are stored: at the end of each task, from the model trained on that task (classic DER records
    them during training, as examples stream past the reservoir). Task-end logits are those of the converged
    task model, identical on every rank (computed sharded and all-gathered) and reproducible on resume. The
    memory itself follows :class:`~clight.callbacks.Replay` (policies, selection, ``memmap_dir``).

    Args:
        memory_size: the most examples the memory holds.
        replay_batch_size: memory examples per step and rank.
        alpha: weight of the logit-matching MSE term.
        beta: weight of the cross-entropy on the memory's labels (``0``: DER, ``> 0``: DER++).
        top_k: logits kept per token for causal LMs (classification keeps all).
        policy: ``reservoir``, ``class_balanced`` or ``task_balanced`` (see ``Replay``).
        selection: ``random`` or ``highest_loss`` (see ``Replay``).
        score_pool: examples scored per task for ``highest_loss``.
        seed: seed of the memory's random choices; empty: the datamodule's ``seed``.
        memmap_dir: keep the memory (logits included) in memory-mapped files in this folder (relative: inside
            the run directory; see ``Replay``).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.DarkExperienceReplay
              init_args: {memory_size: 200, replay_batch_size: 32, alpha: 0.5, beta: 0.5}
    """

    term_name = "der"
    per_token_fields = Replay.per_token_fields | {"topk_values", "topk_indices"}

    def __init__(
        self,
        *,
        memory_size: int = 200,
        replay_batch_size: int = 32,
        alpha: float = 0.5,
        beta: float = 0.5,
        top_k: int = 16,
        policy: Policy = "reservoir",
        selection: Selection = "random",
        score_pool: int = 4096,
        seed: int | None = None,
        memmap_dir: str | None = None,
    ) -> None:
        check_arg(isinstance(alpha, (int, float)) and alpha > 0, "alpha", "a number > 0", alpha,
                  "Use `Replay` for replay without logit matching.")
        check_arg(isinstance(beta, (int, float)) and beta >= 0, "beta", "a number >= 0", beta,
                  "Use `beta: 0` for DER, `beta: 0.5` (e.g.) for DER++.")
        check_arg(isinstance(top_k, int) and top_k >= 1, "top_k", "an integer >= 1", top_k,
                  "E.g. `top_k: 16` logits per token for causal LMs.")
        super().__init__(memory_size=memory_size, mode="per_batch", replay_batch_size=replay_batch_size,
                         weight=alpha, policy=policy, selection=selection, score_pool=score_pool, seed=seed,
                         memmap_dir=memmap_dir)
        self.alpha, self.beta, self.top_k = float(alpha), float(beta), top_k

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, policy=self.policy, selection=self.selection)

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("der", "der_ce") if self.beta > 0 else ("der",)

    def _payload(self, trainer: pl.Trainer, pl_module: pl.LightningModule, examples: list[Example],
                 rows: dict[str, Tensor]) -> dict[str, Tensor]:
        width = rows["tokens"].shape[1] if "tokens" in rows else None  # batch rows: the logits' own length

        def logits_of(batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> dict[str, Tensor]:
            logits = outputs["logits"].float()
            if logits.dim() == 2:  # (B, C)
                return {"logits": logits}
            values, index = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1)  # (B, T, k)
            if width is None:
                return {"topk_values": values, "topk_indices": index.int()}
            padded_values = values.new_zeros((values.shape[0], width, values.shape[-1]))  # (B, W, k)
            padded_index = torch.zeros(padded_values.shape, dtype=torch.int32, device=values.device)
            padded_values[:, : values.shape[1]] = values
            padded_index[:, : values.shape[1]] = index.int()
            return {"topk_values": padded_values, "topk_indices": padded_index}

        return forward_examples(trainer, pl_module, examples, logits_of,
                                getattr(trainer.datamodule, "eval_batch_size", 32), self._collate(trainer))

    def loss_terms(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                   outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        memory, rows = self.memory_batch(trainer, pl_module)
        if memory is None:
            zero = outputs["logits"].new_zeros(())
            return {name: weight * zero for name, weight in zip(self.loss_term_names, (self.alpha, self.beta))}
        fields = self.memory.fields
        stored = {k: fields[k][rows] for k in ("logits", "topk_values", "topk_indices", "lengths") if k in fields}
        replayed = pl_module(memory)  # one forward of the memory batch serves both terms
        terms = {"der": self.alpha * der_logit_loss(replayed["logits"], move_data_to_device(stored, pl_module.device))}
        if self.beta > 0:
            terms["der_ce"] = self.beta * pl_module.task_loss(memory, replayed)
        return terms
