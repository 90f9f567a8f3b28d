"""Foreign modules for tests/test_reuse.py: what a user of clight's callbacks writes in their own Lightning project
(no ContinualModule, no clight datamodule; a plain ``DataLoader`` per task and a fresh ``Trainer`` per task).

- ``MLP``: a plain torch MLP on feature tensors (or images), batches ``{"x": float (B, ...), "labels": long (B,)}``;
- ``TinyBert``: a 2-layer ``BertModel`` built from a config with a linear ``classifier``, batches
  ``{"ids": (B, T), "mask": (B, T), "y": (B,)}`` (its own keys, no ``attention_mask``).

Both declare their head (``output_head()``) and each task's classes (``task_classes``), as docs/reuse.md shows;
``lora=True`` wraps the body in a ``peft`` LoRA model and adds :class:`clight.adapters.AdapterMixin`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader

import clight
from clight.adapters import AdapterMixin

TASKS = 3
CLASSES = [[0, 1], [2, 3], [4, 5]]  # two classes per task, one head over all six


class Foreign(pl.LightningModule):
    """What both foreign modules share: the three methods of `clight.contracts.ContinualModel`, the one
    `clight.add_loss_terms` call, the declared head, and a record of every logged value."""

    label_key = "labels"
    task_classes = CLASSES

    def __init__(self) -> None:
        super().__init__()
        self.logged: dict[str, list[float]] = {}

    def task_loss(self, batch, outputs):
        return F.cross_entropy(outputs["logits"], batch[self.label_key])

    def per_example_loss(self, batch, outputs):
        return F.cross_entropy(outputs["logits"], batch[self.label_key], reduction="none")

    def output_head(self) -> nn.Module:
        return self.classifier

    def training_step(self, batch, batch_idx):
        outputs = self(batch)
        loss = self.task_loss(batch, outputs)
        return clight.add_loss_terms(self, loss, batch, outputs, batch_size=outputs["logits"].shape[0])

    def log(self, name, value, *args, **kwargs):  # keep every logged value for the test
        self.logged.setdefault(name, []).append(float(value.detach() if torch.is_tensor(value) else value))
        super().log(name, value, *args, **kwargs)

    def configure_optimizers(self):  # decoupled weight decay: a frozen or masked weight would move under it
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)


class MLP(Foreign):
    def __init__(self, shape: tuple[int, ...] = (6,)) -> None:
        super().__init__()
        width = int(torch.tensor(shape).prod())
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(width, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.classifier = nn.Linear(16, 6)

    def forward(self, batch):
        return {"logits": self.classifier(self.net(batch["x"]))}

    def feature_blocks(self) -> list[nn.Module]:  # what FeatureDistillation matches (`HasFeatureBlocks`)
        return [self.net[2], self.net[4]]


class LoRAMLP(AdapterMixin, MLP):
    def __init__(self) -> None:
        super().__init__()
        import peft

        self.net = peft.get_peft_model(self.net, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["1", "3"]))


class AdaLoRAMLP(AdapterMixin, MLP):
    """The MLP with an AdaLoRA body whose schedule spans one task (3 steps): ranks cut from 4 to 2 per matrix."""

    def __init__(self) -> None:
        super().__init__()
        import peft

        self.net = peft.get_peft_model(self.net, peft.AdaLoraConfig(
            init_r=4, target_r=2, tinit=0, tfinal=1, deltaT=1, total_step=3, target_modules=["1", "3"]))


class TinyBert(Foreign):
    label_key = "y"

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(16, 6)

    def forward(self, batch):
        states = self.encoder(input_ids=batch["ids"], attention_mask=batch["mask"]).last_hidden_state  # (B, T, H)
        return {"logits": self.classifier(states[:, 0])}


class LoRABert(AdapterMixin, TinyBert):
    def __init__(self) -> None:
        super().__init__()
        import peft

        self.encoder = peft.get_peft_model(self.encoder, peft.LoraConfig(r=2, lora_alpha=4,
                                                                          target_modules=["query", "value"]))


def make_module(kind: str, *, lora: bool = False) -> Foreign:
    torch.manual_seed(0)
    if kind == "mlp":
        return LoRAMLP() if lora else MLP()
    if kind == "image":
        return MLP(shape=(1, 4, 4))
    return LoRABert() if lora else TinyBert()


def undeclared(module: Foreign, *methods: str) -> Foreign:
    """``module`` as an instance of a subclass (of the same name) that does not declare ``methods``: a class
    attribute set to None is how `typing.Protocol` checks read a method as absent."""
    cls = type(module)
    module.__class__ = type(cls.__name__, (cls,), dict.fromkeys(methods))
    return module


def _stack(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def task_rows(kind: str, task: int, n: int = 24) -> list[dict[str, Tensor]]:
    """Task ``task``'s training rows: two classes, separable by the first feature (or token)."""
    g = torch.Generator().manual_seed(100 + task)
    label = torch.randint(2, (n,), generator=g)
    if kind in ("mlp", "image"):
        shape = (6,) if kind == "mlp" else (1, 4, 4)
        x = torch.randn(n, *shape, generator=g) + 2.0 * task
        x.view(n, -1)[:, 0] += 3.0 * label
        return [{"x": x[i], "labels": label[i] + 2 * task} for i in range(n)]
    ids = torch.randint(4, 40, (n, 8), generator=g)
    ids[:, 0] = 1 + task  # the first token names the task, the second the class
    ids[:, 1] = 10 + 2 * task + label
    mask = torch.ones(n, 8, dtype=torch.long)
    mask[: n // 2, 6:] = 0  # padding the model must not attend to (fixed length: the rows are stored as they are)
    return [{"ids": ids[i], "mask": mask[i], "y": label[i] + 2 * task} for i in range(n)]


def loader(kind: str, task: int) -> DataLoader:
    return DataLoader(task_rows(kind, task), batch_size=8, shuffle=False, collate_fn=_stack)


class Snapshots(Callback):
    """Every task's weights when its training starts (after the callbacks' `setup` and task start) and when it
    ends, before the techniques' task ends (this callback comes first in the list)."""

    def __init__(self, record: Callable[[], Any] | None) -> None:
        self.start: list[dict[str, Tensor]] = []
        self.trained: list[dict[str, Tensor]] = []
        self.record, self.records = record, []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start.append(weights(pl_module))
        if self.record is not None:
            self.records.append(self.record())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trained.append(weights(pl_module))


def weights(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@dataclass
class Run:
    module: Foreign
    callbacks: list[Any]
    start: list[dict[str, Tensor]] = field(default_factory=list)  # per task, at its training start
    trained: list[dict[str, Tensor]] = field(default_factory=list)  # per task, after its last step
    end: list[dict[str, Tensor]] = field(default_factory=list)  # per task, after its fit (and task end)
    logged: list[dict[str, list[float]]] = field(default_factory=list)  # per task
    records: list[Any] = field(default_factory=list)  # per task, what `record()` returned at its training start

    def terms(self, name: str) -> list[list[float]]:
        """The values logged as ``name`` in each task."""
        return [task.get(name, []) for task in self.logged]


def run_tasks(kind: str, callbacks: list[Any], tmp_path: Any, *, lora: bool = False, module: Foreign | None = None,
              tasks: int = TASKS, record: Callable[[], Any] | None = None) -> Run:
    """Fit ``module`` (default: a fresh one of ``kind``) on every task in turn, a fresh Trainer per task and the
    same callback instances, as a user's own project would."""
    module = module or make_module(kind, lora=lora)
    snaps, run = Snapshots(record), Run(module, callbacks)
    for task in range(tasks):
        before = {k: len(v) for k, v in module.logged.items()}
        trainer = pl.Trainer(max_epochs=1, callbacks=[snaps, *callbacks], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                             default_root_dir=tmp_path)
        trainer.fit(module, loader(kind, task))
        run.end.append(weights(module))
        run.logged.append({k: v[before.get(k, 0):] for k, v in module.logged.items()})
    run.start, run.trained, run.records = snaps.start, snaps.trained, snaps.records
    return run


def batch_of(kind: str, task: int) -> dict[str, Tensor]:
    return _stack(task_rows(kind, task))
