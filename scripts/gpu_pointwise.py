#!/usr/bin/env python
"""Issue 14's "norm and SwiGLU: measure first": inductor's kernels against liger-kernel's, one GPU.

  PYTHONPATH=src python scripts/gpu_pointwise.py          # ~2 minutes on an H200
  PYTHONPATH=src python scripts/gpu_pointwise.py --cpu-smoke   # our side on the CPU, to check the script

At the 135M llama (16×1024 tokens, d 576, d_ff 1536), 135M FlowHN (d 768, d_ff 2048) and 1B (d 2048,
d_ff 5632) shapes, as the blocks run them under bf16 autocast with fp32 weights, forward + backward:

* the pre-norm residual step: the residual stream is fp32 (the embedding's dtype), a branch's output
  bf16 (a GEMM's); ``total = residual + branch`` is the next residual and ``RMSNorm(total)`` goes to the
  next GEMM in bf16. Ours: ``flowhn.nn.norm.RMSNorm`` and the add, compiled (inductor fuses the add, the
  norm and the cast); liger-kernel's ``LigerFusedAddRMSNormFunction`` (casting_mode "llama") needs one
  dtype, so the branch is cast to fp32 first and the normalised output to bf16 after, as a model using
  it would;
* SwiGLU's activation ``silu(gate) * up`` (bf16): compiled against ``LigerSiLUMulFunction``.
Each is first checked against the float64 definition (relative error of every output and gradient),
then timed (median ms of forward + backward, triton.testing.do_bench) against its floor: the bytes
both passes must move at their dtypes, at the measured copy bandwidth. RoPE is left out: at 135M it
moves about 1.5 % of a step's bytes. A table is printed last; the log goes to $OUT/pointwise.log.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from flowhn.kernels.testing import ScriptLog, compare, copy_bandwidth
from flowhn.nn.norm import RMSNorm

log = ScriptLog()
SHAPES = {"135M llama": (16 * 1024, 576, 1536), "135M flowhn": (16 * 1024, 768, 2048), "1B": (16 * 1024, 2048, 5632)}
SMOKE_SHAPES = {"smoke": (40, 24, 56)}
TOL = 2e-2  # bf16 outputs
EPS = 1e-5


def residual_norm_of(dim: int):
    """(the next residual, its norm in bf16): the blocks' pre-norm step with the model's RMSNorm."""
    norm = RMSNorm(dim, eps=EPS)

    def residual_norm(residual, branch, weight):
        total = residual + branch
        return total, torch.func.functional_call(norm, {"weight": weight}, (total,)).to(torch.bfloat16)
    return residual_norm


def residual_norm_exact(residual, branch, weight):
    """The definition, in the inputs' dtype (float64 for the checks)."""
    total = residual + branch
    return total, weight * total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + EPS)


def residual_norm_liger(residual, branch, weight):
    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

    normed, total = LigerFusedAddRMSNormFunction.apply(branch.float(), residual, weight, EPS, 0.0, "llama", False)
    return total, normed.to(torch.bfloat16)


def swiglu(gate, up):
    return F.silu(gate) * up


def swiglu_liger(gate, up):
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    return LigerSiLUMulFunction.apply(gate, up)


def fwd_bwd_ms(fn, inputs: dict) -> float:
    from triton.testing import do_bench

    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    outs = (out,) if isinstance(out, torch.Tensor) else out
    cotangents = [torch.randn_like(o) for o in outs]
    step = lambda: torch.autograd.backward(fn(**leaves), cotangents)  # noqa: E731
    return do_bench(step, grad_to_none=list(leaves.values()), return_mode="median")


