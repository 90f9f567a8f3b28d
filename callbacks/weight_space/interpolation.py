"""WeightInterpolation (WiSE-FT, LM-Cocktail): at task end move the weights back toward an anchor."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from clight.callbacks._rows import TaskRows, stack_rows
from clight.callbacks._utils import (
    check_arg,
    check_head_arg,
    head_rows,
    resolve_head,
    seeded_generator,
    trainable_parameters,
)
from clight.callbacks.rehearsal.base import forward_examples
from clight.callbacks.weight_space.base import (
    WeightSpaceCallback,
    cpu_state,
    load_weights_,
    snapshot,
)
from clight.contracts import ContinualModel, ExampleStream, HasOutputHead, optional, require
from clight.errors import ClightConfigError
from clight.task import TaskInfo

DEFAULT_GRID = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def interpolate(anchor: dict[str, Tensor], finetuned: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 − α) · θ_anchor + α · θ`` for every key of ``anchor`` (computed in float32, returned in θ's dtype)."""
    return {k: torch.lerp(anchor[k].to(finetuned[k].device).float(), finetuned[k].float(), alpha).to(finetuned[k].dtype)
            for k in anchor}


class WeightInterpolation(WeightSpaceCallback):
    """At the end of every task set ``θ ← (1 − α) · θ_anchor + α · θ`` over the trainable weights.

    With ``anchor: pretrained`` (WiSE-FT, "Robust fine-tuning of zero-shot models") ``θ_anchor`` is the weights at
    the start of the stream, captured when the first task starts; with ``anchor: previous`` (LM-Cocktail-style
    mixing with the previous model) it is the weights at the start of the current task, i.e. the previous task's
    final (interpolated) model. The next task trains from the interpolated weights. ``α = 1`` is plain
    fine-tuning, ``α = 0`` discards the task.

    ``alpha: auto`` chooses ``α`` from ``alpha_grid`` at each task end: the mean task loss over
    ``selection_examples`` examples of every task seen so far (averaged per task, then over tasks) is computed
    for each candidate and the lowest wins (ties: the larger ``α``). **The examples are training examples** of
    the seen tasks (a fixed sample per task, seeded from ``(seed, task)``), not held-out data: the datamodules
    keep their test files for evaluation only, and choosing ``α`` on them would leak the test set. Past tasks'
    training examples measure how much of them the model has kept; the current task's favour larger ``α``. The
    losses are computed sharded over the ranks and all-gathered, so every rank chooses the same ``α``. Chosen
    values are kept in ``alphas`` (state) and printed.

    The classification head starts from a random init, not a pretrained one, so with ``anchor: pretrained``
    ``interpolate_head: false`` keeps the fine-tuned head (``head``, else the module's ``output_head()``) instead
    of mixing it with noise. State (CPU tensors): the anchor(s) and the chosen ``α`` per task. With a datamodule
    that has no ``train_examples`` (a plain ``DataLoader`` per task), ``alpha: auto`` scores on rows of each
    task's training batches, kept in the state. Sharded strategies are refused.

    Args:
        alpha: the weight ``α`` of the fine-tuned model in ``[0, 1]``, or ``auto``.
        alpha_grid: candidates for ``alpha: auto`` (values in ``[0, 1]``); empty: 0, 0.1, ..., 1.
        anchor: ``pretrained`` (weights at the stream's start) or ``previous`` (weights at this task's start).
        interpolate_head: also interpolate the classification head's parameters.
        selection_examples: training examples per seen task used to score each ``α`` (``alpha: auto``).
        seed: seed of the example sample; empty: the datamodule's ``seed``.
        head: the dotted name of the module's output layer (``interpolate_head: false``); empty: its
            ``output_head()``.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.WeightInterpolation
              init_args: {alpha: 0.5, anchor: pretrained, interpolate_head: false}
    """

    def __init__(
        self,
        *,
        alpha: float | Literal["auto"] = 0.5,
        alpha_grid: list[float] | None = None,
        anchor: Literal["pretrained", "previous"] = "pretrained",
        interpolate_head: bool = True,
        selection_examples: int = 128,
        seed: int | None = None,
        head: str | None = None,
    ) -> None:
        super().__init__()
        check_head_arg(head)
        fixed = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
        check_arg((fixed and 0.0 <= alpha <= 1.0) or alpha == "auto", "alpha", "a number in [0, 1] or `auto`",
                  alpha, "E.g. `alpha: 0.5` (WiSE-FT's default mix) or `alpha: auto` to choose it per task.")
        grid = DEFAULT_GRID if alpha_grid is None else alpha_grid
        check_arg(isinstance(grid, (list, tuple)) and len(grid) > 0
                  and all(isinstance(a, (int, float)) and 0.0 <= a <= 1.0 for a in grid),
                  "alpha_grid", "a non-empty list of numbers in [0, 1]", alpha_grid, "E.g. `[0.25, 0.5, 0.75, 1.0]`.")
        check_arg(alpha_grid is None or alpha == "auto", "alpha_grid", "empty unless `alpha: auto`", alpha_grid,
                  "Set `alpha: auto` to choose from the grid, or remove `alpha_grid`.")
        check_arg(anchor in ("pretrained", "previous"), "anchor", "`pretrained` or `previous`", anchor,
                  "`pretrained` mixes with the weights at the stream's start, `previous` with this task's start.")
        check_arg(isinstance(selection_examples, int) and selection_examples >= 1, "selection_examples",
                  "an integer >= 1", selection_examples, "E.g. 128 training examples per seen task.")
        check_arg(seed is None or (isinstance(seed, int) and seed >= 0), "seed", "empty or an integer >= 0", seed,
                  "Leave it empty to use the datamodule's seed.")
        self.alpha: float | str = float(alpha) if fixed else "auto"
        self.alpha_grid = sorted({float(a) for a in grid})
        self.anchor, self.interpolate_head = anchor, bool(interpolate_head)
        self.selection_examples, self.seed = selection_examples, seed
        self.pretrained: dict[str, Tensor] | None = None
        self.task_start: dict[str, Tensor] | None = None
        self.alphas: list[float] = []
        self.head = head
        self.batch_rows: TaskRows | None = None  # `alpha: auto` without the stream's examples: the batches' rows
        self.samples: list[dict[str, Tensor]] = []  # ... of every finished task, `selection_examples` each

    @property
    def state_key(self) -> str:
        return self._generate_state_key(alpha=self.alpha, anchor=self.anchor)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if self.head is not None:
            resolve_head(pl_module, self.head)
        elif not self.interpolate_head and not isinstance(pl_module, HasOutputHead):
            raise ClightConfigError(
                f"`interpolate_head`: false keeps the output head fine-tuned, but `{type(pl_module).__name__}` "
                "declares none. Give `head: <submodule name>`, declare `output_head()` on the module, or set "
                "`interpolate_head: true`.")
        if self.alpha != "auto":
            return
        who, fix = "WeightInterpolation(alpha: auto)", "Use a fixed `alpha`, or add the missing members."
        require(pl_module, ContinualModel, who=who, role="module", fix=fix)
        if not optional(trainer.datamodule, ExampleStream, who=who, role="datamodule", fix=fix):
            self.batch_rows = self.batch_rows or TaskRows(self.selection_examples, "WeightInterpolation")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self.batch_rows is not None:
            self.batch_rows.observe(trainer, batch, self._seed(trainer))

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.batch_rows is not None:
            self.batch_rows.start(trainer, task.index)
        super().on_task_start(trainer, pl_module, task)

    def _seed(self, trainer: pl.Trainer) -> int:
        return self.seed if self.seed is not None else int(getattr(trainer.datamodule, "seed", 0) or 0)

    # ---- task boundaries ---------------------------------------------------------------------------------
    def _tracked(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        params = trainable_parameters(pl_module)
        if not self.interpolate_head:
            for name in head_rows(pl_module, self.head):
                params.pop(name, None)
        return params

    def begin_task(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        params = self._tracked(pl_module)
        if self.anchor == "pretrained":
            self.pretrained = self.pretrained or {}
            fresh = {k: p for k, p in params.items() if k not in self.pretrained}  # first task, or newly trained
            self.pretrained.update(snapshot(fresh))
        else:
            self.task_start = snapshot(params)

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        anchor = self.pretrained if self.anchor == "pretrained" else self.task_start
        params = self._tracked(pl_module)
        anchor = {k: v for k, v in (anchor or {}).items() if k in params}
        finetuned = {k: params[k].detach().clone() for k in anchor}
        alpha = self.alpha if self.alpha != "auto" else self._choose_alpha(trainer, pl_module, task, anchor, finetuned)
        load_weights_(pl_module, interpolate(anchor, finetuned, alpha))
        self.alphas.append(float(alpha))
        self.task_start = None

    # ---- choosing alpha ----------------------------------------------------------------------------------------
    def _selection_examples(self, trainer: pl.Trainer, task: TaskInfo) -> list[list[Any]]:
        if self.batch_rows is not None:  # rows of every finished task's batches, this one's added now
            rows = self.batch_rows.gather(trainer)[: self.selection_examples]
            self.batch_rows.clear()
            self.samples = self.samples[: task.index] + [stack_rows(rows)]
            return [[{k: v[i] for k, v in sample.items()} for i in range(len(next(iter(sample.values()))))]
                    for sample in self.samples if sample]
        dm = trainer.datamodule
        seed = self.seed if self.seed is not None else int(getattr(dm, "seed", 0))
        seen = range(len(dm.train_examples)) if getattr(dm, "joint", False) else range(task.index + 1)
        samples = []
        for i in seen:
            examples = dm.train_examples[i]
            g = seeded_generator(seed, i, 0xA1FA)  # the same sample of task i at every later task end
            keep = torch.randperm(len(examples), generator=g)[: self.selection_examples].sort().values
            samples.append([examples[j] for j in keep.tolist()])
        return samples

    def _choose_alpha(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo,
                      anchor: dict[str, Tensor], finetuned: dict[str, Tensor]) -> float:
        samples = self._selection_examples(trainer, task)
        flat = [ex for sample in samples for ex in sample]
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(samples)])  # (E,) task of each example
        batch_size = getattr(trainer.datamodule, "eval_batch_size", 32)
        collate = stack_rows if self.batch_rows is not None else None
        scores = []
        for alpha in self.alpha_grid:
            load_weights_(pl_module, interpolate(anchor, finetuned, alpha))
            losses = forward_examples(trainer, pl_module, flat,
                                      lambda b, o: {"loss": pl_module.per_example_loss(b, o).double()},
                                      batch_size, collate)["loss"]  # (E,), identical on every rank
            per_task = torch.zeros(len(samples), dtype=torch.float64).index_add_(0, owner, losses)
            per_task /= torch.tensor([len(s) for s in samples], dtype=torch.float64)
            scores.append(float(per_task.mean()))
        best = min(range(len(scores)), key=lambda i: (scores[i], -self.alpha_grid[i]))
        rank_zero_info(f"WeightInterpolation: task {task.name!r}: alpha={self.alpha_grid[best]} (mean training-example "
                       f"loss of the seen tasks per alpha: "
                       + ", ".join(f"{a:g}: {s:.4f}" for a, s in zip(self.alpha_grid, scores)) + ")")
        return self.alpha_grid[best]

    # ---- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "pretrained": cpu_state(self.pretrained),
                 "task_start": cpu_state(self.task_start), "alphas": list(self.alphas)}
        if self.batch_rows is not None:  # (a collective under DDP while a task is under way)
            state.update(batch_rows=self.batch_rows.state_dict(), samples=[dict(s) for s in self.samples])
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.pretrained = None if state_dict["pretrained"] is None else dict(state_dict["pretrained"])
        self.task_start = None if state_dict["task_start"] is None else dict(state_dict["task_start"])
        self.alphas = [float(a) for a in state_dict["alphas"]]
        if "batch_rows" in state_dict:
            self.batch_rows = self.batch_rows or TaskRows(self.selection_examples, "WeightInterpolation")
            self.batch_rows.load_state_dict(state_dict["batch_rows"])
            self.samples = [dict(s) for s in state_dict["samples"]]
