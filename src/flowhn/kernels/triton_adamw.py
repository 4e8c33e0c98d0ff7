"""AdamW on fp32 master weights in one Triton kernel a parameter (semantics: ``flowhn.kernels.adamw``).

Each program updates BLOCK elements: it reads the gradient (bf16 or fp32), the master weight (or the
fp32 parameter itself), both moments, and writes them back with the parameter's rounding; 28 bytes an
element for a bf16 weight, as torch's fused AdamW moves for an fp32 one (it reads an fp32 gradient and
writes no second copy). The step count, the clip coefficient and the skip flag are read from device
memory, so no step needs the host to know them. A program whose ``found_inf`` is set returns before it
writes anything.
"""

from __future__ import annotations

import triton
import triton.language as tl

from flowhn.kernels import triton_interpreter  # noqa: F401  (patches the CPU interpreter where it runs)

BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _adamw_kernel(param_ptr, grad_ptr, master_ptr, exp_avg_ptr, exp_avg_sq_ptr, step_ptr, grad_multiplier_ptr,
                  found_inf_ptr, n, lr, beta1, beta2, eps, weight_decay,
                  HAS_MASTER: tl.constexpr, HAS_GRAD_MULTIPLIER: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                  BLOCK: tl.constexpr):
    if HAS_FOUND_INF:
        if tl.load(found_inf_ptr) != 0:
            return
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_GRAD_MULTIPLIER:
        g = g * tl.load(grad_multiplier_ptr)
    if HAS_MASTER:
        w = tl.load(master_ptr + offs, mask=mask, other=0.0)
    else:
        w = tl.load(param_ptr + offs, mask=mask, other=0.0)
    m = tl.load(exp_avg_ptr + offs, mask=mask, other=0.0)
    v = tl.load(exp_avg_sq_ptr + offs, mask=mask, other=0.0)
    t = tl.load(step_ptr)
    # β^t as exp2(t·log2 β): t is a float step count (torch's "step" state is fp32 too).
    bias1 = 1.0 - tl.exp2(t * tl.log2(beta1))
    bias2 = 1.0 - tl.exp2(t * tl.log2(beta2))
    w = w * (1.0 - lr * weight_decay)
    m = m + (1.0 - beta1) * (g - m)
    v = beta2 * v + (1.0 - beta2) * g * g
    denom = tl.sqrt(v) / tl.sqrt(bias2) + eps
    w = w - (lr / bias1) * m / denom
    tl.store(exp_avg_ptr + offs, m, mask=mask)
    tl.store(exp_avg_sq_ptr + offs, v, mask=mask)
    if HAS_MASTER:
        tl.store(master_ptr + offs, w, mask=mask)
    # Rounded to nearest even on the GPU, as torch casts (Triton 3.6's CPU interpreter truncates, so the
    # CPU tests allow the parameter one bf16 unit in the last place).
    tl.store(param_ptr + offs, w.to(param_ptr.dtype.element_ty), mask=mask)


def adamw_step_triton(param, grad, master, exp_avg, exp_avg_sq, step, *, lr: float, beta1: float, beta2: float,
                      eps: float, weight_decay: float, grad_multiplier=None, found_inf=None) -> None:
    for name, t in (("param", param), ("grad", grad), ("master", master), ("exp_avg", exp_avg),
                    ("exp_avg_sq", exp_avg_sq)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"adamw_step_triton: {name} must be contiguous (shape {tuple(t.shape)}, "
                             f"strides {t.stride()})")
    n = param.numel()
    if n == 0:
        return
    _adamw_kernel[(triton.cdiv(n, BLOCK),)](
        param, grad, master if master is not None else param, exp_avg, exp_avg_sq, step,
        grad_multiplier if grad_multiplier is not None else step, found_inf if found_inf is not None else step,
        n, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
        HAS_MASTER=master is not None, HAS_GRAD_MULTIPLIER=grad_multiplier is not None, HAS_FOUND_INF=found_inf is not None,
        BLOCK=BLOCK, num_warps=NUM_WARPS)

