"""Validation splits (``data.val_fraction``): a seeded share of each task's training examples, held out of training
and evaluated after every task beside the test sets, so that tuning (``clight tune``) never reads test data."""

from __future__ import annotations

from typing import Any

import torch

from clight.errors import ClightConfigError

VAL_SEED_OFFSET = 104_729  # keeps the split's permutation apart from the batch order's (same base seed)


def split_validation(examples: list[dict[str, Any]], fraction: float, *, seed: int, task_index: int, task: str
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, validation)``: ``round(fraction * n)`` examples (at least 1) drawn by a permutation seeded with the
    stream's seed and the task's index, both kept in their original order. The same every run and on every rank."""
    if not fraction:
        return examples, []
    n = len(examples)
    k = max(1, round(fraction * n))
    if k >= n:
        raise ClightConfigError(
            f"task {task!r}: `val_fraction` {fraction} of its {n} training examples leaves none to train on; lower "
            "`val_fraction` or give the task more examples.")
    g = torch.Generator().manual_seed(seed * 1_000_003 + task_index + VAL_SEED_OFFSET)
    held = set(torch.randperm(n, generator=g)[:k].tolist())
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])
