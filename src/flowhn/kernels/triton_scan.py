"""Mamba-1 selective scan as Triton kernels (forward and backward), for CUDA GPUs.

The sequence is cut into chunks and every (batch, channel block, chunk) is its own program, so even a
small batch fills the GPU. A chunk only needs the state entering it, which comes from three steps:

1. summary (parallel over chunks): each chunk's end state from a zero start,
   X_c = Σ_t exp(A·Σ_{s>t} Δ_s) Δ_t u_t B_t, plus its total step Σ_t Δ_t (so its decay is exp(A·ΣΔ));
   exponents are sums of steps *after* t, taken as a reverse cumulative sum, so they are ≤ 0 and
   carry a rounding error proportional to their own size (a decay near 1 stays accurate);
2. pass (sequential over chunks, parallel over batch × channel × state): h_c = X_c + exp(A·ΣΔ_c) h_{c-1};
3. main (parallel over chunks): the chunk's (channels × steps) tile is solved for one state index n at a
   time with ``tl.associative_scan`` in registers, starting from h_{c-1}, and y accumulates over n.
The states at chunk ends, (B, D, L/chunk, N) floats, are all that is kept for the backward, which
recomputes each chunk's states. Nothing of size B·D·L·N is ever written to memory.

The backward mirrors this for the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}, which runs backwards: a
summary K_c = Σ_t exp(A·Σ_{s≤t} Δ_s) C_t dy_t per chunk, a reverse pass for what each chunk receives
from the chunks after it, then the main kernel. a_{t+1} cannot be shifted inside a register tile, so it
is recomputed from delta loaded at t + 1 (an L1 hit).

softplus(delta + bias) on the way in, and the D skip and silu(z) gate on the way out, are fused in. dB
and dC sum over channels: each backward program accumulates several channel blocks in registers and
adds its share with atomics. dA, dD and dbias are written per (batch, chunk) and summed afterwards.

Every (B, D, L) and (B, N, L) tensor is addressed through its own strides, so the kernels read the
channel-last views Mamba1Mixer hands over (transposed (B, L, ·) projections; z may have its own row
stride, as the half of a wider in_proj output) in place and write a channel-last result: no layout
copies around the scan. Contiguous (B, D, L) inputs take the row-major path with rows padded to an aligned pitch.
The forward's tile (8 channels × 64 steps, 1 warp) comes from a sweep on an H100 at B=16, D=4096,
L=1024 and 384, N=16 in bf16 (scripts/gpu_check_kernels.py --sweep): 7.0 ms forward+backward at
L=1024 against 8.4 ms for the earlier 8 × 32 tiles. The backward's (64 channels a program, 1 warp,
looping over channels) from one on an H200 (scripts/gpu_scan_tiles.py; BWD_LOOP below).

On a CUDA GPU both layouts run ``gluon_scan``'s main kernels by default, each program walking all chunks
of its channels, so the summary and chunk-pass kernels run only for the Triton main kernels (MAIN_KERNELS,
GLUON_WALK below), and a mixer's channel-last views are read in place (CHANNEL_LAST_BY_DEFAULT); the
Triton kernels here serve the CPU interpreter and ``FLOWHN_SCAN_KERNELS=triton``.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from flowhn.kernels import _interpreting
from flowhn.kernels import triton_interpreter  # noqa: F401  (patches the CPU interpreter where it runs)
from flowhn.recompute import recomputed_in_backward

LOG2E = tl.constexpr(1.4426950408889634)  # jit code may only read constexpr globals


@triton.jit
def _compose(a_first, x_first, a_then, x_then):
    # Two steps of h -> a h + x, earlier one first. Triton's reverse scan passes the later-in-time
    # partial result first, so the same function composes the reversed recurrence g -> a g + x too.
    return a_first * a_then, x_first * a_then + x_then


@triton.jit
def _delta(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Raw delta (+ bias, broadcast to the tile's shape) and the step size actually used, zero where
    masked (zero step = identity)."""
    pre = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre += bias
    step = pre
    if SOFTPLUS:
        # Same threshold as torch.nn.functional.softplus.
        step = tl.where(pre <= 20.0, tl.log(1.0 + tl.exp(pre)), pre)
    return pre, tl.where(mask, step, 0.0)


@triton.jit
def _offsets(pid_b, offs_d, t, stride_b, stride_d, stride_t):
    """Element offsets of a (channels × steps) tile of a (B, D, L) tensor with any strides."""
    return pid_b * stride_b + offs_d[:, None] * stride_d + t[None, :] * stride_t


@triton.jit
def _tile(ptr, offs, m):
    return tl.load(ptr + offs, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _row(ptr, pid_b, n, t, mask_t, stride_b, stride_n, stride_t):
    """Row n of B or C, (B, N, L) with any strides, over the steps t."""
    return tl.load(ptr + pid_b * stride_b + n * stride_n + t * stride_t, mask=mask_t, other=0.0).to(tl.float32)


@triton.jit
def _chunk_position(L, CHUNK: tl.constexpr):
    """Of a program on grid (batch, ·, chunk): its batch, chunk, and the chunk's steps (offsets in the
    chunk, positions in the sequence, which of them exist)."""
    pid_b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(2)
    offs_t = tl.arange(0, CHUNK)
    t = c * CHUNK + offs_t
    return pid_b, c, offs_t, t, t < L


@triton.jit
def _chunk_steps(delta_ptr, bias_ptr, DIM, L, sdl_b, sdl_d, sdl_t, HAS_BIAS: tl.constexpr,
                 SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """The (channels × steps) tile of a program on grid (batch, channel block, chunk): its indices,
    masks and step sizes."""
    pid_b, c, _, t, mask_t = _chunk_position(L, CHUNK)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    m = mask_d[:, None] & mask_t[None, :]
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None] if HAS_BIAS else None
    _, step = _delta(delta_ptr, _offsets(pid_b, offs_d, t, sdl_b, sdl_d, sdl_t), m, bias, HAS_BIAS, SOFTPLUS)
    return pid_b, offs_d, c, mask_d, t, mask_t, m, step


@triton.jit
def _summary_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, X_ptr, total_ptr,
    DIM, L, N, n_chunks,
    su_b, su_d, su_t, sdl_b, sdl_d, sdl_t, sB_b, sB_n, sB_t,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    """X[b, d, c, n]: state at the end of chunk c from a zero start; total[b, d, c] = Σ Δ over the chunk."""
    pid_b, offs_d, c, mask_d, t, mask_t, m, step = _chunk_steps(
        delta_ptr, bias_ptr, DIM, L, sdl_b, sdl_d, sdl_t, HAS_BIAS, SOFTPLUS, BLOCK_D, CHUNK)
    stepu = step * _tile(u_ptr, _offsets(pid_b, offs_d, t, su_b, su_d, su_t), m)
    after = tl.cumsum(step, axis=1, reverse=True) - step  # Σ_{s>t} Δ_s
    summary_at = ((pid_b * DIM + offs_d) * n_chunks + c) * N
    tl.store(total_ptr + (pid_b * DIM + offs_d) * n_chunks + c, tl.sum(step, axis=1), mask=mask_d)
    for n in range(N):
        A2n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32) * LOG2E
        Bn = _row(B_ptr, pid_b, n, t, mask_t, sB_b, sB_n, sB_t)
        X = tl.sum(tl.exp2(A2n[:, None] * after) * stepu * Bn[None, :], axis=1)
        tl.store(X_ptr + summary_at + n, X, mask=mask_d)


