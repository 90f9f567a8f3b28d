"""A resumable, rank-aware batch sampler (deterministic order from (seed, task, epoch), resumes mid-epoch), and the
padded view of a task's examples that evaluation shards over ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields index batches of one rank's shard.

    The order of an epoch depends only on ``(seed, task_index, epoch)``; every rank draws the same permutation
    and takes every ``world_size``-th index. Shards are padded to equal length by wrapping around (Lightning
    needs at least one batch on every rank); with ``mark_padding`` the padded positions are yielded as
    ``-(index + 1)`` so evaluation can leave the duplicates out of its counts. ``skip_fn`` is asked, when an
    epoch starts iterating, how many batches of it are already done (the trainer's restored step count after
    a mid-task resume), and those are skipped, so a resumed run sees exactly the batches an uninterrupted run
    would.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        task_index: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        mark_padding: bool = False,
        epoch: int = 0,
        skip_fn: Callable[[], int] | None = None,
    ) -> None:
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.task_index = task_index
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.mark_padding = mark_padding
        self.epoch = epoch
        self.skip_fn = skip_fn
        # Lightning calls `set_epoch` on `loader.sampler` and `loader.batch_sampler.sampler`, not on the batch
        # sampler itself; this attribute routes that call here.
        self.sampler = _EpochSetter(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.task_index) * 10_007 + self.epoch)
            order = torch.randperm(self.num_examples, generator=g).tolist()
        else:
            order = list(range(self.num_examples))
        if self.world_size > 1 and order:
            total = -(-len(order) // self.world_size) * self.world_size
            extra = [order[i % len(order)] for i in range(total - len(order))]
            order = order + ([-(i + 1) for i in extra] if self.mark_padding else extra)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = -(-self.num_examples // self.world_size)  # shards are padded to equal length
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        skip = self.skip_fn() if self.skip_fn is not None else 0
        self.skip_fn = None  # only the first epoch after a resume skips
        shard = self._shard()
        for b, start in enumerate(range(0, len(shard), self.batch_size)):
            batch = shard[start : start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            if b >= skip:
                yield batch


class _EpochSetter:
    """Forwards ``set_epoch`` to the batch sampler that owns it."""

    def __init__(self, owner: ResumableBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


class PaddedView:
    """Indexable view of a task's examples where index ``-(i + 1)`` is example ``i`` marked as padding."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            return {**self.examples[-index - 1], "_padding": True}
        return self.examples[index]


def fixed_sample(examples: list[dict[str, Any]], k: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``k`` of ``examples`` (all when ``k`` is None), a seeded sample kept in order: the same every run."""
    if k is None or len(examples) <= k:
        return examples
    g = torch.Generator().manual_seed(seed + 7919)
    keep = sorted(torch.randperm(len(examples), generator=g)[:k].tolist())
    return [examples[i] for i in keep]


def batches_done(trainer: Any, batches_per_epoch: int) -> int:
    """Batches of the trainer's current epoch already trained (non-zero only right after a mid-epoch resume)."""
    accumulate = trainer.accumulate_grad_batches
    steps_per_epoch = -(-batches_per_epoch // accumulate)
    done_steps = trainer.global_step - trainer.current_epoch * steps_per_epoch
    return max(0, min(batches_per_epoch, done_steps * accumulate))
