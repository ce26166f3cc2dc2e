"""The whole dataset resident on the device, the epoch iterator that shards it across ranks, and
the two loaders a run builds from it (:func:`train_loader`, :func:`eval_loader`).

The uint8 images are copied to the device once (47 MB for the training set) and every batch is an
index into that storage: no host work and no host synchronisation per batch.

Sharding contract (what DDP needs):

* Each epoch's order is ``randperm(N)`` drawn on the device from a generator seeded with
  ``(seed, epoch)``: every rank draws the same permutation without communicating.
* ``even=True`` (training): the permutation is cut to ``N - N % world_size`` samples and rank ``r``
  takes ``perm[r::world_size]``, so every rank holds exactly ``N // world_size`` samples and runs
  the same number of steps.  The ``N % world_size`` samples left out change every epoch.
  ``drop_last=True`` additionally drops each rank's last partial batch; with ``drop_last=False`` the
  last batch is smaller, equally so on every rank.
* ``even=False`` (evaluation): nothing is dropped; rank ``r`` takes the ``r``-th of ``world_size``
  contiguous chunks (sizes differ by at most one), so summing per-rank counts is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..distributed import DistInfo

SEED_STRIDE = 1_000_003  # (seed, epoch) -> one generator seed; a prime keeps nearby pairs apart


@dataclass
class ResidentData:
    """Images uint8 (N, 1, 28, 28) and labels int64 (N,), both on ``device``."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def load(cls, root: str | Path, split: str, device: torch.device | str = "cpu",
             limit: int | None = None) -> "ResidentData":
        """Read ``split`` ("train" or "test") from the IDX files under ``root`` onto ``device``.

        ``limit`` keeps the first ``limit`` samples (the prepared files are class-interleaved, so a
        prefix is class-balanced up to sampling noise); meant for CPU runs and tests.
        """
        from .idx import load_split

        images, labels = load_split(root, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        # One host->device copy; pinned memory is not worth it for a one-off 47 MB transfer.
        x = torch.from_numpy(images).unsqueeze(1).to(device)
        y = torch.from_numpy(labels).long().to(device)
        return cls(x, y)

    @classmethod
    def synthetic(cls, n: int, device: torch.device | str = "cpu", seed: int = 0,
                  num_classes: int = 10, size: int = 28) -> "ResidentData":
        """Random uint8 images and labels of the real shapes, for benchmarks that isolate compute."""
        g = torch.Generator(device=device).manual_seed(seed)
        x = torch.randint(0, 256, (n, 1, size, size), generator=g, device=device, dtype=torch.uint8)
        y = torch.randint(0, num_classes, (n,), generator=g, device=device)
        return cls(x, y)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def pixel_stats(self) -> tuple[float, float]:
        """Mean and std of pixel/255 over the whole set (the normalisation constants).

        Computed once at start-up (one host sync, outside the hot path), in float64 so the result
        does not depend on the device's reduction order.
        """
        x = self.images.double().div_(255.0)
        return float(x.mean()), float(x.std(unbiased=False))


class EpochLoader:
    """Iterates one rank's shard of a :class:`ResidentData` in batches.

    Yields ``(images, labels)``: uint8 (B, 1, 28, 28) and int64 (B,) on the data's device, for an
    augmentation stage (which converts, normalises and lays out the pixels).  Call
    :meth:`set_epoch` before iterating each epoch (as with ``DistributedSampler``).
    """

    def __init__(self, data: ResidentData, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True, even: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.data = data
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.drop_last, self.even = drop_last, even
        self.epoch = 0
        n = len(data)
        if even:
            self.shard_size = n // world_size
        else:
            self.shard_size = len(range(n)[self._chunk()])
        if self.shard_size == 0 or (drop_last and self.shard_size < batch_size):
            raise ValueError(f"{n} samples over {world_size} rank(s) leave {self.shard_size} per rank: "
                             f"not one full batch of {batch_size}")

    def _chunk(self) -> slice:
        n = len(self.data)
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch (int64, on the data's device)."""
        n = len(self.data)
        dev = self.data.device
        if self.shuffle:
            g = torch.Generator(device=dev).manual_seed(self.seed * SEED_STRIDE + self.epoch)
            order = torch.randperm(n, generator=g, device=dev)
        else:
            order = torch.arange(n, device=dev)
        if self.even:
            return order[: self.shard_size * self.world_size][self.rank::self.world_size]
        return order[self._chunk()]

    def __iter__(self):
        idx = self.indices()
        b = self.batch_size
        for step in range(len(self)):
            sel = idx[step * b:(step + 1) * b]
            images = self.data.images.index_select(0, sel)
            labels = self.data.labels.index_select(0, sel)
            yield images, labels


def train_loader(data: ResidentData, batch_size: int, info: DistInfo, seed: int) -> EpochLoader:
    """This rank's training batches of ``batch_size`` (per rank): shuffled by ``(seed, epoch)``,
    the same number of full batches on every rank."""
    return EpochLoader(data, batch_size, rank=info.rank, world_size=info.world_size, seed=seed,
                       shuffle=True, drop_last=True, even=True)


def eval_loader(data: ResidentData, batch_size: int, info: DistInfo) -> EpochLoader:
    """This rank's exact shard of ``data`` for evaluation: in order, nothing dropped."""
    return EpochLoader(data, batch_size, rank=info.rank, world_size=info.world_size,
                       shuffle=False, drop_last=False, even=False)