@triton.jit
def _summary_bwd_kernel(
    delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, K_ptr,
    DIM, L, N, n_chunks,
    sdl_b, sdl_d, sdl_t, sC_b, sC_n, sC_t, sz_b, sz_d, sz_t, sdo_b, sdo_d, sdo_t,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    """K[b, d, c, n] = a_first g_first of chunk c with nothing coming from later chunks."""
    pid_b, offs_d, c, mask_d, t, mask_t, m, step = _chunk_steps(
        delta_ptr, bias_ptr, DIM, L, sdl_b, sdl_d, sdl_t, HAS_BIAS, SOFTPLUS, BLOCK_D, CHUNK)
    dy = _tile(dout_ptr, _offsets(pid_b, offs_d, t, sdo_b, sdo_d, sdo_t), m)
    if HAS_Z:
        z = _tile(z_ptr, _offsets(pid_b, offs_d, t, sz_b, sz_d, sz_t), m)
        dy = dy * z * tl.sigmoid(z)
    upto = tl.cumsum(step, axis=1)  # Σ_{s≤t} Δ_s
    summary_at = ((pid_b * DIM + offs_d) * n_chunks + c) * N
    for n in range(N):
        A2n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32) * LOG2E
        Cn = _row(C_ptr, pid_b, n, t, mask_t, sC_b, sC_n, sC_t)
        K = tl.sum(tl.exp2(A2n[:, None] * upto) * dy * Cn[None, :], axis=1)
        tl.store(K_ptr + summary_at + n, K, mask=mask_d)


