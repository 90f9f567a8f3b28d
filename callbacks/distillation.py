"""Learning without forgetting (knowledge distillation from the previous task's model) and layer-wise feature
distillation, with the teacher held as a snapshot of the trainable parameters only."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call

from clight.callback import ContinualCallback, is_sharded
from clight.callbacks.rehearsal import check_arg
from clight.callbacks.weight_space import trainable_parameters
from clight.errors import ClightConfigError
from clight.functional.penalties import distillation_kl, feature_distance
from clight.hub import transformer_blocks
from clight.sharding import gather_full, is_dtensor, like_param, local
from clight.task import TaskInfo

TeacherDevice = Literal["same", "cpu"]
FeatureLoss = Literal["mse", "cosine"]


class TeacherCallback(ContinualCallback):
    """Base of the distillation callbacks: at every task end, snapshot the trainable parameters as the teacher.

    The teacher is *not* a second module: its forward is the student module run through
    :func:`torch.func.functional_call` with the snapshot in place of the trainable parameters (frozen ones are
    shared, so a LoRA run keeps only the adapter and the head twice, not the base), in eval mode (dropout off)
    and without gradients. ``teacher_device: cpu`` keeps the snapshot in host memory and copies it over for
    each step's teacher forward (less accelerator memory, one host-to-device copy per step). Weights are
    identical on every rank, so the snapshot is too.

    Under FSDP2 the snapshot is sharded like the parameters (each rank keeps its shard). FSDP all-gathers a
    block's weights from the shards just before running it, so ``functional_call`` cannot swap the teacher in.
    Instead the teacher's shards are copied into the parameters' shards for the no-grad teacher forward, and
    the student's are copied back afterwards, with every FSDP unit resharded around that forward. The
    student's backward then all-gathers the student's weights again (``tests/test_sharded.py`` compares the
    result with DDP). This costs two copies of the local shards per step and a transient buffer of their size.
    """

    term_name = "distill"
    required_capabilities = frozenset({"loss_terms"})
    supports_sharded = True

    def __init__(self, *, weight: float, teacher_device: TeacherDevice) -> None:
        super().__init__()
        check_arg(teacher_device in ("same", "cpu"), "teacher_device", "`same` or `cpu`", teacher_device,
                  "`same` keeps the teacher on the model's device, `cpu` offloads it.")
        self.weight, self.teacher_device = float(weight), teacher_device
        self.teacher: dict[str, Tensor] = {}
        self.teacher_tasks = 0  # tasks the teacher was trained on
        self._module_ref: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.teacher_device == "cpu" and is_sharded(trainer.strategy):
            raise ClightConfigError(
                f"`{type(self).__name__}`: `teacher_device: cpu` under `{type(trainer.strategy).__name__}`; a sharded "
                "teacher stays with its shards (each rank keeps 1/world of it). Use `teacher_device: same`.")
        if stage == "fit" and (self._module_ref is None or self._module_ref() is not pl_module):
            pl_module.register_loss_term(self.term_name, self._term, self.weight)  # once per module
            self._module_ref = weakref.ref(pl_module)

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        device = pl_module.device if self.teacher_device == "same" else torch.device("cpu")
        params = trainable_parameters(pl_module)
        # a loaded snapshot is full CPU tensors: sharded like its parameter under FSDP2 (a collective)
        self.teacher = {n: like_param(t, params[n]) if is_dtensor(params.get(n)) else t.to(device)
                        for n, t in self.teacher.items()}

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        device = pl_module.device if self.teacher_device == "same" else torch.device("cpu")
        self.teacher = {n: p.detach().clone() if is_dtensor(p) else p.detach().to(device, copy=True)
                        for n, p in trainable_parameters(pl_module).items()}
        self.teacher_tasks = task.index + 1

    @torch.no_grad()
    def teacher_forward(self, module: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The teacher's outputs on ``batch``: ``module`` with the snapshot swapped in, eval mode, no grad."""
        first = next(iter(self.teacher.values()))
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            if is_dtensor(first):
                return self._sharded_teacher_forward(module, batch)
            target = module.device if hasattr(module, "device") else first.device
            weights = (self.teacher if first.device == target
                       else {n: t.to(target, non_blocking=True) for n, t in self.teacher.items()})
            return functional_call(module, weights, (batch,), strict=False)
        finally:
            for m, training in modes:
                m.training = training

    def _sharded_teacher_forward(self, module: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """FSDP2: the teacher's shards copied into the parameters' for one forward, then the student's back."""
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in module.modules() if isinstance(m, FSDPModule)]
        for unit in units:  # drop the student's gathered weights (the roots keep theirs after forward, and while
            unit.reshard()  # gathered a module's parameters are the full tensors, not the sharded DTensors)
        params = dict(module.named_parameters())
        shards = [local(params[n]) for n in self.teacher]
        student = [torch.empty_like(t) for t in shards]
        torch._foreach_copy_(student, shards)
        torch._foreach_copy_(shards, [local(t) for t in self.teacher.values()])
        try:
            return module(batch)
        finally:
            for unit in units:  # drop the teacher's; the student's backward all-gathers the student's again
                unit.reshard()
            torch._foreach_copy_(shards, student)

    def _term(self, module: pl.LightningModule, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor]
              ) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),  # gathered into full tensors under FSDP2 (a collective)
                "teacher": {n: gather_full(t.detach()).cpu().clone() for n, t in self.teacher.items()},
                "teacher_tasks": self.teacher_tasks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.teacher = dict(state_dict["teacher"])  # moved to its device when the next task starts
        self.teacher_tasks = int(state_dict["teacher_tasks"])


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
        classes = getattr(pl_module, "task_classes", None) or []
        if getattr(trainer.datamodule, "joint", False):
            self.old_classes = sorted({c for cs in classes for c in cs})
        else:
            self.old_classes = sorted({c for cs in classes[: task.index + 1] for c in cs})

    def _term(self, module: pl.LightningModule, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor]
              ) -> Tensor:
        student = outputs["logits"]
        if not self.teacher:  # the first task has no teacher
            return student.new_zeros(())
        teacher = self.teacher_forward(module, batch)["logits"]
        if student.dim() == 2:  # classification (B, C): the old classes only
            if self.old_classes:
                index = torch.tensor(self.old_classes, device=student.device)
                student, teacher = student.index_select(-1, index), teacher.index_select(-1, index)
            return distillation_kl(student, teacher, self.temperature)
        mask = batch["attention_mask"].bool()  # (B, T)
        return distillation_kl(student, teacher, self.temperature, top_k=self.top_k, mask=mask)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "old_classes": list(self.old_classes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.old_classes = [int(c) for c in state_dict["old_classes"]]


class FeatureDistillation(TeacherCallback):
    """Keep chosen hidden layers close to the previous task's model, layer by layer.

    Layer-wise feature distillation (as in task-aware layer-wise distillation, Liang et al. 2023, and
    Romero et al. 2015's hints): at every task end the trained model becomes the teacher (a snapshot of the
    trainable parameters, see :class:`TeacherCallback`); on later training batches the loss term
    ``feature_distill`` adds ``alpha · Σ_l w_l · d(h_l^student, h_l^teacher)`` over the non-padding tokens,
    with ``h_l`` the output of transformer block ``l`` and ``d`` the mean squared error or ``1 − cos``. The
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
        backbone = getattr(pl_module, "backbone", pl_module)
        blocks = transformer_blocks(backbone)
        if blocks is None:
            depth = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
            raise ClightConfigError(
                f"`FeatureDistillation` could not find the transformer blocks of {type(backbone).__name__} (an "
                f"`nn.ModuleList` of `config.num_hidden_layers` = {depth} blocks). Use a Hugging Face model, or "
                "`Distillation` on the outputs.")
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
        self._capture = {} if self.teacher else None  # the student's forward fills it

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._capture = None

    def _term(self, module: pl.LightningModule, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor]
              ) -> Tensor:
        student = self._capture
        if not self.teacher or not student:
            return outputs["logits"].new_zeros(())
        self._capture = {}
        try:
            self.teacher_forward(module, batch)
            teacher = self._capture
        finally:
            self._capture = None
        mask = batch["attention_mask"]  # (B, T)
        total = outputs["logits"].new_zeros((), dtype=torch.float32)
        for slot, w in enumerate(self.weights):
            total = total + w * feature_distance(student[slot], teacher[slot], self.loss, mask)
        return total
