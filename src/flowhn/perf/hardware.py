"""Dense tensor-core peak throughput per GPU, the denominator of MFU.

Every figure is the *dense* number (no 2:4 structured sparsity), in TFLOPS per device. NVIDIA's
datasheets print the sparse figure for Hopper/Ada/Blackwell with a footnote; those are halved here.
For fp16 the figure is the one with FP32 accumulation, which is what mixed-precision training uses
(it matters on GeForce cards, where FP16-accumulate runs twice as fast).

Why not Lightning's ``get_available_flops`` table: it mixes sparse figures (H200), the two-card
figure for H100 NVL and non-tensor figures for Ada GeForce cards, and lacks V100, A10, L40S and
Blackwell, so MFU across GPUs would not be comparable.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from flowhn.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = ("bf16", "fp16", "tf32", "fp32", "fp64")

# Lightning precision strings, torch dtype names and short forms -> training matmul dtype.
_DTYPE_ALIASES = {
    "bf16": "bf16", "bf16-mixed": "bf16", "bf16-true": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "16": "fp16", "16-mixed": "fp16", "16-true": "fp16", "float16": "fp16", "half": "fp16",
    "tf32": "tf32",
    "fp32": "fp32", "32": "fp32", "32-true": "fp32", "float32": "fp32",
    "fp64": "fp64", "64": "fp64", "64-true": "fp64", "float64": "fp64",
}


@dataclass(frozen=True)
class GpuPeak:
    name: str
    pattern: str  # case-insensitive regex searched in torch.cuda.get_device_name()
    tflops: dict[str, float]  # dtype -> dense TFLOPS per device


def _peak(name: str, pattern: str, *, bf16=None, fp16=None, tf32=None, fp32=None) -> GpuPeak:
    values = dict(bf16=bf16, fp16=fp16, tf32=tf32, fp32=fp32)
    return GpuPeak(name, pattern, {k: float(v) for k, v in values.items() if v is not None})


# First match wins, so variants come before the generic name of their family (H100 NVL before
# H100), and word boundaries keep A10 from matching A100/A10G and B200 from matching GB200.
GPU_PEAKS: tuple[GpuPeak, ...] = (
    # V100 datasheet (2020): "Tensor Performance" V100S PCIe 130, V100 PCIe 112, V100 SXM2 125;
    # single precision 16.4 / 14 / 15.7. Volta tensor cores have no bf16 or tf32 mode.
    _peak("V100S PCIe", r"\bV100S\b", fp16=130, fp32=16.4),
    _peak("V100 PCIe", r"\bV100\b.*PCIE", fp16=112, fp32=14),
    _peak("V100 SXM", r"\bV100\b", fp16=125, fp32=15.7),
    # A100 datasheet (40GB/80GB, SXM and PCIe alike): BF16/FP16 tensor 312 (624 sparse),
    # TF32 156 (312 sparse), FP32 19.5.
    _peak("A100", r"\bA100\b", bf16=312, fp16=312, tf32=156, fp32=19.5),
    # A10G (AWS G5, no public NVIDIA datasheet; AWS/NVIDIA figures): BF16/FP16 tensor 70,
    # TF32 35, FP32 35. It has fewer tensor-core FLOPs than the A10 despite the similar name.
    _peak("A10G", r"\bA10G\b", bf16=70, fp16=70, tf32=35, fp32=35),
    # A10 datasheet: BF16/FP16 tensor 125 (250 sparse), TF32 62.5 (125 sparse), FP32 31.2.
    _peak("A10", r"\bA10\b", bf16=125, fp16=125, tf32=62.5, fp32=31.2),
    # L40S datasheet: BF16/FP16 tensor 362.05 | 733 sparse, TF32 183 | 366 sparse, FP32 91.6.
    _peak("L40S", r"\bL40S\b", bf16=362.05, fp16=362.05, tf32=183, fp32=91.6),
    # L40 datasheet: BF16/FP16 tensor 181.05 | 362.1 sparse, TF32 90.5 | 181 sparse, FP32 90.5.
    _peak("L40", r"\bL40\b", bf16=181.05, fp16=181.05, tf32=90.5, fp32=90.5),
    # L4 datasheet: BF16/FP16 tensor 242 and TF32 120 "shown with sparsity" -> 121 / 60; FP32 30.3.
    _peak("L4", r"\bL4\b", bf16=121, fp16=121, tf32=60, fp32=30.3),
    # Ada whitepaper (RTX 4090): FP16/BF16 tensor with FP32 accumulate 165.2 (330.4 sparse),
    # TF32 tensor 82.6 (165.2 sparse), FP32 82.6. "RTX 4090 D" is a cut-down part, not matched.
    _peak("RTX 4090", r"RTX 4090\b(?!\s*D\b)", bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6),
    # H100 NVL datasheet (single 94GB card): BF16/FP16 1,671 and TF32 835 with sparsity -> 835.5 /
    # 417.5; FP32 60.
    _peak("H100 NVL", r"\bH100\b.*\bNVL\b", bf16=835.5, fp16=835.5, tf32=417.5, fp32=60),
    # Hopper whitepaper, H100 PCIe: BF16/FP16 756 (1513 sparse), TF32 378 (756 sparse), FP32 51.2.
    # The PCIe card carries HBM2e, so "H100 80GB HBM2e" is the PCIe part.
    _peak("H100 PCIe", r"\bH100\b.*(PCIE|HBM2E)", bf16=756, fp16=756, tf32=378, fp32=51.2),
    # Hopper whitepaper, H100 SXM5: BF16/FP16 989.4 (1978.9 sparse), TF32 494.7 (989.4 sparse),
    # FP32 66.9. torch reports it as "NVIDIA H100 80GB HBM3".
    _peak("H100 SXM", r"\bH100\b", bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9),
    # H200 datasheet, NVL column: BF16/FP16 1,671 and TF32 835 with sparsity; FP32 60.
    _peak("H200 NVL", r"\bH200\b.*\bNVL\b", bf16=835.5, fp16=835.5, tf32=417.5, fp32=60),
    # H200 datasheet, SXM column: BF16/FP16 1,979 and TF32 989 with sparsity; FP32 67.
    _peak("H200 SXM", r"\bH200\b", bf16=989.5, fp16=989.5, tf32=494.5, fp32=67),
    # GB200 NVL72 datasheet / 72 GPUs: FP16/BF16 360 PF and TF32 180 PF with sparsity -> 2,500 /
    # 1,250 dense per GPU; FP32 5,760 TF -> 80.
    _peak("GB200", r"\bGB200\b", bf16=2500, fp16=2500, tf32=1250, fp32=80),
    # HGX B200 datasheet / 8 GPUs: FP16/BF16 36 PF and TF32 18 PF with sparsity -> 2,250 / 1,125
    # dense per GPU; FP32 600 TF -> 75.
    _peak("B200", r"\bB200\b", bf16=2250, fp16=2250, tf32=1125, fp32=75),
)

_warned: set[tuple[str, str]] = set()


def _warn_once(key: tuple[str, str], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def normalize_dtype(dtype: str | torch.dtype) -> str:
    """Map "bf16-mixed", "16-mixed", "32-true", torch.bfloat16, ... to one of ``DTYPES``."""
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPE_ALIASES:
        raise ValueError(f"unknown training dtype/precision {dtype!r}; expected one of {sorted(_DTYPE_ALIASES)}")
    return _DTYPE_ALIASES[key]


def matmul_dtype(precision: str | torch.dtype) -> str:
    """The dtype tensor cores actually run for a Lightning precision setting.

    fp32 training runs its matmuls in TF32 when torch is allowed to (``set_float32_matmul_precision``
    "high"/"medium"), so its peak is the TF32 one.
    """
    dtype = normalize_dtype(precision)
    if dtype == "fp32" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return dtype


def lookup_gpu(device_name: str) -> GpuPeak | None:
    for row in GPU_PEAKS:
        if re.search(row.pattern, device_name, flags=re.IGNORECASE):
            return row
    return None


def peak_tflops(device_name: str, dtype: str | torch.dtype, override: float | None = None) -> float | None:
    """Dense tensor-core peak TFLOPS of one device, or None when it is not known.

    ``override`` (config ``hardware.peak_tflops``, per device) wins over the table. An unknown GPU
    or a dtype the GPU has no figure for gives None and one warning per name, never an exception,
    so a run on new hardware still trains and just reports no MFU.
    """
    if override is not None:
        return check_override(override)
    dtype = normalize_dtype(dtype)
    row = lookup_gpu(device_name)
    if row is None:
        _warn_once((device_name, ""), f"no peak-FLOPS entry for GPU {device_name!r}: MFU is not reported "
                                      "(set hardware.peak_tflops to the dense per-device TFLOPS to enable it)")
        return None
    if dtype not in row.tflops:
        _warn_once((device_name, dtype), f"no {dtype} peak-FLOPS entry for {row.name} ({device_name!r}): "
                                         "MFU is not reported (set hardware.peak_tflops to enable it)")
        return None
    return row.tflops[dtype]


def check_override(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"hardware.peak_tflops: must be a positive number of TFLOPS per device, got {value!r}")
    return float(value)


def device_peak_tflops(device: torch.device | str, precision: str | torch.dtype,
                       override: float | None = None) -> float | None:
    """Peak for the device a run trains on; CPUs have no table entry, so None unless overridden."""
    if override is not None:
        return check_override(override)
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return peak_tflops(torch.cuda.get_device_name(device), matmul_dtype(precision))
