#!/usr/bin/env python
"""mamba-ssm's CUDA kernels against ours at the same shapes (issue 13's reference anchor), where it is installed.

  PYTHONPATH=src python3 scripts/gpu_mamba_ssm_compare.py     # after scripts/gpu_mamba_ssm_anchor.sh built it

bf16, forward+backward, GPU kernel time (``gpu_mamba1.fwd_bwd_ms`` with ``KERNEL_TIME``: the kernels' own
durations in torch.profiler, mean of 10, so launch overhead does not enter):
* the selective scan (D, z, delta bias, softplus) at 16×4096×1024×16 (a 1B Mamba layer's 4096 channels
  over 1024 steps, as issue 13 states it) and 16×4096×369×16 (FAC's share): ``kernels.selective_scan``
  with ``backend="mamba_ssm"`` (its ``selective_scan_fn``) and ``backend="triton"`` (ours), the same inputs;
  each side's output and gradients also compared with the other's (relative L2).
* the causal conv1d + bias + SiLU at 16×1024×4096, width 4, x the strided half of a (B, L, 8192) in_proj
  output: causal_conv1d's ``causal_conv1d_fn`` (on the (B, C, L) view of that memory, its channel-last
  path) and ours (``triton_conv.causal_conv1d_silu_triton``).
Prints a table last.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_mamba1  # noqa: E402

from flowhn import kernels  # noqa: E402
from flowhn.kernels.testing import relative_error, scan_inputs  # noqa: E402
from flowhn.kernels.torch_conv import conv_inputs  # noqa: E402
from flowhn.kernels.triton_conv import causal_conv1d_silu_triton  # noqa: E402

SCAN_SHAPES = [(16, 4096, 1024, 16), (16, 4096, 369, 16)]
CONV_SHAPE, CONV_ROW_STRIDE = (16, 1024, 4096, 4), 8192


def outputs_and_grads(fn, leaves, dy):
    out = fn()
    grads = torch.autograd.grad(out, leaves, dy)
    return [out, *grads]


def agreement(fn_a, fn_b, leaves):
    """Largest relative L2 difference between two implementations' output and gradients."""
    dy = torch.randn_like(fn_a())
    a, b = outputs_and_grads(fn_a, leaves, dy), outputs_and_grads(fn_b, leaves, dy)
    return max(relative_error(x.float(), y.float()) for x, y in zip(a, b))


def main() -> int:
    if not torch.cuda.is_available():
        sys.exit("gpu_mamba_ssm_compare.py: no CUDA device")
    gpu_mamba1.KERNEL_TIME = True
    rows = []
    for shape in SCAN_SHAPES:
        inputs = scan_inputs(*shape, dtype=torch.bfloat16, device="cuda", seed=0)
        inputs = {k: v.requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                  for k, v in inputs.items()}
        leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
        fns = {name: functools.partial(kernels.selective_scan, **inputs, backend=name) for name in ("mamba_ssm", "triton")}
        diff = agreement(fns["mamba_ssm"], fns["triton"], leaves)
        for name, fn in fns.items():
            rows.append((f"selective scan {'x'.join(map(str, shape))}", name, gpu_mamba1.fwd_bwd_ms(fn, leaves), diff))
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError as exc:  # the anchor build may get mamba-ssm only
        print(f"causal_conv1d: {exc}; the conv is not compared")
        return print_table(rows)
    conv = conv_inputs(*CONV_SHAPE, dtype=torch.bfloat16, device="cuda", row_stride=CONV_ROW_STRIDE, seed=0)
    x = conv["x"].detach().requires_grad_()
    w, b = conv["weight"].requires_grad_(), conv["bias"].requires_grad_()
    theirs = lambda: causal_conv1d_fn(x.transpose(1, 2), w, b, activation="silu").transpose(1, 2)  # noqa: E731
    ours = lambda: causal_conv1d_silu_triton(x, w, b)  # noqa: E731
    diff = agreement(theirs, ours, [x, w, b])
    for name, fn in (("causal_conv1d", theirs), ("ours (walk)", ours)):
        rows.append((f"conv {'x'.join(map(str, CONV_SHAPE))}", name, gpu_mamba1.fwd_bwd_ms(fn, [x, w, b]), diff))
    return print_table(rows)


def print_table(rows) -> int:
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print("| kernel, bf16 fwd+bwd | implementation | GPU ms | max rel. difference between the two |")
    print("|---|---|---:|---:|")
    for what, name, ms, diff in rows:
        print(f"| {what} | {name} | {ms:.3f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
