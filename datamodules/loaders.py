"""The loaders of a :class:`~clight.datamodules.base.ContinualDataModule`: the current stage's training batches
(resumable mid-epoch, sharded across ranks) and one evaluation loader per task, probe or validation split."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from clight.datamodules.sampling import PaddedView, ResumableBatchSampler, batches_done
from clight.errors import ClightConfigError

Example = dict[str, Any]


class LoadersMixin:
    """Loaders over the datamodule's examples (it provides ``prepare_stream``, ``stage_train_examples``,
    ``test_examples``, ``probe_examples``, ``val_examples``, ``collate``, ``collate_eval`` and the sizes)."""

    def _dist(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


    def train_dataloader(self) -> DataLoader:
        self.prepare_stream()
        examples = self.stage_train_examples()
        rank, world = self._dist()
        trainer = self.trainer
        if self.drop_last and len(examples) < self.batch_size * world:
            raise ClightConfigError(
                f"`drop_last`: task {self.current_task.name!r} has {len(examples)} training examples, fewer than one "
                f"batch ({self.batch_size} x {world} ranks), so every batch would be dropped. Lower `batch_size` or "
                "set `drop_last: false`."
            )
        sampler = ResumableBatchSampler(
            len(examples), self.batch_size, shuffle=True, seed=self.seed, task_index=self.stage_index,
            rank=rank, world_size=world, epoch=trainer.current_epoch if trainer is not None else 0,
            drop_last=self.drop_last, skip_fn=(lambda: batches_done(trainer, len(sampler))) if trainer is not None else None,
        )
        return self._loader(examples, sampler)

    def eval_dataloaders(self) -> list[DataLoader]:
        """One loader per task of the stream (seen and unseen), then one per probe, sharded across ranks.

        Shards are padded to equal length with repeated examples marked invalid (batch key ``valid``), so every
        example counts exactly once in the rank-reduced metrics."""
        self.prepare_stream()
        return self._eval_loaders(self.test_examples + self.probe_examples)

    def validation_dataloaders(self) -> list[DataLoader]:
        """One loader per task over its validation split (``val_fraction``; none without one), sharded as
        :meth:`eval_dataloaders`."""
        self.prepare_stream()
        return self._eval_loaders(self.val_examples)

    def _eval_loaders(self, splits: list[list[Example]]) -> list[DataLoader]:
        rank, world = self._dist()
        loaders = []
        for i, examples in enumerate(splits):
            sampler = ResumableBatchSampler(
                len(examples), self.eval_batch_size, shuffle=False, rank=rank, world_size=world, mark_padding=True,
                task_index=i,
            )
            loaders.append(self._loader(PaddedView(examples), sampler, self._collate_eval))
        return loaders

    def _collate_eval(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        batch = self.collate_eval(examples)
        batch["valid"] = torch.tensor([not ex.get("_padding", False) for ex in examples])
        return batch

    def _loader(self, examples: Any, sampler: ResumableBatchSampler, collate: Any = None) -> DataLoader:
        # The loader gets its own generator: creating an iterator draws a base seed, and drawing it from the
        # global RNG would shift dropout's random stream when a resumed run re-creates the iterator mid-epoch.
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(examples, batch_sampler=sampler, collate_fn=collate or self.collate,
                          num_workers=self.num_workers, generator=generator, persistent_workers=False)

