"""HalfFineTuning (HFT): every task trains a freshly drawn half of each transformer layer and freezes the rest."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from clight.callback import ContinualCallback, current_task, stream_seed
from clight.callbacks._utils import (
    check_arg,
    check_head,
    check_head_arg,
    head_parameter_names,
    seeded_generator,
)
from clight.callbacks.masking.base import set_frozen
from clight.errors import ClightConfigError
from clight.functional.masking import (
    hft_choose,
    hft_units,
    is_embedding,
    layer_index,
    module_path,
    normalize_name,
)

_HFT_STREAM = 0x4F7  # separates HFT's draws from other users of (seed, task) generators


def embedding_names(pl_module: nn.Module) -> set[str]:
    """Normalized names of the embedding parameters: the backbone's input and output embeddings (the LM head
    of a causal LM) and every parameter under a module whose name contains ``embed``. The backbone is the
    module's ``backbone``, else its first Hugging Face model (a submodule with ``get_input_embeddings``)."""
    ids: set[int] = set()
    backbone = getattr(pl_module, "backbone", None)
    if backbone is None:
        backbone = next((m for m in pl_module.modules() if callable(getattr(m, "get_input_embeddings", None))), None)
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(backbone, getter, None)
        module = fn() if callable(fn) else None
        if isinstance(module, nn.Module):
            ids |= {id(p) for p in module.parameters()}
    return {normalize_name(n) for n, p in pl_module.named_parameters() if id(p) in ids or is_embedding(normalize_name(n))}


class HalfFineTuning(ContinualCallback):
    """Half Fine-Tuning (Hui et al. 2024): each task trains a random half of every transformer layer's modules
    and freezes the other half, so about half of what earlier tasks learned stays untouched.

    In every layer (``layer.<i>.`` / ``layers.<i>.`` / ``h.<i>.`` / ``blocks.<i>.`` in the parameter names) the
    modules fall into HFT's categories — attention matrices (query, key, value, output), feed-forward matrices
    (BERT's two, LLaMA's gate/up/down) and normalization layers — and half of each category trains (an odd
    count trains one more on a fair coin); a module's bias goes with its weight. The embeddings (and the LM
    head of a causal LM, the output embedding) are frozen unless ``train_embeddings: true``; other parameters
    outside the layers (a final norm) and the output head (``head``, else the module's ``output_head()``) train.
    The draw uses a generator seeded by
    ``(seed, task index)``, so it is identical on every rank, reproducible on resume, and differs from task to
    task; each task's choice is recorded in the state (and reused if the task is resumed). Freezing is real
    (``requires_grad=False`` in ``setup``, before the optimizer), which also saves gradient time and memory.
    On the WordNet class-incremental stream it forgets *more* than naive fine-tuning (measured, with a diagnosis,
    in docs/techniques/masking.md); ``redraw: false`` forgets less than the per-task redraw there,
    still more than naive.

    Args:
        seed: seed of the draws; empty: the datamodule's ``seed``.
        train_embeddings: train the embeddings instead of freezing them.
        redraw: draw a new half for every task (HFT's setting); ``false`` draws once, at the first task, and
            every later task trains the same half, so the other half keeps its pretrained values for the whole
            stream.
        head: the dotted name of the module's output layer (e.g. ``classifier``); empty: its ``output_head()``.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.HalfFineTuning
              init_args: {train_embeddings: false, redraw: true}
    """

    supports_sharded = True  # per-parameter `requires_grad` under FSDP2, as FreezeParameters (tests/test_sharded.py)

    def __init__(self, *, seed: int | None = None, train_embeddings: bool = False, redraw: bool = True,
                 head: str | None = None) -> None:
        super().__init__()
        check_head_arg(head)
        self.head = head
        check_arg(seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0), "seed",
                  "empty or an integer >= 0", seed, "Leave it empty to use the datamodule's seed.")
        check_arg(isinstance(train_embeddings, bool), "train_embeddings", "true or false", train_embeddings,
                  "See the `HalfFineTuning` docstring.")
        check_arg(isinstance(redraw, bool), "redraw", "true or false", redraw, "See the `HalfFineTuning` docstring.")
        self.seed, self.train_embeddings, self.redraw = seed, train_embeddings, redraw
        self.choices: dict[int, list[str]] = {}  # task index -> trained module paths

    @property
    def state_key(self) -> str:
        return self._generate_state_key(seed=self.seed, train_embeddings=self.train_embeddings, redraw=self.redraw)

    def choose(self, pl_module: nn.Module, task_index: int, seed: int) -> list[str]:
        """The module paths task ``task_index`` trains (drawn once, then taken from ``choices``; without
        ``redraw`` every task takes the first task's draw)."""
        if not self.redraw and self.choices:
            first = min(self.choices)
            self.choices.setdefault(task_index, list(self.choices[first]))
        if task_index not in self.choices:
            layers = hft_units([normalize_name(n) for n, _ in pl_module.named_parameters()])
            self.choices[task_index] = hft_choose(layers, seeded_generator(seed, task_index, _HFT_STREAM))
        return self.choices[task_index]

    def frozen_names(self, pl_module: nn.Module, trained: list[str]) -> set[str]:
        """The normalized parameter names frozen when the modules ``trained`` train."""
        keep = set(trained)
        names = [normalize_name(n) for n, _ in pl_module.named_parameters()]
        frozen = {n for n in names if layer_index(n) is not None and module_path(n) not in keep}
        if not self.train_embeddings:
            frozen |= embedding_names(pl_module)
        return frozen - head_parameter_names(pl_module, self.head)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        names = [normalize_name(n) for n, _ in pl_module.named_parameters()]
        if not hft_units(names):
            raise ClightConfigError(
                "`HalfFineTuning` found no transformer layers in the module's parameter names (it looks for "
                "`layer.<i>.`, `layers.<i>.`, `h.<i>.` or `blocks.<i>.`, e.g. `backbone.encoder.layer.0.`). Use "
                "`FreezeParameters` with explicit selectors for this model, or remove the callback."
            )
        check_head(pl_module, self.head, "HalfFineTuning")
        task = current_task(trainer, self.tasks_seen)
        trained = self.choose(pl_module, task.index, stream_seed(trainer, self.seed))
        count, total = set_frozen(pl_module, self.state_key, self.frozen_names(pl_module, trained))
        share = sum(p.numel() for p in pl_module.parameters() if not p.requires_grad)
        share /= max(1, sum(p.numel() for p in pl_module.parameters()))
        rank_zero_info(f"HalfFineTuning: task {task.name!r}: trains {len(trained)} layer modules; {count}/{total} "
                       f"parameter tensors frozen ({share:.1%} of the weights)")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "choices": {k: list(v) for k, v in self.choices.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.choices = {int(k): list(v) for k, v in state_dict["choices"].items()}
