"""Utilisation: the hardware's peak FLOP/s and what share of it a run reaches (MFU, HFU).

It sits beside the loop, which reports MFU per logged step: the model FLOPs it divides are
counted by `ds_minimodel.method.flops` (MFU: FlopReport.total; HFU: FlopReport.hardware_total).
"""

from __future__ import annotations

import time

import torch

from ds_minimodel.errors import UserError

# Dense (no 2:4 sparsity) peak FLOP/s per GPU. NVIDIA's datasheets list the Tensor Core numbers
# "with sparsity"; dense is half of those. fp32 = plain FP32 (CUDA cores; torch's default for fp32
# matmuls, allow_tf32=False); tf32 = TF32 Tensor Cores.
#   A100 (SXM4 and PCIe, 40/80 GB): BF16 312, TF32 156, FP32 19.5 TFLOPS
#     https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
#   H100 SXM: BF16 1,979*, TF32 989*, FP32 67; H100 PCIe: 1,513*, 756*, 51; H100 NVL: 1,671*, 835*, 60
#     https://www.nvidia.com/en-us/data-center/h100/  (* with sparsity)
#   H200 SXM: BF16 1,979*, TF32 989*, FP32 67; H200 NVL: 1,671*, 835*, 60
#     https://www.nvidia.com/en-us/data-center/h200/  (* with sparsity)
PEAK_FLOPS = {
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "H100-SXM": {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.5e12, "fp32": 67e12},
    "H100-PCIe": {"bf16": 756.5e12, "fp16": 756.5e12, "tf32": 378e12, "fp32": 51e12},
    "H100-NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "H200-SXM": {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.5e12, "fp32": 67e12},
    "H200-NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
}
PEAK_FLOPS["H100"] = PEAK_FLOPS["H100-SXM"]
PEAK_FLOPS["H200"] = PEAK_FLOPS["H200-SXM"]


def peak_flops(device: str, dtype: str = "bf16") -> float:
    """Peak FLOP/s of `device`: a PEAK_FLOPS key or a CUDA device name such as
    "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB"."""
    key = device if device in PEAK_FLOPS else None
    if key is None:
        up = device.upper()
        for chip in ("H200", "H100", "A100"):
            if chip in up:
                if chip == "A100":
                    key = "A100"
                elif "NVL" in up:
                    key = f"{chip}-NVL"
                elif "PCIE" in up:
                    key = f"{chip}-PCIe"
                else:
                    key = f"{chip}-SXM"
                break
    if key is None or key not in PEAK_FLOPS:
        raise UserError(f"no peak FLOP/s known for device {device!r} (known: {', '.join(PEAK_FLOPS)})")
    if dtype not in PEAK_FLOPS[key]:
        raise UserError(f"no peak FLOP/s for dtype {dtype!r} on {key} (known: {', '.join(PEAK_FLOPS[key])})")
    return PEAK_FLOPS[key][dtype]


def resolve_peak(peak: float | str) -> float:
    """FLOP/s from a number or from "DEVICE:DTYPE" (see peak_flops)."""
    if isinstance(peak, str):
        device, _, dtype = peak.partition(":")
        return peak_flops(device, dtype or "bf16")
    if peak <= 0:
        raise UserError(f"peak FLOP/s must be positive, got {peak}")
    return float(peak)


def mfu(flops_per_s: float, peak: float | str) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s (FlopReport.total / step time) over the peak.
    `peak`: FLOP/s, or "DEVICE:DTYPE" such as "H100:bf16" (see peak_flops)."""
    return flops_per_s / resolve_peak(peak)


def hfu(hardware_flops_per_s: float, peak: float | str) -> float:
    """Hardware FLOPs utilisation: like mfu, counting recomputation (FlopReport.hardware_total)."""
    return hardware_flops_per_s / resolve_peak(peak)


def measure_cpu_peak(seconds: float = 1.0, n: int = 1024) -> float:
    """fp32 matmul FLOP/s this process reaches on the CPU (torch's current thread count): the best
    rate over repeated n x n @ n x n products for about `seconds`."""
    g = torch.Generator().manual_seed(0)  # never the global RNG: a resumed run's dropout stream depends on it
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up (allocations, thread pool)
    per_mm = 2 * n * n * n
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        reps = 0
        while reps < 2 or time.perf_counter() - t0 < min(0.1, seconds / 4):
            torch.mm(a, b, out=out)
            reps += 1
        best = max(best, reps * per_mm / (time.perf_counter() - t0))
        if time.perf_counter() >= deadline:
            return best
