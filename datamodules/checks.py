"""The checks a stream's arguments pass before anything is read: each refusal names the argument and the way out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clight.errors import ClightConfigError
from clight.task import Task


def check_arguments(*, train_file: str | None, test_file: str | None, tasks: list[Any] | None, batch_size: int,
                    max_length: int, eval_batch_size: int | None, eval_max_examples: int | None,
                    num_workers: int, dataset: Any = None, val_fraction: float = 0.0) -> None:
    """Refuse, in one line, sizes below 1, a validation share outside [0, 1), half-given files, a stream with no
    data or with two sources."""
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if value < 1:
            raise ClightConfigError(f"`{name}` must be >= 1, got {value}.")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ClightConfigError(f"`eval_batch_size` must be >= 1, got {eval_batch_size}.")
    if eval_max_examples is not None and eval_max_examples < 1:
        raise ClightConfigError(f"`eval_max_examples` must be >= 1 or empty, got {eval_max_examples}.")
    if num_workers < 0:
        raise ClightConfigError(f"`num_workers` must be >= 0 (0: load in the main process), got {num_workers}.")
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
        raise ClightConfigError(
            f"`val_fraction` must be a number in [0, 1) (the share of each task's training examples held out for "
            f"validation; 0: none), got {val_fraction!r}.")
    sources = [name for name, given in (
        ("`train_file`/`test_file`", train_file is not None or test_file is not None),
        ("per-task `train`/`test` files in `tasks`", any(_files_of(t) for t in tasks or [])),
        ("`dataset`", dataset is not None)) if given]
    if len(sources) > 1:
        raise ClightConfigError(
            f"the stream's data is given twice: {' and '.join(sources)}. Expected exactly one source: "
            "`train_file`/`test_file`, per-task files in `tasks`, or `dataset`; keep one, set the others to null.")
    if (train_file is None) != (test_file is None):
        raise ClightConfigError("`train_file` and `test_file` go together: give both or neither.")
    if train_file is None and dataset is None and not tasks:
        raise ClightConfigError(
            "no data: give `train_file` and `test_file` (with a task column), a `tasks` list whose "
            "entries name their own `train` and `test` files, or a `dataset` (Hugging Face `datasets`)."
        )


def _files_of(task: Any) -> bool:
    """Whether a ``tasks`` entry (a :class:`Task` or a dict) names its own files."""
    get = task.get if isinstance(task, dict) else lambda key: getattr(task, key, None)
    return bool(get("train") or get("test"))


def task_specs(tasks: list[Any] | None) -> list[Task]:
    """The ``tasks:`` list as :class:`~clight.task.Task` entries, each budget >= 1 and every name unique."""
    specs = [t if isinstance(t, Task) else _task(t) for t in (tasks or [])]
    for t in specs:
        for key in ("max_steps", "max_epochs"):
            value = getattr(t, key)
            if value is not None and (value == 0 or value < -1):
                raise ClightConfigError(
                    f"`tasks[{t.name}].{key}` must be >= 1 (or -1: no limit), got {value}: a task with an empty "
                    "budget would not train. Give it a budget, or leave it out for the trainer's."
                )
    names = [t.name for t in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ClightConfigError(f"`tasks`: duplicate task names {dupes}; every task needs a unique name.")
    return specs


def check_examples(tasks: list[Task], train: list[list[Any]], test: list[list[Any]],
                   path: Callable[[Task, str], str]) -> None:
    """Refuse a task with no training or no test examples, naming its file."""
    for t, train_examples, test_examples in zip(tasks, train, test):
        if not train_examples or not test_examples:
            split, key = ("training", "train") if not train_examples else ("test", "test")
            raise ClightConfigError(
                f"task {t.name!r}: no {split} examples (file {path(t, key)!r}); every task needs both, so that it can "
                "be trained and evaluated."
            )


def _task(spec: Any) -> Task:
    try:
        return Task(**spec)
    except TypeError as err:
        raise ClightConfigError(f"`tasks`: {spec!r} is not a task ({err}); a task has `name` and optionally `train`, "
                                "`test`, `labels`, `max_epochs`, `max_steps`.") from None
