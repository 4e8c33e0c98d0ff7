"""Mamba-1 selective scan in plain PyTorch: the CPU path and the fallback everywhere else.

The sequence is cut into chunks. Inside a chunk the linear recurrence ``h_t = a_t h_{t-1} + x_t`` is
solved with a log2 doubling (Hillis-Steele) scan, so each chunk costs ~log2(chunk) whole-tensor ops
instead of ``chunk`` small ones; the state is carried from chunk to chunk. Autograd would keep every
doubling level of every chunk alive (O(B·D·L·N·log chunk) memory), so the scan has a hand-written
backward instead: the forward keeps only the state at each chunk start, and the backward recomputes
one chunk at a time while running the adjoint recurrence backwards. Peak memory is O(B·D·chunk·N).

Softplus/bias on delta, the D skip and the silu(z) gate are O(B·D·L) elementwise work, left to autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 64


def accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 if any input is float64 (exact tests)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def linear_scan(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Solve ``h_t = a_t h_{t-1} + x_t`` along the last dim with ``h_{-1} = h0`` (or, with ``reverse``,
    ``h_t = a_t h_{t+1} + x_t`` with ``h_T = h0``). ``a, x``: (..., T); ``h0``: (...)."""
    a, h = a.clone(), x.clone()
    edge = -1 if reverse else 0
    h[..., edge] += a[..., edge] * h0
    length, step = a.shape[-1], 1
    while step < length:
        # After this level, position t holds the composition of the 2*step maps ending at t.
        if reverse:
            h[..., :-step] += a[..., :-step] * h[..., step:]
            if 2 * step < length:
                a[..., :-step] = a[..., :-step] * a[..., step:]
        else:
            h[..., step:] += a[..., step:] * h[..., :-step]
            if 2 * step < length:
                a[..., step:] = a[..., step:] * a[..., :-step]
        step *= 2
    return h


# Per-chunk tensors are laid out (B, D, N, T): time innermost keeps the doubling slices contiguous, and
# the reductions over N (size ~16) then run over a middle dim, which PyTorch's CPU kernels vectorise
# well (einsum would permute-copy, and an innermost reduction of 16 is slow).


def _chunk_inputs(u, delta, A, B, start, stop):
    """Decays ``a = exp(Δ A)`` and inputs ``x = Δ u B`` of one chunk, both (B, D, N, T)."""
    d = delta[:, :, None, start:stop]
    a = torch.exp(d * A[:, :, None])
    x = (d * u[:, :, None, start:stop]) * B[:, None, :, start:stop]
    return a, x


class _ChunkedScan(torch.autograd.Function):
    """y = C·h with h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t; inputs already in the accumulation dtype."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        batch, dim, length = u.shape
        h = u.new_zeros(batch, dim, A.shape[1])
        starts, ys = [], []
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            starts.append(h)
            a, x = _chunk_inputs(u, delta, A, B, start, stop)
            hs = linear_scan(a, x, h)
            ys.append((hs * C[:, None, :, start:stop]).sum(2))
            h = hs[..., -1]
        ctx.save_for_backward(u, delta, A, B, C, *starts)
        ctx.chunk = chunk
        return torch.cat(ys, dim=-1)

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, *starts = ctx.saved_tensors
        chunk, length = ctx.chunk, u.shape[-1]
        dy = dy.to(u.dtype)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        # carry = a_s g_s, with s the first step of the chunk after this one: what dL/dh at this
        # chunk's last step receives from the future.
        carry = torch.zeros_like(starts[0])
        for index in reversed(range(len(starts))):
            start = index * chunk
            stop = min(start + chunk, length)
            a, x = _chunk_inputs(u, delta, A, B, start, stop)
            hs = linear_scan(a, x, starts[index])
            # Adjoint g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}: a reverse scan with decays shifted by one.
            a_next = torch.cat([a[..., 1:], torch.ones_like(a[..., :1])], dim=-1)
            dyi = dy[:, :, None, start:stop]
            g = linear_scan(a_next, dyi * C[:, None, :, start:stop], carry, reverse=True)
            carry = a[..., 0] * g[..., 0]
            # a_t h_{t-1} = h_t - x_t avoids keeping h_{t-1}; g * that is dL/da_t * a_t.
            ga = g * (hs - x)
            d, ui = delta[:, :, None, start:stop], u[:, :, None, start:stop]
            gB = (g * B[:, None, :, start:stop]).sum(2)
            du[..., start:stop] = d[:, :, 0] * gB
            ddelta[..., start:stop] = ui[:, :, 0] * gB + (ga * A[:, :, None]).sum(2)
            dA += (ga * d).sum(0).sum(-1)
            dB[..., start:stop] = (g * (d * ui)).sum(1)
            dC[..., start:stop] = (hs * dyi).sum(1)
        return du, ddelta, dA, dB, dC, None


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         chunk=DEFAULT_CHUNK):
    """Same contract as ``reference.selective_scan_sequential``; differentiable in every tensor input."""
    acc = accumulation_dtype(u, delta, A, B, C)
    delta = delta.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    u_acc = u.to(acc)
    y = _ChunkedScan.apply(u_acc, delta, A.to(acc), B.to(acc), C.to(acc), chunk)
    if D is not None:
        y = y + u_acc * D.to(acc)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(u.dtype)
