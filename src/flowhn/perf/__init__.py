"""Performance measurement: GPU peak table and the throughput/MFU callback."""

from flowhn.perf.hardware import GPU_PEAKS, device_peak_tflops, matmul_dtype, normalize_dtype, peak_tflops
from flowhn.perf.throughput import ThroughputMonitor

__all__ = ["GPU_PEAKS", "ThroughputMonitor", "device_peak_tflops", "matmul_dtype", "normalize_dtype", "peak_tflops"]
