"""Batch samplers. Every order is a pure function of (seed, epoch), so a resumed run replays it exactly.

* ``DefaultBatchSampler``: shuffled (or sequential) fixed-size batches.
* ``NoDuplicatesBatchSampler``: no text appears twice in a batch (in-batch negatives stay negatives).
* ``RoundRobinBatchSampler``: multi-dataset, one batch per dataset in turn until the smallest runs out.
* ``ProportionalBatchSampler``: multi-dataset, every batch of every dataset, datasets drawn in
  proportion to their number of batches.

Multi-dataset samplers yield indices into a ``ConcatDataset`` of the datasets; each batch comes from one dataset.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from .data import DATASET_NAME_COLUMN, LABEL_COLUMNS


class _Seeded(Sampler):
    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) at the start of every epoch."""
        self.epoch = int(epoch)

    def _generator(self, salt: int = 0) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed + 1_000_003 * self.epoch + salt)
        return g


class DefaultBatchSampler(_Seeded):
    """Fixed-size batches over ``range(n)``, shuffled per epoch when ``shuffle``."""

    def __init__(self, n: int, batch_size: int, drop_last: bool = False, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(seed)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.drop_last, self.shuffle = int(n), int(batch_size), drop_last, shuffle

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self._generator()).tolist() if self.shuffle else list(range(self.n))
        for s in range(0, self.n, self.batch_size):
            batch = order[s : s + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


class NoDuplicatesBatchSampler(DefaultBatchSampler):
    """Shuffled batches in which no text value (of any input column) occurs twice.

    Rows that would repeat a text wait for a later batch; the last batches may be smaller.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool = False,
        seed: int = 0,
        label_columns: Sequence[str] = LABEL_COLUMNS,
    ) -> None:
        super().__init__(len(dataset), batch_size, drop_last, True, seed)
        cols = [c for c in dataset.column_names if c not in label_columns and c != DATASET_NAME_COLUMN]
        columns = [dataset[c] for c in cols]
        self.texts: list[frozenset] = [frozenset(col[i] for col in columns) for i in range(len(dataset))]

    def __iter__(self) -> Iterator[list[int]]:
        remaining = dict.fromkeys(torch.randperm(self.n, generator=self._generator()).tolist())
        while remaining:
            batch: list[int] = []
            seen: set = set()
            for i in remaining:
                if seen.isdisjoint(self.texts[i]):
                    batch.append(i)
                    seen |= self.texts[i]
                    if len(batch) == self.batch_size:
                        break
            for i in batch:
                del remaining[i]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch


class MultiDatasetBatchSampler(_Seeded):
    """Base: combines one batch sampler per dataset; indices are shifted into the ConcatDataset."""

    def __init__(self, batch_samplers: Sequence[DefaultBatchSampler], sizes: Sequence[int], seed: int = 0) -> None:
        super().__init__(seed)
        if len(batch_samplers) != len(sizes) or not batch_samplers:
            raise ValueError("one batch sampler per dataset is needed")
        self.batch_samplers = list(batch_samplers)
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for s in self.batch_samplers:
            s.set_epoch(epoch)

    def _schedule(self) -> list[int]:  # dataset index of each batch, in order
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        iters = [iter(s) for s in self.batch_samplers]
        for d in self._schedule():
            batch = next(iters[d], None)
            if batch is None:
                continue
            yield [self.offsets[d] + i for i in batch]

    def __len__(self) -> int:
        return len(self._schedule())


class RoundRobinBatchSampler(MultiDatasetBatchSampler):
    """One batch from each dataset in turn, stopping when the dataset with fewest batches runs out."""

    def _schedule(self) -> list[int]:
        rounds = min(len(s) for s in self.batch_samplers)
        return [d for _ in range(rounds) for d in range(len(self.batch_samplers))]


class ProportionalBatchSampler(MultiDatasetBatchSampler):
    """Every batch of every dataset, in a random order: bigger datasets come up proportionally more often."""

    def _schedule(self) -> list[int]:
        sched = torch.tensor([d for d, s in enumerate(self.batch_samplers) for _ in range(len(s))], dtype=torch.long)
        perm = torch.randperm(len(sched), generator=self._generator(salt=7))
        return sched[perm].tolist()