def cases(tokens: int, dim: int, ffn: int, device: str, compile_fn):
    """(op, variant, function, reference, inputs, bytes forward + backward must move)."""
    gen = torch.Generator(device=device).manual_seed(0)
    normal = lambda *shape: torch.randn(*shape, generator=gen, device=device)  # noqa: E731
    n, f = tokens * dim, tokens * ffn
    norm_in = {"residual": normal(tokens, dim), "branch": normal(tokens, dim).to(torch.bfloat16),
               "weight": 1 + 0.1 * normal(dim)}
    # fwd: read residual (4 B) and branch (2), write total (4) and the bf16 norm (2); bwd: read total,
    # d(norm), d(total) (4 + 2 + 4), write d(residual) and d(branch) (4 + 2). The weight's share is small.
    norm_bytes = n * (4 + 2 + 4 + 2 + 4 + 2 + 4 + 4 + 2)
    swiglu_in = {"gate": normal(tokens, ffn).to(torch.bfloat16), "up": normal(tokens, ffn).to(torch.bfloat16)}
    swiglu_bytes = f * 2 * (3 + 5)  # fwd: read gate, up, write out; bwd: read gate, up, dout, write both
    exact = residual_norm_exact
    yield "residual add + RMSNorm", "ours, compiled", compile_fn(residual_norm_of(dim)), exact, norm_in, norm_bytes
    yield "residual add + RMSNorm", "liger", residual_norm_liger, exact, norm_in, norm_bytes
    yield "silu(gate) * up", "ours, compiled", compile_fn(swiglu), swiglu, swiglu_in, swiglu_bytes
    yield "silu(gate) * up", "liger", swiglu_liger, swiglu, swiglu_in, swiglu_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU, our side only, untimed")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("gpu_pointwise.py: no CUDA device (--cpu-smoke runs our side on the CPU)")
    device = "cpu" if args.cpu_smoke else "cuda"
    if os.environ.get("OUT"):
        log.open(os.path.join(os.environ["OUT"], "pointwise.log"))
    log(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (smoke)'}  torch {torch.__version__}")
    bandwidth = copy_bandwidth() if device == "cuda" else float("nan")
    log(f"copy bandwidth (1 GiB, read + write): {bandwidth:.0f} GB/s")
    compile_fn = torch.compile if device == "cuda" else (lambda fn: fn)
    rows, failures = [], []
    for shape_name, shape in (SMOKE_SHAPES if args.cpu_smoke else SHAPES).items():
        log(f"\n{shape_name}: {shape[0]} tokens, d {shape[1]}, d_ff {shape[2]}")
        for op, variant, fn, reference, inputs, nbytes in cases(*shape, device, compile_fn):
            if args.cpu_smoke and variant == "liger":
                continue
            try:
                errs = compare(fn, reference, inputs)
                ms = fwd_bwd_ms(fn, inputs) if device == "cuda" else float("nan")
            except Exception as exc:  # one broken variant must not hide the others
                log(f"  {op:24s} {variant:15s} FAILED: {type(exc).__name__}: {exc}")
                failures.append(f"{shape_name} {op} {variant}: {type(exc).__name__}")
                continue
            worst = max(errs.values())
            floor = nbytes / bandwidth / 1e6
            log(f"  {op:24s} {variant:15s} {'PASS' if worst <= TOL else 'FAIL'} worst {worst:.1e} ("
                + " ".join(f"{k}={v:.1e}" for k, v in errs.items()) + f")  {ms:.3f} ms, floor {floor:.3f}")
            rows.append((shape_name, op, variant, ms, floor, worst))
            if worst > TOL:
                failures.append(f"{shape_name} {op} {variant}: error {worst:.1e}")
    log("\n| shape | op | variant | fwd+bwd ms | floor ms | × floor | worst error |\n|---|---|---|---:|---:|---:|---:|")
    for shape_name, op, variant, ms, floor, worst in rows:
        log(f"| {shape_name} | {op} | {variant} | {ms:.3f} | {floor:.3f} | {ms / floor:.2f} | {worst:.1e} |")
    log("FAILED: " + "; ".join(failures) if failures else "ALL CHECKS PASSED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
