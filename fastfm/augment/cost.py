"""What each augmentation op costs, per backend: the engine behind ``benchmarks/aug_cost.py``.

Ops are timed as a cumulative ladder in the documented order (config.py): ``base`` (normalise and
output format only), then ``+resize``, ``+crop``, ``+flip``, ``+autoaugment``, ``+erasing``,
``+cutmix``/``+mixup``.  An op's cost is the difference between its rung and the one below, so
the op costs add up to the whole stack exactly; a small negative difference means the op costs
less than the timing noise.  The ``seed`` row is the original per-sample PIL pipeline
(:mod:`fastfm.baseline`), timed on the CPU in one process on the same machine.
"""

from __future__ import annotations

import dataclasses

import torch

from ..bench import Timing, time_fn
from . import create_augmenter
from .config import AugConfig


def op_ladder(full: AugConfig) -> list[tuple[str, AugConfig]]:
    """Cumulative configurations from nothing to ``full``, one op switched on per rung."""
    rungs = [("base", AugConfig.off(resize=0, crop=0))]
    steps = [
        ("resize", dict(resize=full.resize)),
        ("crop", dict(crop=full.crop)),
        ("flip", dict(flip_p=full.flip_p)),
        ("autoaugment", dict(autoaugment=full.autoaugment)),
        ("erasing", dict(erasing_p=full.erasing_p)),
        ("cutmix", dict(cutmix_p=full.cutmix_p)),
        ("mixup", dict(mixup_p=full.mixup_p)),
    ]
    cfg = rungs[0][1]
    for name, change in steps:
        new = dataclasses.replace(cfg, **change)
        if new != cfg:                      # an op that is off in ``full`` gets no rung
            cfg = new
            rungs.append((name, cfg))
    keep = dict(backend=full.backend, channels=full.channels, channels_last=full.channels_last,
                erasing_scale=full.erasing_scale, erasing_ratio=full.erasing_ratio,
                erasing_value=full.erasing_value, cutmix_alpha=full.cutmix_alpha,
                mixup_alpha=full.mixup_alpha)
    return [(name, dataclasses.replace(c, **keep)) for name, c in rungs]


def time_augmenter(cfg: AugConfig, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                   warmup: int = 3, iters: int = 10, repeats: int = 5) -> Timing:
    aug = create_augmenter(cfg, images.device, seed=seed)
    return time_fn(lambda: aug(images, labels), images.device, warmup=warmup, iters=iters,
                   repeats=repeats)


def backend_rows(full: AugConfig, images: torch.Tensor, labels: torch.Tensor, **timing) -> list[dict]:
    """One row per rung of :func:`op_ladder` plus a ``stack`` row, for ``full.backend``."""
    b = images.shape[0]
    rows, prev = [], None
    for name, cfg in op_ladder(full):
        t = time_augmenter(cfg, images, labels, **timing)
        rows.append(dict(backend=full.backend, op=name if prev is None else "+" + name,
                         rung_ms=t.ms_median, op_ms=t.ms_median - (prev or 0.0),
                         config=dataclasses.asdict(cfg)))
        prev = t.ms_median
    stack = rows[-1]["rung_ms"]
    for r in rows:
        r["share"] = r["op_ms"] / stack
    rows.append(dict(backend=full.backend, op="stack", rung_ms=stack, op_ms=stack, share=1.0,
                     images_per_sec=b * 1000.0 / stack, config=dataclasses.asdict(full)))
    return rows


def seed_row(images_u8, labels, batch_size: int = 512, repeats: int = 3) -> dict:
    """The original pipeline on one batch: per-sample torchvision transforms on PIL images, collate,
    CutMix; one process on the CPU, as the report ran it (its DataLoader workers are measured by
    ``benchmarks/throughput.py --mode baseline``)."""
    from ..baseline import SeedDataset, cutmix_batch

    ds = SeedDataset(images_u8, labels)
    torch.manual_seed(0)

    def run():
        items = [ds[i % len(ds)] for i in range(batch_size)]
        x = torch.stack([a for a, _ in items])
        cutmix_batch(x, torch.tensor([c for _, c in items]))

    t = time_fn(run, torch.device("cpu"), warmup=1, iters=1, repeats=repeats)
    return dict(backend="seed", op="stack", rung_ms=t.ms_median, op_ms=t.ms_median, share=1.0,
                images_per_sec=t.per_second(batch_size),
                config="torchvision transforms on PIL images, per sample, 1 process, CPU")


def benchmark_batch(device: torch.device, batch_size: int, data_root) -> tuple:
    """A batch of real images when the dataset is prepared, random ones otherwise (same cost)."""
    from ..data.idx import DataError
    from ..data.resident import ResidentData

    try:
        data = ResidentData.load(data_root, "train", device=device, limit=batch_size)
        source = f"Fashion-MNIST ({data_root})"
    except DataError as exc:    # missing or unreadable data: the op costs do not depend on content
        data = ResidentData.synthetic(batch_size, device=device)
        source = f"synthetic ({exc})"
    if len(data) < batch_size:
        raise ValueError(f"--batch-size {batch_size} exceeds the {len(data)} images available")
    return data.images, data.labels, source


def aug_cost_report(*, device="auto", backends=("native",), batch_size=512, data_root="data",
                    repeats=5, iters=None, include_seed=True, full: AugConfig | None = None) -> dict:
    """Time every backend's op ladder and the seed pipeline; return rows, environment and markdown."""
    from ..bench import environment, markdown_table
    from ..distributed import resolve_device
    from . import BackendUnavailable

    dev = resolve_device(device)
    if batch_size < 2:
        raise ValueError("--batch-size must be at least 2 (CutMix pairs samples)")
    iters = iters or 10
    full = full or AugConfig()
    images, labels, source = benchmark_batch(dev, batch_size, data_root)
    rows, missing = [], {}
    for name in backends:
        try:
            rows += backend_rows(dataclasses.replace(full, backend=name), images, labels,
                                 iters=iters, repeats=repeats)
        except BackendUnavailable as exc:
            missing[name] = str(exc)
    if include_seed:
        rows.append(seed_row(images.squeeze(1).cpu().numpy(), labels.cpu().numpy(),
                                          batch_size=batch_size, repeats=min(repeats, 3)))
    seed_ips = next((r["images_per_sec"] for r in rows if r["backend"] == "seed"), None)
    for r in rows:
        if seed_ips and r.get("images_per_sec"):
            r["vs_seed"] = r["images_per_sec"] / seed_ips
    env = environment(dev)
    md = [f"Augmentation cost on {env['device']}, batch {batch_size}, input: {source}; "
          f"median of {repeats} runs of {iters} batches after warm-up.", "",
          markdown_table(rows, [("backend", "backend", ""), ("op", "op", ""),
                                ("op_ms", "ms/batch", ".3f"), ("share", "share of stack", ".1%"),
                                ("images_per_sec", "images/s", ",.0f"), ("vs_seed", "× seed", ".1f")])]
    for name, why in missing.items():
        md.append(f"\n{name}: missing — {why}")
    return dict(environment=env, batch_size=batch_size, input=source, iters=iters, repeats=repeats,
                rows=rows, missing=missing, markdown="\n".join(md))
