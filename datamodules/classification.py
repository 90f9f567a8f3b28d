"""Text-classification task streams: class-, task- and domain-incremental."""

from __future__ import annotations

from typing import Any, Literal

import torch

from clight.datamodules.base import ContinualDataModule, Example
from clight.datamodules.io import label_column, text_column
from clight.errors import ClightConfigError
from clight.task import Task

Scenario = Literal["class_incremental", "task_incremental", "domain_incremental"]


class TextClassificationStream(ContinualDataModule):
    """A stream of text-classification tasks.

    All classes of the stream share one output head (class ids are assigned in stream order; a label that
    appears in several tasks, as in domain-incremental streams, keeps one id). Evaluation reports both
    class-incremental accuracy (argmax over every class) and task-incremental accuracy (argmax over the task's
    own classes); ``scenario`` picks the headline metric and, for ``task_incremental``, restricts the training
    softmax to the current task's classes.

    Args:
        text_column: column holding the text.
        label_column: column holding the label (any string or integer).
        scenario: ``class_incremental``, ``task_incremental`` or ``domain_incremental``.
        **kwargs: see :class:`~clight.datamodules.ContinualDataModule`.

    Example (YAML)::

        data:
          class_path: clight.datamodules.TextClassificationStream
          init_args:
            train_file: clight/data/wordnet/train.jsonl
            test_file: clight/data/wordnet/test.jsonl
            scenario: class_incremental
            batch_size: 32
            max_length: 64
    """

    def __init__(
        self,
        *,
        text_column: str = "text",
        label_column: str = "label",
        scenario: Scenario = "class_incremental",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.text_column = text_column
        self.label_column = label_column
        self.scenario = scenario
        self.classes: list[str] = []
        self.task_classes: list[list[int]] = []

    @property
    def primary_metric(self) -> str:
        return "task_il_acc" if self.scenario == "task_incremental" else "class_il_acc"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def resolve_labels(self, tasks: list[Task], rows: list[list[dict[str, Any]]]) -> list[Task]:
        resolved = []
        for task, task_rows in zip(tasks, rows):
            path = self._path(task, "train")
            found = label_column(task_rows, self.label_column, path=path, argument="data.label_column")
            labels = tuple(str(x) for x in task.labels) or tuple(dict.fromkeys(found))
            missing = [label for label in labels if label not in set(found)]
            if missing:
                raise ClightConfigError(
                    f"`tasks[{task.name}].labels`: {missing} {'has' if len(missing) == 1 else 'have'} no training rows "
                    f"in {path!r} (labels found there: {sorted(set(found))}), so the model could never learn "
                    f"{'it' if len(missing) == 1 else 'them'}. Remove {'it' if len(missing) == 1 else 'them'} from "
                    "`labels`, or add rows."
                )
            if self.scenario == "task_incremental" and len(labels) < 2:
                raise ClightConfigError(
                    f"`scenario: task_incremental`: task {task.name!r} has one class ({labels[0]!r}), so its task-IL "
                    "accuracy would be 1.0 whatever the model learns. Give every task at least two classes, or use "
                    "`scenario: class_incremental`."
                )
            resolved.append(Task(name=task.name, train=task.train, test=task.test, labels=labels,
                                 max_epochs=task.max_epochs, max_steps=task.max_steps))
        if self.scenario == "domain_incremental":
            first = set(resolved[0].labels)
            for t in resolved[1:]:
                if set(t.labels) != first:
                    raise ClightConfigError(
                        f"`scenario: domain_incremental` needs the same label set in every task, but task "
                        f"{t.name!r} has {sorted(t.labels)} and task {resolved[0].name!r} has {sorted(first)}. "
                        "Use `class_incremental` or `task_incremental` for streams that add classes."
                    )
        self.classes = list(dict.fromkeys(label for t in resolved for label in t.labels))
        index = {c: i for i, c in enumerate(self.classes)}
        self.task_classes = [[index[label] for label in t.labels] for t in resolved]
        return resolved

    def tokenizer_texts(self, rows: list[dict[str, Any]], path: str) -> list[str]:
        return text_column(rows, self.text_column, path=path, argument="data.text_column")

    def encode(self, rows: list[dict[str, Any]], task_index: int, *, path: str, split: str) -> list[Example]:
        task = self.tasks[task_index]
        texts = [self.clip(t) for t in text_column(rows, self.text_column, path=path, argument="data.text_column")]
        labels = label_column(rows, self.label_column, path=path, argument="data.label_column")
        allowed = set(task.labels)
        for i, label in enumerate(labels):
            if label not in allowed:
                raise ClightConfigError(
                    f"{path!r} row {i + 1} ({split}): label {label!r} is not in the label set of task "
                    f"{task.name!r} ({sorted(allowed)}). Add it to the task's `labels` or fix the row."
                )
        index = {c: i for i, c in enumerate(self.classes)}
        if not texts:
            return []
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return [{"input_ids": x, "label": index[y], "task": task_index} for x, y in zip(ids, labels)]

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id or 0
        width = max(len(ex["input_ids"]) for ex in examples)
        input_ids = torch.full((len(examples), width), pad, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            input_ids[row, :n] = torch.tensor(ex["input_ids"])
            attention[row, :n] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": torch.tensor([ex["label"] for ex in examples]),
            "task_index": torch.tensor([ex["task"] for ex in examples]),
        }
        if self.scenario == "task_incremental":
            mask = torch.zeros((len(examples), self.num_classes), dtype=torch.bool)  # (B, C)
            for row, ex in enumerate(examples):
                mask[row, self.task_classes[ex["task"]]] = True
            batch["class_mask"] = mask
        return batch
