"""FLOPs, device peaks and the GTX 1060 reference: what turns images/sec into TFLOP/s, a fraction of
the device's peak and a speed-up over the original report's card."""

from __future__ import annotations

import copy

import torch

from ..engine.amp import DTYPES
from ..runinfo import device_name
from .timing import time_fn

# Dense (no sparsity) spec peaks in TFLOP/s: (device-name fragment, model label, peaks by math mode).
# Looked up by substring of torch.cuda.get_device_name(); first match wins, so the PCIe and NVL
# variants come before the bare "H100"/"H200" (whose names, e.g. "NVIDIA H100 80GB HBM3", are the
# SXM parts).  "tf32" is the tensor-core rate that fp32 matmuls and convolutions get when TF32 is
# allowed; "fp32" the plain CUDA-core rate.  Figures from NVIDIA's H100/H200/A100/L40S/A10/V100/T4
# datasheets (the sparsity figures there are twice these).
PEAK_TFLOPS = [
    ("H100 PCIe", "H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", "H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H200 NVL", "H200 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H200", "H200 SXM", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    ("H100", "H100 SXM", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    ("A100", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", "L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("A10", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("V100", "V100", {"fp16": 125.0, "fp32": 15.7}),
    ("T4", "T4", {"fp16": 65.0, "fp32": 8.1}),
]

# The original report's card.  Pascal GP106: 1280 CUDA cores x 1.708 GHz boost x 2 FLOP (FMA)
# = 4.375 TFLOP/s FP32; no tensor cores, and FP16 arithmetic runs at 1/64 of the FP32 rate on this
# chip, so FP32 is its best case.
GTX1060_FP32_TFLOPS = 4.375


def math_mode(precision: str, tf32: bool) -> str:
    """The peak a ``precision`` run is bounded by: bf16/fp16 autocast runs the tensor cores at that
    precision; fp32 runs them at TF32 when TF32 is allowed, else the CUDA cores at plain FP32."""
    return precision if precision != "fp32" else ("tf32" if tf32 else "fp32")


def tf32_enabled() -> bool:
    """Whether fp32 matrix products or convolutions may use TF32.  A WRN is mostly convolutions,
    and cuDNN allows TF32 by default even where the matmul flag is off, so either flag counts."""
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def spec_peak(device_name: str, precision: str, tf32: bool) -> tuple[float, str] | None:
    """``(TFLOP/s, source)`` from :data:`PEAK_TFLOPS` for ``precision`` (fp32 | bf16 | fp16) with
    ``tf32`` allowed or not, on the first device whose fragment is in ``device_name``; None when the
    device or its math mode is not in the table.  ``source`` says which figure: ``spec bf16 dense
    H100 SXM``."""
    mode = math_mode(precision, tf32)
    for fragment, label, peaks in PEAK_TFLOPS:
        if fragment in device_name:
            if mode not in peaks:
                return None
            why = " (fp32 with TF32 allowed)" if mode == "tf32" else ""
            return peaks[mode], f"spec {mode} dense {label}{why}"
    return None


def known_peak_tflops(device_name: str, precision: str, tf32: bool = False) -> float | None:
    """The spec peak's TFLOP/s alone (:func:`spec_peak`), or None."""
    found = spec_peak(device_name, precision, tf32)
    return found[0] if found else None


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Achieved TFLOP/s of a square matrix product (timed with CUDA events on CUDA): the measured
    ceiling beside the spec peak, and the only one for devices not in the table (and CPUs)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, warmup=2, iters=5 if device.type == "cuda" else 2, repeats=3)
    return 2 * n ** 3 / (t.ms_median * 1e-3) / 1e12


class Peaks:
    """``peaks(precision) -> (TFLOP/s, source)``: the device's spec peak for the math mode that
    precision runs in (:func:`spec_peak`, TF32 as the process has it set) on CUDA, else the measured
    matrix-product ceiling (labelled so).  ``peaks.measured(precision)``: the measured ceiling alone,
    so a row can give both "% of spec" and "% of measured".  Each figure is found once."""

    def __init__(self, device: torch.device):
        self.device = device
        self.name = device_name(device)
        self.found: dict[str, tuple[float, str]] = {}
        self.measured_found: dict[str, tuple[float, str]] = {}

    def measured(self, precision: str) -> tuple[float, str]:
        if precision not in self.measured_found:
            mode = math_mode(precision, self.device.type == "cuda" and tf32_enabled())
            # fp32 convolutions run at TF32 when cuDNN allows it, even with the matmul flag off: the
            # ceiling they are held against is then a TF32 matrix product, so measure that one.
            matmul = torch.backends.cuda.matmul
            before, matmul.allow_tf32 = matmul.allow_tf32, matmul.allow_tf32 or mode == "tf32"
            try:
                tflops = measured_matmul_tflops(self.device, DTYPES[precision])
            finally:
                matmul.allow_tf32 = before
            self.measured_found[precision] = (tflops, f"measured {mode} matrix-product ceiling on this "
                                                      f"device (not a spec peak)")
        return self.measured_found[precision]

    def __call__(self, precision: str) -> tuple[float, str]:
        if precision not in self.found:
            spec = spec_peak(self.name, precision, tf32_enabled()) if self.device.type == "cuda" else None
            self.found[precision] = spec or self.measured(precision)
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
