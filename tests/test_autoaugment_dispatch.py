"""The two dispatches of :class:`fastfm.augment.autoaugment.BatchAutoAugment` agree bit for bit.

``masked`` (every stage on the whole batch, no host syncs; CUDA) and ``grouped`` (each op only on
the samples that drew it; CPU) must consume the generator identically and return identical tensors,
for every policy.
"""

from __future__ import annotations

import pytest
import torch

from fastfm.augment.autoaugment import BatchAutoAugment
from fastfm.augment.autoaugment_ops import NUM_BINS, OP, OPS, POLICIES, SIGNED


@pytest.fixture(scope="module", autouse=True)
def _one_intra_op_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images(real_images):
    """Real images at 32x32 (what AutoAugment sees in the pipeline)."""
    x = real_images[0][:256].float()
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def masked_slot(aa, x, op, bins, negative):
    """:meth:`BatchAutoAugment.masked_slot` on uint8 (B, 1, H, W) images, every op present."""
    b, _, h, w = x.shape
    return aa.masked_slot(x.reshape(b, h * w).long(), op, bins, negative, h, w).to(torch.uint8).view_as(x)


def _run(policy: str, dispatch: str, images: torch.Tensor, seed: int):
    aa = BatchAutoAugment(policy, "cpu", dispatch=dispatch)
    g = torch.Generator().manual_seed(seed)
    out = aa(images, g)
    return out, g.get_state()


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_grouped_equals_masked(images, policy):
    before = images.clone()
    for seed in (0, 1, 2, 12345):
        masked, state_m = _run(policy, "masked", images, seed)
        grouped, state_g = _run(policy, "grouped", images, seed)
        assert torch.equal(state_m, state_g), "strategies consumed the generator differently"
        assert grouped.dtype == torch.uint8 and grouped.shape == images.shape
        assert torch.equal(grouped, masked), f"{policy} seed {seed}: grouped != masked"
        assert not torch.equal(grouped, images)
    assert torch.equal(images, before), "input modified in place"


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_grouped_equals_masked_every_group_forced(images, policy):
    """Every op, at random bins and signs, mixed with others, through one slot of both dispatches."""
    x = images[:64]
    aa_m = BatchAutoAugment(policy, "cpu", dispatch="masked")
    aa_g = BatchAutoAugment(policy, "cpu", dispatch="grouped")
    g = torch.Generator().manual_seed(7)
    for name in OPS:
        op = torch.full((64,), OP[name])
        op[::3] = 0                                              # mix in identity samples
        op[1::5] = OP["Equalize"]
        bins = torch.randint(0, NUM_BINS, (64,), generator=g)
        neg = torch.randint(0, 2, (64,), generator=g) * aa_m.signed[op].long()
        m = masked_slot(aa_m, x, op, bins, neg)
        gr = aa_g.grouped_slot(x, op, bins, neg)
        assert torch.equal(m, gr), name


def test_auto_dispatch_and_validation(images):
    x = images[:32]
    outs = [BatchAutoAugment("cifar10", "cpu", dispatch=d)(x, torch.Generator().manual_seed(3))
            for d in ("auto", "grouped")]
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError):
        BatchAutoAugment("cifar10", "cpu", dispatch="nope")


def test_grouped_all_identity_returns_input_unchanged(images):
    x = images[:16]
    aa = BatchAutoAugment("cifar10", "cpu", dispatch="grouped")
    z = torch.zeros(16, dtype=torch.long)
    assert torch.equal(aa.grouped_slot(x, z, z, z), x)


def _edge_images(h: int, w: int) -> torch.Tensor:
    """1-channel images that hit the special cases of the statistics-based ops: constant (black,
    white, grey), two values with few pixels below the maximum (Equalize's step 0), one odd pixel,
    a full ramp, and noise."""
    g = torch.Generator().manual_seed(0)
    n = h * w
    imgs = [torch.zeros(h, w), torch.full((h, w), 255.0), torch.full((h, w), 77.0)]
    few = torch.full((n,), 200.0)
    few[: min(5, n - 1)] = 10
    imgs.append(few.view(h, w))
    for k in (254, 255):                     # either side of Equalize's step 0 (k // 255 == 0)
        if k < n:
            edge = torch.full((n,), 180.0)
            edge[:k] = torch.arange(k) % 7 * 20
            imgs.append(edge.view(h, w))
    odd = torch.full((n,), 3.0)
    odd[n // 2] = 250
    imgs.append(odd.view(h, w))
    imgs.append((torch.arange(n) % 256).float().view(h, w))
    imgs.append(torch.randint(0, 256, (h, w), generator=g).float())
    imgs.append(torch.randint(100, 140, (h, w), generator=g).float())
    return torch.stack(imgs).unsqueeze(1).to(torch.uint8)


@pytest.mark.parametrize("size", [(32, 32), (24, 32), (5, 3), (2, 2)])
@pytest.mark.slow
def test_masked_path_edge_cases(size):
    """The masked dispatch (per-size tables, one pixel gather per stage) against the grouped one
    (the per-op kernels) on edge-case images, every (op, bin, sign), odd sizes, and a batch of one."""
    x = _edge_images(*size)
    n = len(x)
    aa_m = BatchAutoAugment("cifar10", "cpu", dispatch="masked")
    aa_g = BatchAutoAugment("cifar10", "cpu", dispatch="grouped")
    for name in OPS:
        for b in range(NUM_BINS):
            for neg in ((0, 1) if name in SIGNED else (0,)):
                op = torch.full((n,), OP[name])
                bins, negs = torch.full((n,), b), torch.full((n,), neg)
                m = masked_slot(aa_m, x, op, bins, negs)
                assert torch.equal(m, aa_g.grouped_slot(x, op, bins, negs)), (name, b, neg)
                assert torch.equal(masked_slot(aa_m, x[:1], op[:1], bins[:1], negs[:1]), m[:1]), name
    op, bins, neg = aa_m.draw(n, torch.Generator().manual_seed(4))
    assert torch.equal(aa_m.apply(x, (op, bins, neg)), aa_g.apply(x, (op, bins, neg)))