@triton.jit
def _chunk_pass_kernel(A_ptr, total_ptr, X_ptr, DIM, N, n_chunks, TOTAL, REVERSE: tl.constexpr,
                       BLOCK: tl.constexpr):
    """In place over X (B, D, chunks, N): X[c] += exp(A·total[c]) X[c ∓ 1], chunks in (reverse) order."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < TOTAL
    i = i.to(tl.int64)
    bd, n = i // N, i % N
    A2 = tl.load(A_ptr + (bd % DIM) * N + n, mask=mask, other=0.0).to(tl.float32) * LOG2E
    h = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(n_chunks):
        c = n_chunks - 1 - k if REVERSE else k
        total = tl.load(total_ptr + bd * n_chunks + c, mask=mask, other=0.0)
        at = (bd * n_chunks + c) * N + n
        h = tl.load(X_ptr + at, mask=mask, other=0.0) + tl.exp2(A2 * total) * h
        tl.store(X_ptr + at, h, mask=mask)


@triton.jit
def _states_n(step, stepu, A2n, Bn, h0, first):
    """Decays a, inputs x and states h for state index n over one chunk, each (BLOCK_D, CHUNK)."""
    a = tl.exp2(step * A2n[:, None])
    x = stepu * Bn[None, :]
    _, h = tl.associative_scan((a, tl.where(first, x + a * h0[:, None], x)), 1, _compose)
    return a, x, h


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr,
    DIM, L, N, n_chunks,
    su_b, su_d, su_t, sdl_b, sdl_d, sdl_t, sB_b, sB_n, sB_t, sC_b, sC_n, sC_t, sz_b, sz_d, sz_t,
    so_b, so_d, so_t,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_b, offs_d, c, mask_d, t, mask_t, m, step = _chunk_steps(
        delta_ptr, bias_ptr, DIM, L, sdl_b, sdl_d, sdl_t, HAS_BIAS, SOFTPLUS, BLOCK_D, CHUNK)
    u = _tile(u_ptr, _offsets(pid_b, offs_d, t, su_b, su_d, su_t), m)
    stepu = step * u
    first = (t == c * CHUNK)[None, :]
    entering_at = ((pid_b * DIM + offs_d) * n_chunks + c - 1) * N
    y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
    for n in range(N):
        A2n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32) * LOG2E
        Bn = _row(B_ptr, pid_b, n, t, mask_t, sB_b, sB_n, sB_t)
        Cn = _row(C_ptr, pid_b, n, t, mask_t, sC_b, sC_n, sC_t)
        h0 = tl.load(states_ptr + entering_at + n, mask=mask_d & (c > 0), other=0.0)
        _, _, hs = _states_n(step, stepu, A2n, Bn, h0, first)
        y += hs * Cn[None, :]
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None] * u
    if HAS_Z:
        z = _tile(z_ptr, _offsets(pid_b, offs_d, t, sz_b, sz_d, sz_t), m)
        y *= z * tl.sigmoid(z)
    tl.store(out_ptr + _offsets(pid_b, offs_d, t, so_b, so_d, so_t), y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, later_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    DIM, L, N, n_chunks,
    su_b, su_d, su_t, sdl_b, sdl_d, sdl_t, sB_b, sB_n, sB_t, sC_b, sC_n, sC_t, sz_b, sz_d, sz_t,
    sdo_b, sdo_d, sdo_t, sg_b, sg_d, sg_t, sdB_b, sdB_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, SUB_BLOCKS: tl.constexpr,
):
    """One chunk of SUB_BLOCKS × BLOCK_D channels. dA, dD, dbias are written per (batch, chunk) and
    summed afterwards; dB, dC sum over channels: this program's share is accumulated over its
    sub-blocks in registers, then added with one atomic per (state, step). du, ddelta, dz share one
    layout (strides sg_*); dB, dC are (B, N, ·) fp32 buffers with unit step stride."""
    pid_b, c, offs_t, t, mask_t = _chunk_position(L, CHUNK)
    offs_n = tl.arange(0, BLOCK_N)
    first = (offs_t == 0)[None, :]
    last = (offs_t == CHUNK - 1)[None, :]
    dB_acc = tl.zeros((BLOCK_N, CHUNK), dtype=tl.float32)
    dC_acc = tl.zeros((BLOCK_N, CHUNK), dtype=tl.float32)
    for sub in range(SUB_BLOCKS):
        offs_d = (tl.program_id(1) * SUB_BLOCKS + sub) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < DIM
        m = mask_d[:, None] & mask_t[None, :]
        m_next = mask_d[:, None] & (t + 1 < L)[None, :]
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None] if HAS_BIAS else None
        u = _tile(u_ptr, _offsets(pid_b, offs_d, t, su_b, su_d, su_t), m)
        delta_at = _offsets(pid_b, offs_d, t, sdl_b, sdl_d, sdl_t)
        pre, step = _delta(delta_ptr, delta_at, m, bias, HAS_BIAS, SOFTPLUS)
        _, step_next = _delta(delta_ptr, delta_at + sdl_t, m_next, bias, HAS_BIAS, SOFTPLUS)
        stepu = step * u
        dy = _tile(dout_ptr, _offsets(pid_b, offs_d, t, sdo_b, sdo_d, sdo_t), m)
        if HAS_Z:
            z = _tile(z_ptr, _offsets(pid_b, offs_d, t, sz_b, sz_d, sz_t), m)
            sig = tl.sigmoid(z)
            dout = dy
            dy = dout * z * sig
        chunk_at = ((pid_b * DIM + offs_d) * n_chunks + c) * N
        y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        gB = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        dstep = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        for n in range(N):
            An = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32)
            A2n = An * LOG2E
            Bn = _row(B_ptr, pid_b, n, t, mask_t, sB_b, sB_n, sB_t)
            Cn = _row(C_ptr, pid_b, n, t, mask_t, sC_b, sC_n, sC_t)
            h0 = tl.load(states_ptr + chunk_at - N + n, mask=mask_d & (c > 0), other=0.0)
            a, x, hs = _states_n(step, stepu, A2n, Bn, h0, first)
            if HAS_Z:
                y += hs * Cn[None, :]
            # What dL/dh at this chunk's last step gets from later chunks: a_s g_s, s = next chunk's first step.
            carry = tl.load(later_ptr + chunk_at + N + n, mask=mask_d & (c + 1 < n_chunks), other=0.0)
            gy = dy * Cn[None, :]
            gy = tl.where(last, gy + carry[:, None], gy)
            _, g = tl.associative_scan((tl.exp2(step_next * A2n[:, None]), gy), 1, _compose, reverse=True)
            # a_t h_{t-1} = h_t - x_t, so g (h - x) = dL/da_t * a_t without keeping h_{t-1}.
            ga = g * (hs - x)
            tl.store(dA_ptr + chunk_at + n, tl.sum(ga * step, axis=1), mask=mask_d)
            gB += g * Bn[None, :]
            dstep += ga * An[:, None]
            this_n = (offs_n == n)[:, None]
            dB_acc += tl.where(this_n, tl.sum(g * stepu, axis=0)[None, :], 0.0)
            dC_acc += tl.where(this_n, tl.sum(hs * dy, axis=0)[None, :], 0.0)

        du = step * gB
        partial_at = (pid_b * DIM + offs_d) * n_chunks + c
        if HAS_D:
            skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            tl.store(dD_ptr + partial_at, tl.sum(dy * u, axis=1), mask=mask_d)
            du += dy * skip[:, None]
            y += skip[:, None] * u
        grad_at = _offsets(pid_b, offs_d, t, sg_b, sg_d, sg_t)
        if HAS_Z:
            dz = dout * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + grad_at, dz.to(dz_ptr.dtype.element_ty), mask=m)
        dstep += u * gB
        if SOFTPLUS:
            dstep = tl.where(pre <= 20.0, dstep * tl.sigmoid(pre), dstep)
        dstep = tl.where(m, dstep, 0.0)
        if HAS_BIAS:
            tl.store(dbias_ptr + partial_at, tl.sum(dstep, axis=1), mask=mask_d)
        tl.store(du_ptr + grad_at, du.to(du_ptr.dtype.element_ty), mask=m)
        tl.store(ddelta_ptr + grad_at, dstep.to(ddelta_ptr.dtype.element_ty), mask=m)

    bc_at = pid_b * sdB_b + offs_n[:, None] * sdB_n + t[None, :]
    m_bc = (offs_n < N)[:, None] & mask_t[None, :]
    tl.atomic_add(dB_ptr + bc_at, dB_acc, mask=m_bc, sem="relaxed")
    tl.atomic_add(dC_ptr + bc_at, dC_acc, mask=m_bc, sem="relaxed")


@triton.jit
def _scan_bwd_channels_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, later_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    DIM, L, N, n_chunks,
    su_b, su_d, su_t, sdl_b, sdl_d, sdl_t, sB_b, sB_n, sB_t, sC_b, sC_n, sC_t, sz_b, sz_d, sz_t,
    sdo_b, sdo_d, sdo_t, sg_b, sg_d, sg_t, sdB_b, sdB_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CHANNELS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The same backward as ``_scan_bwd_kernel`` with the loops the other way round: a program walks
    CHANNELS channels one at a time, and its tile is (states × steps), so a channel's N recurrences
    run as one scan. What ``_scan_bwd_kernel`` pays per (channel block, state) goes: B and C are
    loaded once per program (every channel shares them), dB and dC accumulate elementwise (no sum
    over channels inside the loop, no one-hot rows), and A, the entering state, the carry and dA are
    each one contiguous N-vector per channel. The sums over states (y, dL/du, dL/dΔ) are per channel."""
    pid_b, c, offs_t, t, mask_t = _chunk_position(L, CHUNK)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    m_nt = mask_n[:, None] & mask_t[None, :]
    first = (offs_t == 0)[None, :]
    B = _tile(B_ptr, pid_b * sB_b + offs_n[:, None] * sB_n + t[None, :] * sB_t, m_nt)
    C = _tile(C_ptr, pid_b * sC_b + offs_n[:, None] * sC_n + t[None, :] * sC_t, m_nt)
    # The adjoint runs backwards in time; Triton's reverse scan costs about 10x the lane shuffles of
    # a forward one (scripts/kernel_stats.py), so it runs as a forward scan in reversed time order
    # (suffix _r): B and C are flipped once per program, a channel's rows cost a flip of 64 values,
    # and the one (states × steps) flip a channel needs is that of h - x.
    B_r = tl.flip(B, 1)
    C_r = tl.flip(C, 1)
    dB_acc_r = tl.zeros((BLOCK_N, CHUNK), dtype=tl.float32)
    dC_acc = tl.zeros((BLOCK_N, CHUNK), dtype=tl.float32)
    for i in range(CHANNELS):
        d = tl.program_id(1) * CHANNELS + i
        valid = d < DIM
        m = mask_t & valid
        m_next = (t + 1 < L) & valid
        bias = tl.load(bias_ptr + d, mask=valid, other=0.0).to(tl.float32) if HAS_BIAS else None
        u = _tile(u_ptr, pid_b * su_b + d * su_d + t * su_t, m)
        delta_at = pid_b * sdl_b + d * sdl_d + t * sdl_t
        pre, step = _delta(delta_ptr, delta_at, m, bias, HAS_BIAS, SOFTPLUS)
        _, step_next = _delta(delta_ptr, delta_at + sdl_t, m_next, bias, HAS_BIAS, SOFTPLUS)
        stepu = step * u
        dy = _tile(dout_ptr, pid_b * sdo_b + d * sdo_d + t * sdo_t, m)
        if HAS_Z:
            z = _tile(z_ptr, pid_b * sz_b + d * sz_d + t * sz_t, m)
            sig = tl.sigmoid(z)
            dout = dy
            dy = dout * z * sig
        An = tl.load(A_ptr + d * N + offs_n, mask=mask_n & valid, other=0.0).to(tl.float32)
        A2 = An * LOG2E
        chunk_at = ((pid_b * DIM + d) * n_chunks + c) * N
        h0 = tl.load(states_ptr + chunk_at - N + offs_n, mask=mask_n & valid & (c > 0), other=0.0)
        carry = tl.load(later_ptr + chunk_at + N + offs_n, mask=mask_n & valid & (c + 1 < n_chunks), other=0.0)
        a = tl.exp2(A2[:, None] * step[None, :])
        x = stepu[None, :] * B
        _, hs = tl.associative_scan((a, tl.where(first, x + a * h0[:, None], x)), 1, _compose)
        dC_acc += hs * dy[None, :]
        # g_t = C_t dy_t + a_{t+1} g_{t+1}; the chunk's last step (first in reversed order) also gets
        # a_s g_s from the next chunk.
        gy_r = tl.flip(dy, 0)[None, :] * C_r
        gy_r = tl.where(first, gy_r + carry[:, None], gy_r)
        a_next_r = tl.exp2(A2[:, None] * tl.flip(step_next, 0)[None, :])
        _, g_r = tl.associative_scan((a_next_r, gy_r), 1, _compose)
        ga_r = g_r * tl.flip(hs - x, 1)  # dL/da_t * a_t = g_t a_t h_{t-1}
        tl.store(dA_ptr + chunk_at + offs_n, tl.sum(ga_r * tl.flip(step, 0)[None, :], axis=1), mask=mask_n & valid)
        dB_acc_r += g_r * tl.flip(stepu, 0)[None, :]
        gB = tl.flip(tl.sum(g_r * B_r, axis=0), 0)
        dstep = tl.flip(tl.sum(ga_r * An[:, None], axis=0), 0) + u * gB
        du = step * gB
        partial_at = (pid_b * DIM + d) * n_chunks + c
        grad_at = pid_b * sg_b + d * sg_d + t * sg_t
        if HAS_D:
            skip = tl.load(D_ptr + d, mask=valid, other=0.0).to(tl.float32)
            tl.store(dD_ptr + partial_at, tl.sum(dy * u, axis=0), mask=valid)
            du += dy * skip
        if HAS_Z:
            y = tl.sum(hs * C, axis=0)
            if HAS_D:
                y += skip * u
            dz = dout * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + grad_at, dz.to(dz_ptr.dtype.element_ty), mask=m)
        if SOFTPLUS:
            dstep = tl.where(pre <= 20.0, dstep * tl.sigmoid(pre), dstep)
        dstep = tl.where(m, dstep, 0.0)
        if HAS_BIAS:
            tl.store(dbias_ptr + partial_at, tl.sum(dstep, axis=0), mask=valid)
        tl.store(du_ptr + grad_at, du.to(du_ptr.dtype.element_ty), mask=m)
        tl.store(ddelta_ptr + grad_at, dstep.to(ddelta_ptr.dtype.element_ty), mask=m)
    bc_at = pid_b * sdB_b + offs_n[:, None] * sdB_n + t[None, :]
    # Relaxed: the sums need no ordering (the next kernel reads them), and Triton's default (acq_rel)
    # puts a MEMBAR.GPU before each of the 64 atomics a thread issues here and waits for their results.
    tl.atomic_add(dB_ptr + bc_at, tl.flip(dB_acc_r, 1), mask=m_nt, sem="relaxed")
    tl.atomic_add(dC_ptr + bc_at, dC_acc, mask=m_nt, sem="relaxed")


