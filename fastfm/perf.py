"""FLOPs, device peaks and the GTX 1060 reference: what turns images/sec into MFU and speed-ups."""

from __future__ import annotations

import torch

from .bench import time_fn

# Dense peak TFLOP/s by (device-name fragment, precision).  Tensor-core figures are dense (no
# sparsity).  Looked up by substring of torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS = [
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
]

# The original report's card.  Pascal GP106: 1280 CUDA cores x 1.708 GHz boost x 2 FLOP (FMA)
# = 4.375 TFLOP/s FP32; no tensor cores, and FP16 arithmetic runs at 1/64 of the FP32 rate on this
# chip, so FP32 is its best case.
GTX1060_FP32_TFLOPS = 4.375


def known_peak_tflops(device_name: str, precision: str) -> float | None:
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in device_name:
            return peaks.get(precision)
    return None


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Achieved TFLOP/s of a square matrix product: the ceiling used for devices not in the table."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, warmup=2, iters=5 if device.type == "cuda" else 2, repeats=3)
    return 2 * n ** 3 / (t.ms_median * 1e-3) / 1e12


def train_flops_per_image(model: torch.nn.Module, in_chans: int, size: int,
                          device: torch.device | str = "cpu", batch: int = 2) -> float:
    """FLOPs of one training step (forward + backward) per image, counted by torch's FlopCounterMode.

    Counted on a deep copy, so the model's BatchNorm statistics and gradients are left untouched;
    matrix products and convolutions only, which is what peak figures refer to.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).train()
    x = torch.randn(batch, in_chans, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        probe(x).float().sum().backward()
    return counter.get_total_flops() / batch


def gtx1060_ceiling_images_per_sec(flops_per_image: float) -> float:
    """Computed (not measured) upper bound: the GTX 1060 at 100 % of its FP32 peak."""
    return GTX1060_FP32_TFLOPS * 1e12 / flops_per_image
