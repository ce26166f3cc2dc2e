"""FLOPs, device peaks and the GTX 1060 reference: what turns images/sec into TFLOP/s, a fraction of
the device's peak and a speed-up over the original report's card."""

from __future__ import annotations

import copy

import torch

from ..engine.amp import DTYPES
from ..runinfo import device_name
from .timing import time_fn

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
    """The table's peak for ``precision`` on the first device whose name fragment matches, or None."""
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


class Peaks:
    """``peaks(precision) -> (TFLOP/s, source)``: the device's peak, from :data:`PEAK_TFLOPS` by
    device name on CUDA, else a measured matrix-product ceiling (labelled so); each measured once."""

    def __init__(self, device: torch.device):
        self.device = device
        self.name = device_name(device)
        self.found: dict[str, tuple[float, str]] = {}

    def __call__(self, precision: str) -> tuple[float, str]:
        if precision not in self.found:
            known = known_peak_tflops(self.name, precision) if self.device.type == "cuda" else None
            if known is not None:
                self.found[precision] = (known, f"{self.name} dense {precision} peak (spec table)")
            else:
                measured = measured_matmul_tflops(self.device, DTYPES[precision])
                self.found[precision] = (measured, f"measured {precision} matrix-product ceiling "
                                                   f"on this device (not a spec peak)")
        return self.found[precision]


def train_flops_per_image(model: torch.nn.Module, in_chans: int, size: int,
                          device: torch.device | str = "cpu", batch: int = 2) -> float:
    """FLOPs of one training step (forward + backward) per image, counted by torch's FlopCounterMode.

    Counted on a deep copy, so the model's BatchNorm statistics and gradients are left untouched;
    matrix products and convolutions only, which is what peak figures refer to.
    """
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).train()
    x = torch.randn(batch, in_chans, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        probe(x).float().sum().backward()
    return counter.get_total_flops() / batch


def gtx1060_ceiling_images_per_sec(flops_per_image: float) -> float:
    """Computed (not measured) upper bound: the GTX 1060 at 100 % of its FP32 peak."""
    return GTX1060_FP32_TFLOPS * 1e12 / flops_per_image