# The backward kernel and its tile. It needs more registers per element than the forward, so it may
# use other channel blocks and warps (the chunk must be the forward's: the saved states are per chunk).
# BWD_LOOP: "channels" runs _scan_bwd_channels_kernel, "states" _scan_bwd_kernel. On an H200 (bf16,
# scripts/gpu_scan_tiles.py, experiments/bench/H200.md) channels with 64 channels and 1 warp a program
# took the backward at 16×4096×1024×16 from 5.76 to 5.21 ms (at D = 369: 2.69 to 2.59 ms); 2 or 4 warps
# ran 2-5x slower.
# states: BWD_SUB_BLOCKS channel blocks each program walks, so that fewer programs add into dB/dC
# atomically; BWD_BLOCK_D / BWD_NUM_WARPS: None takes the forward's.
# channels: BWD_CHANNELS channels a program, BWD_CHANNEL_WARPS warps.
BWD_LOOP = "channels"
BWD_SUB_BLOCKS = 8
BWD_BLOCK_D: int | None = None
BWD_NUM_WARPS: int | None = None
BWD_CHANNELS = 64
BWD_CHANNEL_WARPS = 1


# MAIN_KERNELS: "gluon" runs the forward's and the backward's main kernels from ``gluon_scan`` (a thread
# per channel walking the steps; on a CUDA GPU only: Gluon has no CPU interpreter), "triton" the ones
# above (the CPU interpreter's); the environment variable
# FLOWHN_SCAN_KERNELS sets it for a process. On an H200 (bf16, experiments/bench/H200.md): alone, at
# 16×4096×1024×16, fwd+bwd 6.514 -> 5.337 ms (-18 %), at 16×4096×369×16 3.385 -> 3.518 (+4 %), sixth
# session; in the 1B bench, seventh session, same GPU, mamba 35,447 -> 38,176 tok/s (+7.7 %) and
# flowhn/fac_split 89,584 -> 90,434 (+0.9 %; its scan 36.7 -> 34.2 ms a step): "gluon" is the default.
# GLUON_*: warps a program (the backward's 2 were the fastest of 1, 2, 4 before the ninth session's re-layout;
# FLOWHN_SCAN_BWD_WARPS sets it for a process), lanes a channel (its states
# split among them: 32 // lanes channels a warp; FLOWHN_SCAN_LANES sets it for a process; 4 lanes, 168
# registers instead of 254, ran 16×4096×1024×16 in 5.16 ms against 2 lanes' 4.50 and mamba 1B at 38,869
# against 40,969 tok/s, eighth session), and the backward's sub-chunk.
MAIN_KERNELS = os.environ.get("FLOWHN_SCAN_KERNELS", "gluon")
GLUON_FWD_WARPS = 4
GLUON_BWD_WARPS = int(os.environ.get("FLOWHN_SCAN_BWD_WARPS", "2"))
GLUON_LANES_PER_CHANNEL = int(os.environ.get("FLOWHN_SCAN_LANES", "2"))
# The backward's own lanes a channel (None: GLUON_LANES_PER_CHANNEL's). The forward's saved states do not
# depend on either kernel's tile, so the two may differ. FLOWHN_SCAN_BWD_LANES sets it for a process.
# Fifteenth session, call C: 4 lanes (168 registers, 12 warps an SM, so 1.94 waves of 132 SMs at the Mamba
# 135M layer instead of 2 lanes' 1.45) ran that layer's fwd+bwd in 1.839 ms against 1.651, and mamba 135M
# at 225,793 tok/s against 240,694 (same time, two GPUs): the half-empty second wave is not what costs.
GLUON_BWD_LANES = int(os.environ["FLOWHN_SCAN_BWD_LANES"]) if os.environ.get("FLOWHN_SCAN_BWD_LANES") else None
GLUON_SUB = int(os.environ.get("FLOWHN_SCAN_SUB", "8"))
# GLUON_WALK: how the Gluon kernels cover the chunks. "chunks": a program a chunk, fed by the summary
# and chunk-pass kernels (the entering states; the backward's adjoints from later chunks). "sequence":
# a program walks all of its channels' chunks in turn, carrying the state (forward) or the adjoint
# (backward) from one chunk to the next, so neither direction runs its summary and pass kernels (at
# 16×4096×1024 they take ~0.9 of the scan's ~5.3 ms), at the price of n_chunks times fewer programs.
# "forward" / "backward": only that direction walks the sequence. FLOWHN_SCAN_WALK sets it for a process.
# On an H200 (seventh session, experiments/bench/H200.md; bf16, fwd+bwd, same process): "sequence" took
# 16×4096×1024×16 from 5.338 to 4.493 ms (forward 1.081 -> 0.652) and 16×4096×369×16 from 3.524 to
# 3.157, and in the 1B bench (same GPU, separate processes) no_split 60,300 -> 62,904 and mamba
# 38,447 -> 41,535 tok/s: it is the default.
# Either direction's walk works with the other's: the sequence forward writes the chunk-end states and
# step totals that the summary and chunk-pass kernels would have. GLUON_SEQUENCE_FWD_MAXNREG: the
# walking forward's register cap (unbounded, ptxas gives it ~205 registers, so 2 programs an SM; at 128 it
# spills 36 bytes row-major, 48-120 channel-last); FLOWHN_SCAN_FWD_MAXNREG sets it for a process (0: none).
GLUON_WALK = os.environ.get("FLOWHN_SCAN_WALK", "sequence")
# GLUON_DB_DC: how the Gluon backward's per-step sums over its channels reach dB and dC. "atomics": added
# into them with relaxed atomics, once a sub-chunk, each atomic instruction over runs of a state's
# consecutive steps. "partials": stored, a (B, channel blocks, L, 2N) fp32 buffer, then summed over the
# blocks (268 MB at 16×4096×1024×16). On an H200, bf16 fwd+bwd (gpu_scan_tiles.py): eighth session, with
# an atomic a state and step, partials were faster at that shape (4.498 -> 4.246 ms) and slower at
# 16×4096×369×16 (3.145 -> 3.386); ninth session, with the atomics once a sub-chunk, partials are slower
# at both (3.426 -> 3.498, 2.970 -> 3.127), so not the default. FLOWHN_SCAN_DB_DC sets it for a process.
GLUON_DB_DC = os.environ.get("FLOWHN_SCAN_DB_DC", "atomics")
GLUON_SEQUENCE_FWD_MAXNREG = int(os.environ.get("FLOWHN_SCAN_FWD_MAXNREG", "128"))
# GLUON_CL_VECTOR: (forward, backward) channels a thread loads and stores at once from channel-last memory
# (gluon_scan.channel_last_layout); None picks by length (cl_vector). On an H200 (fourteenth session, call C,
# scripts/gpu_mamba1.py --scan, bf16 fwd+bwd ms; (2, 1) was the first default, chosen by spills alone):
#   (fwd, bwd)            (2, 1)  (4, 1)  (8, 1)  (8, 2)  (8, 4)  (2, 2)
#   16×1536×1024×16       1.856   1.813   1.788   2.000   1.872   2.053
#   16×4096×1024×16       4.162   4.098   4.056   4.166   4.175   4.278
#   16×4096×369×16        2.114   2.095   2.075   1.847   1.711   1.890
# 8 forward everywhere; the backward's best is 1 at 1024 steps and 4 at 369 (FAC's SSM branch), so short
# sequences (under CL_SHORT steps; between the two lengths, not measured in between) take 4. Spills on sm_90
# (scripts/kernel_stats.py --gluon): forward 44 bytes at 8, backward 52 at 1 and 100 at 4.
# Fifteenth session: backward 0, the row-major tiles' layout (gluon_scan.tile_layout): no layout changes
# before its stores, 11 barriers instead of 23, and the epilogue reading dz's gate factor and softplus's
# slope from shared memory (calls A, C; bf16 fwd+bwd ms, same process):
#   (fwd, bwd)            (8, 0)  (8, 1)  (8, 4)
#   16×1536×1024×16       1.646   1.697   1.761     (c02855a's default (8, 1): 1.785, other GPU, same call)
#   16×4096×1024×16       3.766   3.843   3.944     (4.036)
#   16×4096×369×16        2.177   1.895   1.737     (c02855a (8, 4): 1.700)
# so 0 from CL_SHORT steps, 4 under. mamba 135M 223,129 -> 238,630 tok/s, same time, two GPUs (call B).
# FLOWHN_SCAN_CL_VECTOR="fwd,bwd" sets one pair for every length in a process.
GLUON_CL_VECTOR = (tuple(int(v) for v in os.environ["FLOWHN_SCAN_CL_VECTOR"].split(","))
                   if os.environ.get("FLOWHN_SCAN_CL_VECTOR") else None)
