"""Layer-wise feature distillation from the previous task's model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from clight.callbacks._utils import check_arg
from clight.callbacks.distillation.base import TeacherCallback, TeacherDevice
from clight.contracts import HasFeatureBlocks
from clight.errors import ClightConfigError
from clight.functional.penalties import feature_distance
from clight.hub import transformer_blocks

FeatureLoss = Literal["mse", "cosine"]


def feature_blocks(pl_module: nn.Module) -> tuple[list[nn.Module] | None, nn.Module]:
    """The blocks whose outputs are distilled and the model searched: the module's ``feature_blocks()`` when it
    declares them, else the transformer blocks of its ``backbone`` (or of its first Hugging Face submodule)."""
    if isinstance(pl_module, HasFeatureBlocks):
        return list(pl_module.feature_blocks()), pl_module
    backbone = getattr(pl_module, "backbone", None)
    if backbone is None:
        backbone = next((m for m in pl_module.modules()
                         if getattr(getattr(m, "config", None), "num_hidden_layers", None)), pl_module)
    blocks = transformer_blocks(backbone)
    return (list(blocks) if blocks is not None else None), backbone


class FeatureDistillation(TeacherCallback):
    """Keep chosen hidden layers close to the previous task's model, layer by layer.

    Layer-wise feature distillation (as in task-aware layer-wise distillation, Liang et al. 2023, and
    Romero et al. 2015's hints): at every task end the trained model becomes the teacher (a snapshot of the
    trainable parameters, see :class:`TeacherCallback`); on later training batches the loss term
    ``feature_distill`` adds ``alpha · Σ_l w_l · d(h_l^student, h_l^teacher)`` over the non-padding tokens,
    with ``h_l`` the output of transformer block ``l`` (or of the module's ``feature_blocks()``) and ``d`` the
    mean squared error or ``1 − cos``. The
    student's states are captured by forward hooks on the blocks during the normal training forward (no second
    student pass); the teacher's by the same hooks during its no-grad forward.

    Costs: one teacher forward per training batch, the captured states of the chosen layers, and one copy of the
    trainable parameters.

    Args:
        layers: indices of transformer blocks (0 = the first block's output, -1 = the last's).
        weights: one weight per layer (empty: equal weights summing to 1).
        loss: ``mse`` or ``cosine``.
        alpha: weight of the term.
        teacher_device: ``same`` (the model's device) or ``cpu`` (offloaded; copied over each step).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.FeatureDistillation
              init_args: {layers: [1, 3, 5], loss: mse, alpha: 1.0}
    """

    term_name = "feature_distill"

    def __init__(
        self,
        *,
        layers: list[int] | None = None,
        weights: list[float] | None = None,
        loss: FeatureLoss = "mse",
        alpha: float = 1.0,
        teacher_device: TeacherDevice = "same",
    ) -> None:
        layers = [-1] if layers is None else layers
        check_arg(isinstance(layers, (list, tuple)) and len(layers) > 0
                  and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
                  and len(set(layers)) == len(layers), "layers", "a non-empty list of distinct block indices",
                  layers, "E.g. `layers: [1, 3, 5]` (negative counts from the last block).")
        check_arg(weights is None or (isinstance(weights, (list, tuple)) and len(weights) == len(layers)
                                      and all(isinstance(w, (int, float)) and w >= 0 for w in weights)
                                      and sum(weights) > 0),
                  "weights", f"empty or {len(layers)} numbers >= 0 (one per layer, not all 0)", weights,
                  "Leave it empty for equal weights.")
        check_arg(loss in ("mse", "cosine"), "loss", "`mse` or `cosine`", loss, "Choose one of the two.")
        check_arg(isinstance(alpha, (int, float)) and alpha > 0, "alpha", "a number > 0", alpha,
                  "Remove the callback to train without feature distillation.")
        super().__init__(weight=alpha, teacher_device=teacher_device)
        self.layers = list(layers)
        self.weights = [float(w) for w in weights] if weights is not None else [1.0 / len(layers)] * len(layers)
        self.loss, self.alpha = loss, float(alpha)
        self._hooks: list[Any] = []
        self._capture: dict[int, Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, loss=self.loss)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        blocks, backbone = feature_blocks(pl_module)
        if blocks is None:
            depth = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
            raise ClightConfigError(
                f"`FeatureDistillation` could not find the transformer blocks of {type(backbone).__name__} (an "
                f"`nn.ModuleList` of `config.num_hidden_layers` = {depth} blocks). Use a Hugging Face model, declare "
                "`feature_blocks()` on the module (`clight.contracts.HasFeatureBlocks`), or use `Distillation`.")
        bad = [i for i in self.layers if not -len(blocks) <= i < len(blocks)]
        if bad:
            raise ClightConfigError(f"`layers`: {bad} out of range for a model of {len(blocks)} blocks; use "
                                    f"indices in [{-len(blocks)}, {len(blocks) - 1}].")
        for h in self._hooks:
            h.remove()
        self._hooks = [blocks[i].register_forward_hook(self._hook(k)) for k, i in enumerate(self.layers)]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _hook(self, slot: int) -> Any:
        def capture(module: nn.Module, args: Any, output: Any) -> None:
            if self._capture is not None and slot not in self._capture:  # the first forward of the batch
                self._capture[slot] = output[0] if isinstance(output, (tuple, list)) else output
        return capture

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._capture = {} if self.teacher else None  # the student's forward fills it

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        self._capture = None

    def distillation_loss(self, module: pl.LightningModule, batch: Mapping[str, Tensor],
                          outputs: Mapping[str, Tensor]) -> Tensor:
        student = self._capture
        if not self.teacher or not student:
            return outputs["logits"].new_zeros(())
        self._capture = {}
        try:
            self.teacher_forward(module, batch)
            teacher = self._capture
        finally:
            self._capture = None
        mask = batch.get("attention_mask")  # (B, T); a batch without one compares every position
        total = outputs["logits"].new_zeros((), dtype=torch.float32)
        for slot, w in enumerate(self.weights):
            total = total + w * feature_distance(student[slot], teacher[slot], self.loss, mask)
        return total
