"""Mamba-2 SSD on the GPU: the chunked matmul algorithm of ``ssd_chunked`` under ``torch.compile``.

Inductor fuses the elementwise decay work around the matmuls into Triton kernels; with bf16/fp16 inputs
the contractions run in that dtype (fp32 accumulation) while cumulative decays stay fp32. On CPU (the
Triton interpreter) it runs eagerly, since inductor's CPU path needs a C++ toolchain.

The intermediates autograd would keep are (batch, length, heads, chunk) decay and score tensors, about
a GiB per 1B-scale layer at 16 × 1024 in fp32, which is why Mamba-2 at 1B ran out of memory on an
H100. With ``recompute`` only the inputs are kept and the backward runs the chunked forward again, as
mamba-ssm's fused kernels recompute their chunk states.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from flowhn.kernels.ssd_chunked import ssd_chunked

_HALF = (torch.bfloat16, torch.float16)
# dynamic=False: training runs one shape, and static shapes let inductor pick the best matmul tiles.
_ssd_compiled = torch.compile(ssd_chunked, dynamic=False)


def ssd_gpu(x, dt, A, B, C, D=None, chunk_size=64, recompute=True):
    matmul_dtype = x.dtype if x.dtype in _HALF else None
    run = functools.partial(_ssd_compiled if x.is_cuda else ssd_chunked, chunk_size=chunk_size,
                            matmul_dtype=matmul_dtype)
    if recompute and torch.is_grad_enabled():
        return checkpoint(run, x, dt, A, B, C, D, use_reentrant=False)
    return run(x, dt, A, B, C, D)