CL_SHORT = 512


def bwd_lanes() -> int:
    """Lanes a channel in the Gluon backward."""
    return GLUON_BWD_LANES or GLUON_LANES_PER_CHANNEL


def cl_vector(length: int) -> tuple[int, int]:
    """(forward, backward) channels a thread for the channel-last Gluon kernels at ``length`` steps."""
    return GLUON_CL_VECTOR or ((8, 4) if length < CL_SHORT else (8, 0))


def _state_block(state: int) -> int:
    """The kernels' block over the states (BLOCK_N): N rounded up to a power of two, at least 2."""
    return max(triton.next_power_of_2(state), 2)


def _use_gluon(u: torch.Tensor, block_n: int) -> bool:
    if MAIN_KERNELS not in ("triton", "gluon"):
        raise ValueError(f"triton_scan.MAIN_KERNELS must be 'triton' or 'gluon', got {MAIN_KERNELS!r}")
    if GLUON_DB_DC not in ("atomics", "partials"):
        raise ValueError("triton_scan.GLUON_DB_DC (FLOWHN_SCAN_DB_DC) must be 'atomics' or 'partials', got "
                         f"{GLUON_DB_DC!r}")
    for name, lanes in (("GLUON_LANES_PER_CHANNEL (FLOWHN_SCAN_LANES)", GLUON_LANES_PER_CHANNEL),
                        ("GLUON_BWD_LANES (FLOWHN_SCAN_BWD_LANES)", bwd_lanes())):
        if lanes not in (1, 2, 4, 8):
            raise ValueError(f"triton_scan.{name} must be 1, 2, 4 or 8, got {lanes!r}")
    return MAIN_KERNELS == "gluon" and u.is_cuda and block_n <= 32 and not _interpreting()


def _gluon_walks_sequence(direction: str) -> bool:
    """Whether the Gluon kernel of ``direction`` ("forward" or "backward") walks every chunk (GLUON_WALK)."""
    if GLUON_WALK not in ("chunks", "sequence", "forward", "backward"):
        raise ValueError("triton_scan.GLUON_WALK (FLOWHN_SCAN_WALK) must be 'chunks', 'sequence', 'forward' or "
                         f"'backward', got {GLUON_WALK!r}")
    return GLUON_WALK in ("sequence", direction)


def launch_config(length: int, block_d: int | None = None, chunk: int | None = None,
                  num_warps: int | None = None, channel_last: bool = False):
    """(channels, steps) per program tile, and warps per program. Row-major (B, D, L): from a sweep on
    an H100. Channel-last: 16 channels (32 bytes in bf16, one memory sector per step), pending the
    sweep in scripts/gpu_mamba1.py."""
    chunk = chunk or min(64, max(triton.next_power_of_2(length), 2))
    return block_d or (16 if channel_last else 8), chunk, num_warps or 1


def _decay_rates(A: torch.Tensor, a_is_log: bool) -> torch.Tensor:
    """A (D, N) as the kernels other than the Gluon main ones read it: -exp(A) where A holds Mamba's A_log."""
    return -torch.exp(A) if a_is_log else A


def _chunk_pass(A, totals, summaries, reverse):
    total = summaries.numel() // summaries.shape[2]  # one sequential walk per (batch, channel, state)
    block = 256
    _chunk_pass_kernel[(triton.cdiv(total, block),)](
        A, totals, summaries, A.shape[0], A.shape[1], summaries.shape[2], total, REVERSE=reverse, BLOCK=block)


# The scan is two torch.library custom ops (forward, backward) joined by register_autograd, so that
# torch.compile sees one opaque call with known output shapes instead of breaking its graph at the
# Triton launches. The kernels take every (B, D, L) and (B, N, L) tensor with its own strides, so two
# layouts run without copies:
# * channel-last (``channel_last=True``): u, delta, z are transposed views of (B, L, D) memory, such
#   as a mixer's in_proj / conv / dt_proj outputs (u and z may be the halves of one (B, L, 2D) tensor),
#   and B, C views of x_proj's output; the output and du, ddelta, dz are (B, L, D) memory, so the
#   mixer's out_proj reads the result in place;
# * row-major (B, D, pitch) buffers whose first ``length`` columns hold the data: the wrapper pads with
#   F.pad, whose autograd cuts the gradients back, so the backward reuses the padded buffers the
#   forward saved instead of copying again.
# ``channel_last`` is an argument rather than read off the strides so the fake (meta) outputs have the
# real outputs' strides whatever layout the compiler gives the inputs.
_Tensor = torch.Tensor
_MaybeTensor = Optional[torch.Tensor]


