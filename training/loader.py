"""Endless, resumable batches for the training loop (training/engine.py).

A step-based loop (`optim.iterations`, not epochs) needs a loader that never ends and that a resumed run can
restart at the exact batch it stopped on: a checkpoint stores each loader's `position` = (epoch, batch in that
epoch), and a loader built with that position yields the same batches, with the same augmentation draws, as the
uninterrupted run would have.

Batches are lists of dataset indices (per-rank share of the global batch); items are what the dataset returns
(a dict of batched tensors from the default collate).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler

from training.datasets.topdown import TopDownDataset
from training.distributed import DistContext


class InfiniteLoader:
    """Endless shuffled batches; resumable exactly at (epoch, batch) so a resumed run sees the same data.

    Each epoch's order comes from a DistributedSampler seeded by (seed, epoch): with several processes, rank r
    takes every world-th sample, so its batch k is its share of global batch k and the union over ranks is exactly
    the single-process batch (same order, same augmentation draws). Sets smaller than a batch are drawn with
    replacement. The dataset's epoch (its augmentation draw) advances with each pass. `dist` defaults to a single
    process.
    """

    def __init__(
        self,
        dataset: TopDownDataset,
        batch_size: int,
        seed: int,
        num_workers: int,
        position: tuple[int, int] = (0, 0),
        dist: DistContext | None = None,
    ):
        self.dataset = dataset
        self.batch_size = batch_size  # global: every rank gets batch_size / world_size of it
        self.seed = seed
        self.num_workers = num_workers
        self.dist = dist if dist is not None else DistContext()
        self.epoch, self.batch = position

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.batch

    def _batches(self) -> list[list[int]]:
        n, d = len(self.dataset), self.dist
        local = d.shard(self.batch_size)
        if n < self.batch_size:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            return [torch.randint(n, (self.batch_size,), generator=g)[d.rank :: d.world_size].tolist()]
        sampler: DistributedSampler[int] = DistributedSampler(
            self.dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=self.seed * 100_003, drop_last=True
        )
        sampler.set_epoch(self.epoch)
        order = list(sampler)
        return [order[i : i + local] for i in range(0, len(order) - local + 1, local)]

    def __iter__(self) -> Iterator[dict]:
        while True:
            self.dataset.set_epoch(self.epoch)
            batches = self._batches()[self.batch :]
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers)
            for item in loader:
                self.batch += 1
                yield item
            self.epoch, self.batch = self.epoch + 1, 0
