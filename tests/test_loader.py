"""Resident data and the epoch iterator: sharding, determinism, output formats."""

from __future__ import annotations

import pytest
import torch

from fastfm.data.resident import EpochLoader, ResidentData


def _labelled(n: int) -> ResidentData:
    """Labels equal to the sample index, so a batch tells exactly which samples it holds."""
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1)
    return ResidentData(images.expand(n, 1, 28, 28).contiguous(), torch.arange(n))


def _epoch(data, world, batch, epoch, seed=0, **kw):
    """Per-rank list of sample ids seen in one epoch, and per-rank step counts."""
    seen, steps = [], []
    for rank in range(world):
        loader = EpochLoader(data, batch, rank=rank, world_size=world, seed=seed, **kw)
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader)
        steps.append(len(batches))
        seen.append(torch.cat([y for _, y in batches]) if batches else torch.empty(0, dtype=torch.long))
    return seen, steps


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_every_sample_once_per_epoch_across_ranks(world, drop_last):
    n, batch = 1001, 32
    data = _labelled(n)
    seen, steps = _epoch(data, world, batch, epoch=0, drop_last=drop_last)
    assert len(set(steps)) == 1, f"unequal step counts across ranks: {steps}"
    everything = torch.cat(seen)
    assert everything.unique().numel() == everything.numel(), "a sample was seen twice"
    per_rank = n // world
    if drop_last:
        # Documented remainder: n % world samples, plus each rank's last partial batch.
        assert everything.numel() == world * (per_rank // batch) * batch
    else:
        assert everything.numel() == world * per_rank
        assert n - everything.numel() == n % world
    # Shards are disjoint and equal-sized.
    assert all(s.numel() == seen[0].numel() for s in seen)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_sharding_covers_everything_exactly(world):
    n = 1001
    seen, _ = _epoch(_labelled(n), world, 64, epoch=0, shuffle=False, drop_last=False, even=False)
    everything = torch.cat(seen)
    assert torch.equal(everything.sort().values, torch.arange(n))
    sizes = [s.numel() for s in seen]
    assert max(sizes) - min(sizes) <= 1


def test_order_depends_on_seed_and_epoch_only():
    data = _labelled(500)
    a, _ = _epoch(data, 2, 50, epoch=3, seed=7)
    b, _ = _epoch(data, 2, 50, epoch=3, seed=7)
    c, _ = _epoch(data, 2, 50, epoch=4, seed=7)
    d, _ = _epoch(data, 2, 50, epoch=3, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0]), "same order in two epochs"
    assert not torch.equal(a[0], d[0]), "same order for two seeds"
    # A new epoch is a new permutation, not a rotation of the old one.
    assert not torch.equal(torch.cat(a).sort().values[:10], torch.cat(a)[:10])


def test_remainder_changes_between_epochs():
    data = _labelled(103)
    left_out = []
    for epoch in range(4):
        seen, _ = _epoch(data, 2, 1, epoch=epoch, drop_last=False)
        left_out.append(set(range(103)) - set(torch.cat(seen).tolist()))
    assert all(len(s) == 1 for s in left_out)
    assert len(set(map(frozenset, left_out))) > 1


def test_uint8_batches_index_the_resident_storage():
    data = ResidentData.synthetic(256, seed=1)
    loader = EpochLoader(data, 64, seed=3)
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (64, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (64,)
    idx = loader.indices()[:64]
    assert torch.equal(images, data.images[idx]) and torch.equal(labels, data.labels[idx])


def test_synthetic_shapes_and_determinism():
    a, b = ResidentData.synthetic(100, seed=5), ResidentData.synthetic(100, seed=5)
    assert a.images.dtype == torch.uint8 and a.images.shape == (100, 1, 28, 28)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert int(a.labels.min()) >= 0 and int(a.labels.max()) <= 9


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=8, rank=2, world_size=2), "rank 2"),
    (dict(batch_size=64, world_size=4), "not one full batch"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpochLoader(_labelled(100), **kwargs)


def test_real_data_loads_resident(data_root):
    train = ResidentData.load(data_root, "train")
    test = ResidentData.load(data_root, "test")
    assert len(train) == 60_000 and len(test) == 10_000
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    mean, std = train.pixel_stats()
    assert abs(mean - 0.2860) < 5e-4 and abs(std - 0.3530) < 5e-4
    sub = ResidentData.load(data_root, "train", limit=1000)
    assert len(sub) == 1000 and torch.equal(sub.images, train.images[:1000])