def _n_chunks(length, chunk):
    return (length + chunk - 1) // chunk


def _new_activation(like: torch.Tensor, channel_last: bool, dtype=None) -> torch.Tensor:
    """An uninitialised (B, D, L') tensor shaped like ``like``: (B, L', D) memory seen transposed, or contiguous."""
    batch, dim, length = like.shape
    dtype = dtype or like.dtype
    if channel_last:
        return like.new_empty(batch, length, dim, dtype=dtype).transpose(1, 2)
    return like.new_empty(batch, dim, length, dtype=dtype)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _fwd_block(chunk: int) -> int:
    """Steps the Gluon forward walks between its stores (its UNROLL); with keep_states, a state is kept after each."""
    return min(8, chunk)


def _bwd_sub(chunk: int) -> int:
    """The Gluon backward's sub-chunk (its SUB), GLUON_SUB steps at most."""
    return min(GLUON_SUB, chunk)


def _kept_states_shape(u: _Tensor, A: _Tensor, length: int, chunk: int, keep: bool) -> tuple[int, ...]:
    """The shape of the states the forward keeps for the backward (``keep_states``): (B, D, chunks · subs, N),
    a state after every SUB steps; (0,) where nothing is kept: not asked, or not the Gluon kernels (the only
    ones that read them), or a backward sub-chunk other than the forward's block of steps."""
    sub = _bwd_sub(chunk)
    if not (keep and _use_gluon(u, _state_block(A.shape[1])) and sub == _fwd_block(chunk)):
        return (0,)
    return (u.shape[0], u.shape[1], _n_chunks(length, chunk) * (chunk // sub), A.shape[1])


@torch.library.custom_op("flowhn::selective_scan_fwd", mutates_args=())
def _scan_fwd(u: _Tensor, delta: _Tensor, A: _Tensor, B: _Tensor, C: _Tensor, D: _MaybeTensor, z: _MaybeTensor,
              delta_bias: _MaybeTensor, length: int, softplus: bool, block_d: int, chunk: int, num_warps: int,
              channel_last: bool, keep: bool, a_is_log: bool) -> tuple[_Tensor, _Tensor, _Tensor, _Tensor]:
    """(out (B, D, L') in u's dtype and the ``channel_last`` layout, chunk-end states (B, D, chunks, N) fp32,
    chunk step totals (B, D, chunks) fp32, the states kept after every sub-chunk in u's dtype
    (``_kept_states_shape``; empty unless ``keep``)). ``a_is_log``: A holds log(-A) (``selective_scan_triton``)."""
    batch, dim, _ = u.shape
    kept = u.new_empty(_kept_states_shape(u, A, length, chunk, keep))
    A = A.contiguous()
    D, delta_bias = (None if t is None else t.contiguous() for t in (D, delta_bias))
    state, n_chunks = A.shape[1], _n_chunks(length, chunk)
    f32 = dict(device=u.device, dtype=torch.float32)
    states = torch.empty(batch, dim, n_chunks, state, **f32)
    totals = torch.empty(batch, dim, n_chunks, **f32)
    grid = (batch, triton.cdiv(dim, block_d), n_chunks)
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, BLOCK_D=block_d, CHUNK=chunk,
                 num_warps=num_warps)
    sizes = (dim, length, state, n_chunks)
    block_n = _state_block(state)
    gluon = _use_gluon(u, block_n)
    sequence = gluon and _gluon_walks_sequence("forward")
    if not sequence:  # the states entering each chunk, for the programs that start there
        plain_A = _decay_rates(A, a_is_log)
        _summary_fwd_kernel[grid](u, delta, plain_A, B, _or(delta_bias, u), states, totals, *sizes,
                                  *_strides(u), *_strides(delta), *_strides(B), **flags)
        _chunk_pass(plain_A, totals, states, reverse=False)
    if gluon and channel_last:
        u, delta = (_dense_channel_last(t) for t in (u, delta))
    out = _new_activation(u, channel_last)
    if gluon:
        from flowhn.kernels import gluon_scan

        _same_layout(u, delta, out)
        _same_layout(B, C)
        cap = dict(maxnreg=GLUON_SEQUENCE_FWD_MAXNREG) if sequence and GLUON_SEQUENCE_FWD_MAXNREG else {}
        gluon_scan._scan_fwd_seq_kernel[(batch, triton.cdiv(dim, 32 // GLUON_LANES_PER_CHANNEL * GLUON_FWD_WARPS),
                                         1 if sequence else n_chunks)](
            u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), out, states, totals, _or_empty(kept, u),
            *sizes, *_strides(u), *_strides(_or(z, u)), *_strides(B), HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, CHUNK=chunk, BLOCK_N=block_n,
            LPC=GLUON_LANES_PER_CHANNEL, UNROLL=_fwd_block(chunk), SEQUENCE=sequence, CHANNEL_LAST=channel_last,
            CL_VECTOR=cl_vector(length)[0], KEEP=kept.numel() > 0, A_IS_LOG=a_is_log, num_warps=GLUON_FWD_WARPS,
            **cap)
        return _zero_padding(out, length), states, totals, kept
    zs = _strides(z) if z is not None else (0, 0, 0)
    _scan_fwd_kernel[grid](
        u, delta, plain_A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), out, states, *sizes,
        *_strides(u), *_strides(delta), *_strides(B), *_strides(C), *zs, *_strides(out),
        HAS_D=D is not None, HAS_Z=z is not None, **flags)
    return _zero_padding(out, length), states, totals, kept


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, length, softplus, block_d, chunk, num_warps, channel_last, keep, a_is_log):
    batch, dim, _ = u.shape
    n_chunks = _n_chunks(length, chunk)
    return (_new_activation(u, channel_last),
            u.new_empty(batch, dim, n_chunks, A.shape[1], dtype=torch.float32),
            u.new_empty(batch, dim, n_chunks, dtype=torch.float32),
            u.new_empty(_kept_states_shape(u, A, length, chunk, keep)))


