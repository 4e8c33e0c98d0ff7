"""Adapter to the ``mamba_ssm`` package's kernels (CUDA only; optional dependency).

Importing this module fails when ``mamba_ssm`` (or its compiled ``selective_scan_cuda``) is missing; the
dispatcher in ``flowhn.kernels`` treats that as "backend unavailable". Layouts already match ours.
"""

from __future__ import annotations

from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    # Its CUDA kernel reads A, D and delta_bias as fp32 weights.
    D = D.float() if D is not None else None
    delta_bias = delta_bias.float() if delta_bias is not None else None
    return selective_scan_fn(u, delta, A.float(), B, C, D=D, z=z, delta_bias=delta_bias,
                             delta_softplus=delta_softplus)


def ssd_mamba_ssm(x, dt, A, B, C, D=None, chunk_size=64):
    # dt is already the positive step (no dt_bias, no softplus, no clamping: dt_limit stays (0, inf)).
    return mamba_chunk_scan_combined(x, dt, A.float(), B, C, chunk_size, D=None if D is None else D.float())
