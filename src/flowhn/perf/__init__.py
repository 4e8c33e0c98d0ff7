"""Performance measurement: GPU peak table and the throughput/MFU callback."""

from flowhn.perf.hardware import GPU_PEAKS, device_peak_tflops, matmul_dtype, normalize_dtype, peak_tflops

__all__ = ["GPU_PEAKS", "ThroughputMonitor", "device_peak_tflops", "matmul_dtype", "normalize_dtype", "peak_tflops"]


def __getattr__(name: str):
    # The callback needs Lightning (3.6 s to import): loaded when asked for, so the benchmark and
    # its per-row processes (flowhn.bench isolate=true), which read only the peak table, start without it.
    if name == "ThroughputMonitor":
        from flowhn.perf.throughput import ThroughputMonitor

        return ThroughputMonitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