@torch.library.custom_op("flowhn::selective_scan_bwd", mutates_args=())
def _scan_bwd(dout: _Tensor, u: _Tensor, delta: _Tensor, A: _Tensor, B: _Tensor, C: _Tensor, D: _MaybeTensor,
              z: _MaybeTensor, delta_bias: _MaybeTensor, states: _Tensor, totals: _Tensor, kept: _Tensor, length: int,
              softplus: bool, block_d: int, chunk: int, num_warps: int, channel_last: bool,
              a_is_log: bool) -> list[_Tensor]:
    """[du, ddelta, dz (the ``channel_last`` layout; dz empty without z), dB, dC (contiguous, fp32)], then dA's,
    dD's and dbias's fp32 partial sums (``_grad_part_shapes``; dD's and dbias's empty without D and delta_bias),
    summed and cast by the caller (``_backward``, traced, so that inductor writes those sums and casts in kernels
    of its own choosing, or into the kernels that read them, rather than the op running five eager ones a layer).
    ``kept``: the forward's, read by the Gluon kernel. ``a_is_log``: A holds log(-A), and dA's partial sums are
    the gradient with respect to it."""
    batch, dim, _ = u.shape
    A = A.contiguous()
    D, delta_bias = (None if t is None else t.contiguous() for t in (D, delta_bias))
    state, n_chunks = A.shape[1], states.shape[2]
    f32 = dict(device=u.device, dtype=torch.float32)
    grid = (batch, triton.cdiv(dim, block_d), n_chunks)
    flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
                 BLOCK_D=block_d, CHUNK=chunk, num_warps=num_warps)
    sizes = (dim, length, state, n_chunks)
    zs = _strides(z) if z is not None else (0, 0, 0)
    block_n = _state_block(state)
    gluon = _use_gluon(u, block_n)
    sequence = gluon and _gluon_walks_sequence("backward")
    # Where A holds A_log, the Gluon main kernel forms A = -exp(A_log) itself and writes dA_log; the summary,
    # chunk-pass and Triton main kernels read A formed (plain_A) and write dA.
    plain_A = None if sequence else _decay_rates(A, a_is_log)
    main_A = A if gluon else plain_A
    if sequence:  # the adjoint is carried from chunk to chunk inside the kernel
        later = states  # not read
    else:  # what each chunk's end receives from the chunks after it
        later = torch.empty_like(states)
        _summary_bwd_kernel[grid](delta, plain_A, C, _or(z, u), _or(delta_bias, u), dout, later, *sizes,
                                  *_strides(delta), *_strides(C), *zs, *_strides(dout), **flags)
        _chunk_pass(plain_A, totals, later, reverse=True)
    if gluon and channel_last:
        u, delta, dout = (_dense_channel_last(t) for t in (u, delta, dout))
    du = _new_activation(u, channel_last)
    ddelta = _new_activation(delta, channel_last)
    dz = _new_activation(z, channel_last) if z is not None else u.new_empty(0)
    # Partial sums of dA, dD, dbias per (batch, chunk), or per batch when a program walks every chunk;
    # dB, dC are accumulated by atomics.
    dA_shape, dD_shape, dbias_shape = _grad_part_shapes(u, A, D, delta_bias, n_chunks)
    dA = states.new_empty(dA_shape)
    dD = totals.new_empty(dD_shape) if D is not None else None
    dbias = totals.new_empty(dbias_shape) if delta_bias is not None else None
    partials = gluon and GLUON_DB_DC == "partials"
    # The Gluon backward's channel blocks (its grid's second axis).
    gluon_blocks = triton.cdiv(dim, 32 // bwd_lanes() * GLUON_BWD_WARPS)
    if partials:  # the per-program sums, added up below
        dB = torch.empty(batch, gluon_blocks, length, 2 * block_n, **f32)
        dC = dB
    else:
        dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
    if gluon and not channel_last:
        dout = dout if dout.stride() == u.stride() else dout.contiguous()
    pointers = (u, delta, main_A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), dout, states, later,
                du, ddelta, _or(dz, du), dA, dB, dC, _or(dD, dA), _or(dbias, dA))
    args = (*pointers, *sizes,
            *_strides(u), *_strides(delta), *_strides(B), *_strides(C), *zs, *_strides(dout), *_strides(du),
            dB.stride(0), dB.stride(1))
    if gluon:
        from flowhn.kernels import gluon_scan

        _same_layout(u, delta, dout, du, ddelta, dz if z is not None else None)
        _same_layout(B, C)
        gluon_scan._scan_bwd_seq_kernel[(batch, gluon_blocks, 1 if sequence else n_chunks)](
            *pointers[:11], _or_empty(kept, u), *pointers[11:], *sizes, *_strides(u), *_strides(_or(z, u)),
            *_strides(B), dB.stride(0), dB.stride(1), HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, CHUNK=chunk, SUB=_bwd_sub(chunk),
            BLOCK_N=block_n, LPC=bwd_lanes(), SEQUENCE=sequence, PARTIALS=partials, CHANNEL_LAST=channel_last,
            CL_VECTOR=cl_vector(length)[1], KEEP=kept.numel() > 0, A_IS_LOG=a_is_log, num_warps=GLUON_BWD_WARPS)
        if partials:  # (B, L, 2·BLOCK_N) -> dB, dC as (B, N, pitch), like B and C
            sums = dB.sum(1).transpose(1, 2)
            dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
            dB[..., :length], dC[..., :length] = sums[:, :state], sums[:, block_n:block_n + state]
    elif BWD_LOOP == "channels":
        grid = (batch, triton.cdiv(dim, BWD_CHANNELS), n_chunks)
        _scan_bwd_channels_kernel[grid](
            *args, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            CHANNELS=BWD_CHANNELS, CHUNK=chunk, BLOCK_N=block_n, num_warps=BWD_CHANNEL_WARPS)
    elif BWD_LOOP == "states":
        flags.update(BLOCK_D=BWD_BLOCK_D or block_d, num_warps=BWD_NUM_WARPS or num_warps)
        grid = (batch, triton.cdiv(dim, flags["BLOCK_D"] * BWD_SUB_BLOCKS), n_chunks)
        _scan_bwd_kernel[grid](*args, HAS_D=D is not None, BLOCK_N=block_n, SUB_BLOCKS=BWD_SUB_BLOCKS, **flags)
    else:
        raise ValueError(f"triton_scan.BWD_LOOP must be 'states' or 'channels', got {BWD_LOOP!r}")
    du, ddelta, dz = (_zero_padding(t, length) for t in (du, ddelta, dz))
    if a_is_log and not gluon:  # dL/dA_log = dL/dA · A, with A = -exp(A_log)
        dA *= plain_A[:, None]
    empty = lambda: u.new_empty(0, dtype=torch.float32)  # noqa: E731  (one each: an op's outputs may not alias)
    return [du, ddelta, dz, dB, dC, dA, empty() if dD is None else dD, empty() if dbias is None else dbias]


@_scan_bwd.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, states, totals, kept, length, softplus, block_d, chunk, num_warps,
      channel_last, a_is_log):
    f32 = dict(dtype=torch.float32)
    dA_shape, dD_shape, dbias_shape = _grad_part_shapes(u, A, D, delta_bias, states.shape[2])
    return [_new_activation(u, channel_last), _new_activation(delta, channel_last),
            u.new_empty(0) if z is None else _new_activation(z, channel_last), B.new_empty(B.shape, **f32),
            C.new_empty(C.shape, **f32), u.new_empty(dA_shape, **f32), u.new_empty(dD_shape, **f32),
            u.new_empty(dbias_shape, **f32)]


def _grad_part_shapes(u, A, D, delta_bias, n_chunks: int) -> tuple[tuple[int, ...], ...]:
    """The backward's partial sums of dA (B, D, parts, N), dD and dbias (B, D, parts) ((0,) without D or
    delta_bias): parts is 1 where the Gluon backward walks every chunk in one program, else the chunks."""
    batch, dim, _ = u.shape
    parts = 1 if _use_gluon(u, _state_block(A.shape[1])) and _gluon_walks_sequence("backward") else n_chunks
    return ((batch, dim, parts, A.shape[1]), (batch, dim, parts) if D is not None else (0,),
            (batch, dim, parts) if delta_bias is not None else (0,))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, length, softplus, block_d, chunk, num_warps, channel_last, _, a_is_log = inputs
    _, states, totals, kept = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, totals, kept)
    ctx.options = (length, softplus, block_d, chunk, num_warps, channel_last, a_is_log)


def _backward(ctx, dout, _dstates, _dtotals, _dkept):
    u, delta, A, B, C, D, z, delta_bias, states, totals, kept = ctx.saved_tensors
    # The kernels want dout laid out as u. Here, not inside the op: this line is traced into the compiled
    # backward, where inductor writes any layout change with a tiled kernel (none when dout, out_proj's
    # (B, L, D) gradient seen transposed, already is channel-last). Inside the op it was an eager strided
    # copy, ATen's elementwise_kernel: about 0.45 ms a layer at Mamba 1B (tenth session: the trace's copies
    # fell from 31.1 to 14.95 ms a step when the row-major transpose moved here).
    dout = _dense_channel_last(dout) if ctx.options[5] else dout.contiguous()
    du, ddelta, dz, dB, dC, dA, dD, dbias = _scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, states, totals,
                                                      kept, *ctx.options)
    # The op's partial sums added up and its fp32 dB, dC cast here, traced (see _scan_bwd).
    summed = lambda parts, like: None if like is None else parts.sum((0, 2)).to(like.dtype)  # noqa: E731
    return (du, ddelta, summed(dA, A), dB.to(B.dtype), dC.to(C.dtype), summed(dD, D), None if z is None else dz,
            summed(dbias, delta_bias), None, None, None, None, None, None, None, None)


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def _same_layout(first: torch.Tensor, *others) -> None:
    # The Gluon kernels take one set of strides for all of these (row-major with one pitch, or channel-last).
    for t in others:
        if t is not None and t.stride() != first.stride():
            raise AssertionError(f"gluon scan: strides {t.stride()} differ from {first.stride()}")


def _dense_channel_last(t: torch.Tensor) -> torch.Tensor:
    """A (B, D, L) tensor as a transposed view of contiguous (B, L, D) memory (the layout the op allocates
    its channel-last outputs in, which the Gluon kernels need u, delta and dout to share): itself when it
    already is one (a mixer's conv and dt_proj outputs, out_proj's gradient), else a copy."""
    batch, dim, length = t.shape
    if t.stride() == (length * dim, 1, dim):
        return t
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _row_pitch(length: int) -> int:
    """Row stride of the (…, L) buffers the kernels see. A multiple of 16 elements lets Triton prove
    row starts aligned and vectorise every load; at an odd L (a split branch's share of the tokens)
    the unaligned rows made the backward 2.5x slower on an H100."""
    return triton.cdiv(length, 16) * 16


def _pitched(tensor: torch.Tensor, pitch: int) -> torch.Tensor:
    """``tensor`` (…, L) as a contiguous (…, pitch) tensor, zero-padded (the kernels mask columns ≥ L,
    so the padding is never read); differentiable, and no copy when it already is one."""
    if tensor.shape[-1] != pitch:
        return F.pad(tensor, (0, pitch - tensor.shape[-1]))
    return tensor.contiguous()


def _zero_padding(buffer: torch.Tensor, length: int) -> torch.Tensor:
    # Kernels write columns < L only; an op's outputs must be fully defined (compile checks compare them).
    if buffer.numel() and buffer.shape[-1] > length:
        buffer[..., length:].zero_()
    return buffer


def _or(tensor, placeholder):
    # Kernels take a pointer for every optional input; a HAS_* flag says whether it is read.
    return placeholder if tensor is None else tensor


def _or_empty(tensor, placeholder):
    # As _or, for an optional input passed as an empty tensor (a custom op's outputs cannot be None).
    return tensor if tensor.numel() else placeholder


def is_channel_last(t: torch.Tensor) -> bool:
    """Whether a (B, D, L) tensor is a transposed view of (B, L, D) memory: channels adjacent."""
    return t.shape[1] > 1 and t.stride(1) == 1 and t.stride(2) >= t.shape[1]


# Channel-last in place or row-major copies. The Triton main kernels' channel-last variant was slower than
# their row-major one even counting the copies (fifth session, scripts/gpu_mamba1.py, 16x4096x1024x16 bf16
# fwd+bwd: 7.07 against 20.8 ms, 12.3 at its best tile; Mamba1Mixer at 1B 13.3 against 26.0 ms): a step's 16
# channels were one 32-byte sector, each program's loads latency-bound. The Gluon kernels stage their
# inputs in shared memory a (channels, steps) tile at a time, so the layout only changes how those tiles
# are loaded and stored (channels-fastest rows of 64-128 bytes a step), and the transposed copies of u,
# delta, z, B, C, dout, and of du, ddelta, dz back, are not made. CHANNEL_LAST_BY_DEFAULT: channel-last
# views (a mixer's) are read in place whenever the Gluon kernels run; FLOWHN_SCAN_CHANNEL_LAST=0 sends
# them through the row-major copies instead (for A/Bs).
CHANNEL_LAST_BY_DEFAULT = os.environ.get("FLOWHN_SCAN_CHANNEL_LAST", "1") == "1"
# KEEP_STATES: whether the forward keeps the state after every sub-chunk (GLUON_SUB steps) for the backward,
# when the caller does not say (``keep_states=None``; Mamba1Mixer passes model.ssm_keep_scan_states). Kept, the
# backward skips its first walk over each chunk (the one that finds those states) for B·D·L·N / GLUON_SUB
# values in u's dtype kept a layer: 100 MB at a Mamba 135M layer (16 × 1024 × 1536 × 16, bf16).
KEEP_STATES = os.environ.get("FLOWHN_SCAN_KEEP_STATES", "0") == "1"


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          block_d=None, chunk=None, num_warps=None, channel_last: bool | None = None,
                          remake_inputs: bool = False, keep_states: bool | None = None, A_is_log: bool = False):
    """Same contract as ``reference.selective_scan_sequential``; differentiable in every tensor input.
    Row-major: rows are copied to an aligned pitch. ``channel_last=True`` (``u`` must be a transposed
    view of (B, L, D) memory): every input is read in place with its strides and the result is
    channel-last too; None: channel-last for such inputs when the Gluon kernels run
    (``CHANNEL_LAST_BY_DEFAULT``), else row-major.
    ``block_d``, ``chunk``, ``num_warps`` override the tile choice (tests, tuning).
    ``remake_inputs``: under torch.compile the backward remakes the pitched copies of u and delta from u
    and delta instead of keeping them (a Mamba layer keeps u for x_proj's weight gradient anyway, and can
    recompute delta: ``Mamba1Mixer(remake_scan_inputs=True)``): 2 × 2 bytes a channel and step less kept
    in bf16, for two copy passes in the backward.
    ``keep_states`` (None: ``KEEP_STATES``): the forward keeps the state after every sub-chunk, in u's dtype,
    and the Gluon backward reads them instead of finding them by a first walk over each chunk.
    ``A_is_log``: A holds Mamba's A_log parameter and the scan runs with -exp(A_log), formed inside the Gluon
    kernels, forward and backward, so neither it nor its gradient's product is a kernel of its own."""
    length = u.shape[-1]
    if channel_last is None:
        channel_last = CHANNEL_LAST_BY_DEFAULT and is_channel_last(u) and _use_gluon(u, _state_block(A.shape[-1]))
    elif channel_last and not is_channel_last(u):
        raise ValueError("selective_scan_triton: channel_last=True needs u as a (B, D, L) view of (B, L, D) memory")
    block_d, chunk, num_warps = launch_config(length, block_d, chunk, num_warps, channel_last)
    softplus = bool(delta_softplus)
    keep = KEEP_STATES if keep_states is None else bool(keep_states)
    if channel_last:
        return _scan_fwd(u, delta, A, B, C, D, z, delta_bias, length, softplus, block_d, chunk, num_warps, True,
                         keep, bool(A_is_log))[0]
    pitch = _row_pitch(length)
    pitched = functools.partial(_pitched, pitch=pitch)
    u, delta = (recomputed_in_backward(pitched, t, enabled=remake_inputs) for t in (u, delta))
    B, C = (pitched(t) for t in (B, C))
    z = None if z is None else pitched(z)
    out = _scan_fwd(u, delta, A, B, C, D, z, delta_bias, length, softplus, block_d, chunk, num_warps, False, keep,
                    bool(A_is_log))[0]
    return out[..., :length]
