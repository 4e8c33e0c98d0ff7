"""Causal depthwise conv1d + bias + SiLU as one Triton kernel forward and one backward, channel-last.

Semantics: ``flowhn.kernels.torch_conv.causal_conv1d_silu_reference`` (F.conv1d with K-1 zeros on the
left, then SiLU). ``x`` is (B, L, C) with unit channel stride and any batch/row strides, so a column view
of a wider tensor (Mamba-2's xBC columns of its in_proj output) is read in place, no transpose or copy.

Forward (``FWD_KERNEL``): "walk" (the default, widths ≤ 4): each thread walks its channels' rows one
at a time with x_{t-1..t-3} in registers, so x is read once; "tiles": a program sums K row-shifted
loads of an (BLOCK_L rows × BLOCK_C channels) tile (the shifted rows are L1/L2 hits). Either adds the
bias and applies SiLU; only the output is written.

Backward: the pre-activation is recomputed, not stored. With p_t = bias + Σ_k w_k x_{t-K+1+k} and
g_t = dy_t · silu'(p_t):  dx_t = Σ_j w_{K-1-j} g_{t+j},  dw_k = Σ_t g_t x_{t-K+1+k},  dbias = Σ_t g_t.
Three kernels do this (``BWD_KERNEL``). ``walk`` (the default, widths ≤ 4): each thread walks its
channels' rows with x_{t-1..t-3} and g_{t-1..t-3} in registers and writes dx three rows behind the row
it is at; x and dy are read once, nothing is staged (a register tile cannot be shifted along its rows,
but a thread's own sliding window can). ``staged``: g is computed once per element and staged in a small
per-program ring buffer in global memory, from which dx and dw read its K shifts. ``recompute``: a
program recomputes g at its rows shifted by j = 0..K-1 (K sigmoids and K² loads of x per element),
writes dx once, and accumulates dw/dbias in registers over a segment of SEG_TILES row tiles. Each way
the per-segment partial sums (B · L/segment · (K+1) · C floats) are summed after. On an H200 (GPU
kernel time, fwd+bwd at the 1B Mamba layer, 16×1024×4096 bf16, experiments/bench/H200.md, tenth
session): walk + walk 0.265 ms at a first tile (1.68× the 0.158 ms its bytes take at copy bandwidth),
tiles + staged 0.574, tiles + recompute 1.254; at the walk tiles now the defaults, each timed with the
other kernel at a fixed tile, the forward takes 0.085 and the backward about 0.156 ms.
Both are ``torch.library`` custom ops with fake shapes and ``register_autograd``, so ``torch.compile``
keeps one graph across them.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from flowhn.kernels.torch_conv import check_conv_args

_Tensor = torch.Tensor
_MaybeTensor = Optional[torch.Tensor]


@triton.jit
def _preactivation(x_row_ptr, w_ptr, bias, t, offs_c, mask_c, stride_l, L,
                   K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """bias + Σ_k w[c, k] x[t - (K-1) + k, c] for a (BLOCK_L, BLOCK_C) tile, fp32; zeros before row 0."""
    acc = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32) + bias[None, :]
    for k in tl.static_range(K):
        src = t - (K - 1) + k
        m = ((src >= 0) & (src < L))[:, None] & mask_c[None, :]
        xk = tl.load(x_row_ptr + src[:, None].to(tl.int64) * stride_l + offs_c[None, :], mask=m, other=0.0)
        wk = tl.load(w_ptr + offs_c * K + k, mask=mask_c, other=0.0).to(tl.float32)
        acc += xk.to(tl.float32) * wk[None, :]
    return acc


@triton.jit
def _channels_and_bias(b_ptr, C, BLOCK_C: tl.constexpr, HAS_BIAS: tl.constexpr):
    """This program's block of channels (grid axis 2), its mask, and the bias there in fp32 (zeros
    without one)."""
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    return offs_c, mask_c, bias


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, L, C, stride_xb, stride_xl,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_c, mask_c, bias = _channels_and_bias(b_ptr, C, BLOCK_C, HAS_BIAS)
    pre = _preactivation(x_ptr + pid_b * stride_xb, w_ptr, bias, t, offs_c, mask_c, stride_xl, L,
                         K, BLOCK_L, BLOCK_C)
    out = pre * tl.sigmoid(pre) if SILU else pre
    m = (t < L)[:, None] & mask_c[None, :]
    at = (pid_b * L + t[:, None]) * C + offs_c[None, :]
    tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                     L, C, stride_xb, stride_xl, n_segments,
                     K: tl.constexpr, K_POW2: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, SEG_TILES: tl.constexpr):
    """dy, dx contiguous (B, L, C). dw_part (B·n_segments, K, C), db_part (B·n_segments, C) fp32."""
    pid_b = tl.program_id(0).to(tl.int64)
    seg = tl.program_id(1)
    offs_c, mask_c, bias = _channels_and_bias(b_ptr, C, BLOCK_C, HAS_BIAS)
    offs_k = tl.arange(0, K_POW2)
    x_row_ptr = x_ptr + pid_b * stride_xb
    dw_acc = tl.zeros((K_POW2, BLOCK_C), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for i in range(SEG_TILES):
        t = (seg * SEG_TILES + i) * BLOCK_L + tl.arange(0, BLOCK_L)
        dx = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
        for j in tl.static_range(K):
            tj = t + j
            m = (tj < L)[:, None] & mask_c[None, :]
            pre = _preactivation(x_row_ptr, w_ptr, bias, tj, offs_c, mask_c, stride_xl, L, K, BLOCK_L, BLOCK_C)
            g = tl.load(dy_ptr + (pid_b * L + tj[:, None]) * C + offs_c[None, :], mask=m, other=0.0)
            g = g.to(tl.float32)
            if SILU:
                sig = tl.sigmoid(pre)
                g = g * sig * (1.0 + pre * (1.0 - sig))
            g = tl.where(m, g, 0.0)
            w_j = tl.load(w_ptr + offs_c * K + (K - 1 - j), mask=mask_c, other=0.0).to(tl.float32)
            dx += g * w_j[None, :]
            if j == 0:
                db_acc += tl.sum(g, axis=0)
                for k in tl.static_range(K):
                    src = t - (K - 1) + k
                    mk = ((src >= 0) & (src < L))[:, None] & mask_c[None, :]
                    xk = tl.load(x_row_ptr + src[:, None].to(tl.int64) * stride_xl + offs_c[None, :], mask=mk,
                                 other=0.0).to(tl.float32)
                    dw_acc += tl.where((offs_k == k)[:, None], tl.sum(g * xk, axis=0)[None, :], 0.0)
        m0 = (t < L)[:, None] & mask_c[None, :]
        tl.store(dx_ptr + (pid_b * L + t[:, None]) * C + offs_c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m0)
    part = pid_b * n_segments + seg
    tl.store(dw_part_ptr + (part * K + offs_k[:, None]) * C + offs_c[None, :], dw_acc,
             mask=(offs_k < K)[:, None] & mask_c[None, :])
    if HAS_BIAS:
        tl.store(db_part_ptr + part * C + offs_c, db_acc, mask=mask_c)


@triton.jit
def _gradient(x_row_ptr, w_ptr, bias, dy_row_ptr, t, offs_c, mask_c, stride_l, L, C,
              K: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, SILU: tl.constexpr):
    """g = dy · silu'(pre) at rows t, fp32; zero at rows ≥ L and masked channels (dy loads as 0)."""
    pre = _preactivation(x_row_ptr, w_ptr, bias, t, offs_c, mask_c, stride_l, L, K, ROWS, BLOCK_C)
    m = (t < L)[:, None] & mask_c[None, :]
    g = tl.load(dy_row_ptr + t[:, None] * C + offs_c[None, :], mask=m, other=0.0).to(tl.float32)
    if SILU:
        sig = tl.sigmoid(pre)
        g = g * sig * (1.0 + pre * (1.0 - sig))
    return g


@triton.jit
def _conv_bwd_staged_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, ring_ptr, dw_part_ptr, db_part_ptr,
                            L, C, stride_xb, stride_xl, n_segments,
                            K: tl.constexpr, K_POW2: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                            BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, SEG_TILES: tl.constexpr):
    """The backward with g computed once per element (K ≤ 4). A program walks its segment's row tiles
    from the last to the first; each tile's g is staged in the program's own two-tile ring buffer
    (ring_ptr: fp32, 2·BLOCK_L × BLOCK_C per program, an L2-resident scratch), so that
    dx_t = Σ_j w_{K-1-j} g_{t+j} reads the rows after t from the tile staged just before it (the first
    tile reads the g of the next segment's first K_POW2 rows, computed here once more). x_t pairs with
    the same shifted g for dw_{K-1-j} = Σ_t g_{t+j} x_t, accumulated elementwise and summed over the
    rows once at the end. Per element: K loads of x, one of dy, one sigmoid, K-1 loads of g."""
    pid_b = tl.program_id(0).to(tl.int64)
    seg = tl.program_id(1)
    offs_c, mask_c, bias = _channels_and_bias(b_ptr, C, BLOCK_C, HAS_BIAS)
    rows = tl.arange(0, BLOCK_L)
    x_row_ptr = x_ptr + pid_b * stride_xb
    dy_row_ptr = dy_ptr + pid_b * L * C
    program = (pid_b * n_segments + seg) * tl.num_programs(2) + tl.program_id(2)
    ring = ring_ptr + program * (2 * BLOCK_L * BLOCK_C) + tl.arange(0, BLOCK_C)[None, :]
    start = seg * SEG_TILES * BLOCK_L
    # Tile i sits in half i % 2 of the ring; the tile after the last is the next segment's start.
    halo_rows = tl.arange(0, K_POW2)
    halo = _gradient(x_row_ptr, w_ptr, bias, dy_row_ptr, start + SEG_TILES * BLOCK_L + halo_rows, offs_c, mask_c,
                     stride_xl, L, C, K, K_POW2, BLOCK_C, SILU)
    tl.store(ring + ((SEG_TILES % 2) * BLOCK_L + halo_rows)[:, None] * BLOCK_C, halo)
    dw0 = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    dw1 = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    dw2 = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    dw3 = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    db = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    for back in range(SEG_TILES):
        i = SEG_TILES - 1 - back
        t = start + i * BLOCK_L + rows
        m = (t < L)[:, None] & mask_c[None, :]
        g = _gradient(x_row_ptr, w_ptr, bias, dy_row_ptr, t, offs_c, mask_c, stride_xl, L, C, K, BLOCK_L, BLOCK_C,
                      SILU)
        x = tl.load(x_row_ptr + t[:, None].to(tl.int64) * stride_xl + offs_c[None, :], mask=m, other=0.0)
        x = x.to(tl.float32)
        tl.store(ring + ((i % 2) * BLOCK_L + rows)[:, None] * BLOCK_C, g)
        tl.debug_barrier()  # the tile's g, staged by every thread, is read back shifted by other threads
        db += g
        dx = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
        for j in tl.static_range(K):
            if j == 0:
                g_j = g
            else:  # rows t + j: this tile's, then the first rows of the tile staged before it
                g_j = tl.load(ring + (((i % 2) * BLOCK_L + rows + j) % (2 * BLOCK_L))[:, None] * BLOCK_C)
            w_tap = tl.load(w_ptr + offs_c * K + (K - 1 - j), mask=mask_c, other=0.0).to(tl.float32)
            dx += g_j * w_tap[None, :]
            if K - 1 - j == 0:
                dw0 += g_j * x
            elif K - 1 - j == 1:
                dw1 += g_j * x
            elif K - 1 - j == 2:
                dw2 += g_j * x
            else:
                dw3 += g_j * x
        tl.store(dx_ptr + (pid_b * L + t[:, None]) * C + offs_c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)
        tl.debug_barrier()  # the next tile overwrites the half this one just read
    part = pid_b * n_segments + seg
    at = dw_part_ptr + part * K * C + offs_c
    tl.store(at, tl.sum(dw0, axis=0), mask=mask_c)
    if K > 1:
        tl.store(at + C, tl.sum(dw1, axis=0), mask=mask_c)
    if K > 2:
        tl.store(at + 2 * C, tl.sum(dw2, axis=0), mask=mask_c)
    if K > 3:
        tl.store(at + 3 * C, tl.sum(dw3, axis=0), mask=mask_c)
    if HAS_BIAS:
        tl.store(db_part_ptr + part * C + offs_c, tl.sum(db, axis=0), mask=mask_c)


@triton.jit
def _lag_taps(w_ptr, offs_c, mask_c, K: tl.constexpr):
    """v_l = w[c, K-1-l] for the lags l = 0..3 (fp32; zero for l ≥ K), so p_t = bias + Σ_l v_l x_{t-l}."""
    v0 = tl.load(w_ptr + offs_c * K + (K - 1), mask=mask_c, other=0.0).to(tl.float32)
    v1 = tl.zeros_like(v0)
    v2 = tl.zeros_like(v0)
    v3 = tl.zeros_like(v0)
    if K > 1:
        v1 = tl.load(w_ptr + offs_c * K + (K - 2), mask=mask_c, other=0.0).to(tl.float32)
    if K > 2:
        v2 = tl.load(w_ptr + offs_c * K + (K - 3), mask=mask_c, other=0.0).to(tl.float32)
    if K > 3:
        v3 = tl.load(w_ptr + offs_c * K + (K - 4), mask=mask_c, other=0.0).to(tl.float32)
    return v0, v1, v2, v3


@triton.jit
def _row(ptr, t, stride_l, offs_c, mask_c, L):
    """Row t of a channel-last tensor (fp32), zero outside [0, L)."""
    inside = (t >= 0) & (t < L)
    return tl.load(ptr + t.to(tl.int64) * stride_l + offs_c, mask=mask_c & inside, other=0.0).to(tl.float32)


@triton.jit
def _rows_before(x_row_ptr, start, stride_l, offs_c, mask_c, L):
    """x at rows start-1, start-2, start-3: the window a walk enters its segment with (zeros before row 0)."""
    return (_row(x_row_ptr, start - 1, stride_l, offs_c, mask_c, L),
            _row(x_row_ptr, start - 2, stride_l, offs_c, mask_c, L),
            _row(x_row_ptr, start - 3, stride_l, offs_c, mask_c, L))


@triton.jit
def _conv_bwd_walk_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dy2_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                          L, C, stride_xb, stride_xl, n_segments,
                          K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_DY2: tl.constexpr,
                          BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, SEG_TILES: tl.constexpr):
    """The backward with each thread walking its channels' rows one at a time (K ≤ 4): x_{t-1..t-3} and
    g_{t-1..t-3} ride along in registers, so every element of x and dy is read once and nothing is
    staged. At row t: p_t = bias + Σ_l v_l x_{t-l} (v_l = w_{K-1-l}), g_t = dy_t silu'(p_t),
    dv_l += g_t x_{t-l}, and dx_{t-3} = Σ_j v_j g_{t-3+j} is written (its last g just computed). A program
    owns BLOCK_C channels of a segment of SEG_TILES·BLOCK_L rows; it reads the 3 rows before it (x) and
    walks 3 rows past it (x, dy: the g its last dx needs). Rows come BLOCK_L at a time, all loads of a
    block issued before its arithmetic, so BLOCK_L rows of memory latency overlap. HAS_DY2: the output's
    gradient is dy + dy2 (two consumers' gradients, same layout), added as they are read."""
    pid_b = tl.program_id(0).to(tl.int64)
    seg = tl.program_id(1)
    offs_c, mask_c, bias = _channels_and_bias(b_ptr, C, BLOCK_C, HAS_BIAS)
    v0, v1, v2, v3 = _lag_taps(w_ptr, offs_c, mask_c, K)
    x_row_ptr = x_ptr + pid_b * stride_xb
    dy_row_ptr = dy_ptr + pid_b * L * C
    dy2_row_ptr = dy2_ptr + pid_b * L * C
    dx_row_ptr = dx_ptr + pid_b * L * C
    start = seg * (SEG_TILES * BLOCK_L)
    end = start + SEG_TILES * BLOCK_L
    x1, x2, x3 = _rows_before(x_row_ptr, start, stride_xl, offs_c, mask_c, L)
    g1 = tl.zeros_like(x1)
    g2 = tl.zeros_like(x1)
    g3 = tl.zeros_like(x1)
    dv0 = tl.zeros_like(x1)
    dv1 = tl.zeros_like(x1)
    dv2 = tl.zeros_like(x1)
    dv3 = tl.zeros_like(x1)
    db = tl.zeros_like(x1)
    # SEG_TILES blocks of the segment, then enough for the 3 rows after it (the rest of those is masked).
    for block in range(SEG_TILES + (3 + BLOCK_L - 1) // BLOCK_L):
        t0 = start + block * BLOCK_L
        xs = ()
        dys = ()
        for r in tl.static_range(BLOCK_L):
            xs = xs + (_row(x_row_ptr, t0 + r, stride_xl, offs_c, mask_c, L),)
            dy = _row(dy_row_ptr, t0 + r, C, offs_c, mask_c, L)
            if HAS_DY2:
                dy += _row(dy2_row_ptr, t0 + r, C, offs_c, mask_c, L)
            dys = dys + (dy,)
        for r in tl.static_range(BLOCK_L):
            t = t0 + r
            x0 = xs[r]
            pre = bias + v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3
            g0 = dys[r]  # zero past L, so g is too
            if SILU:
                sig = tl.sigmoid(pre)
                g0 = g0 * sig * (1.0 + pre * (1.0 - sig))
            own = tl.where(t < end, g0, 0.0)  # rows past the segment are the next one's
            dv0 += own * x0
            dv1 += own * x1
            dv2 += own * x2
            dv3 += own * x3
            db += own
            s = t - 3
            dx = v0 * g3 + v1 * g2 + v2 * g1 + v3 * g0
            tl.store(dx_row_ptr + s.to(tl.int64) * C + offs_c, dx.to(dx_ptr.dtype.element_ty),
                     mask=mask_c & (s >= start) & (s < end) & (s < L))
            x3, x2, x1 = x2, x1, x0
            g3, g2, g1 = g2, g1, g0
    part = pid_b * n_segments + seg
    at = dw_part_ptr + part * K * C + offs_c  # dw_k = dv_{K-1-k}
    tl.store(at + (K - 1) * C, dv0, mask=mask_c)
    if K > 1:
        tl.store(at + (K - 2) * C, dv1, mask=mask_c)
    if K > 2:
        tl.store(at + (K - 3) * C, dv2, mask=mask_c)
    if K > 3:
        tl.store(at + (K - 4) * C, dv3, mask=mask_c)
    if HAS_BIAS:
        tl.store(db_part_ptr + part * C + offs_c, db, mask=mask_c)


@triton.jit
def _conv_fwd_walk_kernel(x_ptr, w_ptr, b_ptr, out_ptr, L, C, stride_xb, stride_xl,
                          K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                          BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, SEG_TILES: tl.constexpr):
    """The forward as ``_conv_bwd_walk_kernel`` walks (K ≤ 4): x_{t-1..t-3} in registers, so each element
    of x is read once (``_conv_fwd_kernel`` loads it K times, shifted, from L1/L2). Grid (batch, segment
    of SEG_TILES·BLOCK_L rows, channel block); out (B, L, C) contiguous."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_c, mask_c, bias = _channels_and_bias(b_ptr, C, BLOCK_C, HAS_BIAS)
    v0, v1, v2, v3 = _lag_taps(w_ptr, offs_c, mask_c, K)
    x_row_ptr = x_ptr + pid_b * stride_xb
    out_row_ptr = out_ptr + pid_b * L * C
    start = tl.program_id(1) * (SEG_TILES * BLOCK_L)
    x1, x2, x3 = _rows_before(x_row_ptr, start, stride_xl, offs_c, mask_c, L)
    for block in range(SEG_TILES):
        t0 = start + block * BLOCK_L
        xs = ()
        for r in tl.static_range(BLOCK_L):
            xs = xs + (_row(x_row_ptr, t0 + r, stride_xl, offs_c, mask_c, L),)
        for r in tl.static_range(BLOCK_L):
            t = t0 + r
            x0 = xs[r]
            pre = bias + v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3
            out = pre * tl.sigmoid(pre) if SILU else pre
            tl.store(out_row_ptr + t.to(tl.int64) * C + offs_c, out.to(out_ptr.dtype.element_ty), mask=mask_c & (t < L))
            x3, x2, x1 = x2, x1, x0


# Tile defaults; scripts/gpu_mamba1.py sweeps them. BLOCK_C channels × 2 bytes should span whole
# 128-byte lines in bf16.
FWD_BLOCK_L, FWD_BLOCK_C, FWD_WARPS = 32, 128, 4
# The forward kernel: "tiles" (_conv_fwd_kernel, K shifted loads an element, any width) or "walk"
# (_conv_fwd_walk_kernel, widths up to STAGED_MAX_WIDTH, wider ones take "tiles") at its own tile
# (rows a block, channels, blocks a segment, warps). FLOWHN_CONV_FWD picks one for a process. On an
# H200 (tenth session, call B: scripts/gpu_mamba1.py --conv --kernel-time, bf16, GPU kernel time) the
# walk at this tile (the best of WALK_FWD_TILES at both shapes) took 0.085 ms at 16×1024×4096 and
# 0.095 at 16×1024×4352 where "tiles" took 0.106 and 0.116 at its best: the default.
FWD_KERNEL = os.environ.get("FLOWHN_CONV_FWD", "walk")
FWD_KERNELS = ("tiles", "walk")


def _walk_tile(variable: str, default: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A walking kernel's tile (rows a block, channels, blocks a segment, warps) from ``variable``
    ("4,1024,16,4"; for A/Bs and GPU tests at a candidate tile), else ``default``."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    try:
        tile = tuple(int(part) for part in value.split(","))
    except ValueError:
        tile = ()
    if len(tile) != 4 or min(tile) < 1:
        raise ValueError(f"{variable} must be four positive integers 'rows,channels,blocks,warps', got {value!r}")
    return tile


WALK_FWD_BLOCK_L, WALK_FWD_BLOCK_C, WALK_FWD_SEG_TILES, WALK_FWD_WARPS = _walk_tile("FLOWHN_CONV_WALK_FWD_TILE",
                                                                                   (8, 512, 8, 8))
# WALK_FWD_WIDE_BLOCK_C: the channels a program where the channels are a multiple of it (4 a thread at 8 warps,
# 64-bit loads), else WALK_FWD_BLOCK_C (2 a thread); 0: never. Nineteenth session, call E (H200, kernel time,
# scripts/gpu_mamba1.py --conv-walk): the forward at 16×1024×4096 0.085 -> 0.078 ms with 1024, at 4352 (five
# blocks, the last a quarter full) 0.094 -> 0.096, so it is taken only where the blocks are full. An
# environment tile (FLOWHN_CONV_WALK_FWD_TILE) is taken as given.
WALK_FWD_WIDE_BLOCK_C = 0 if os.environ.get("FLOWHN_CONV_WALK_FWD_TILE") else 1024
# Nineteenth session: the last three hold 4 and 8 channels a thread (64- and 128-bit loads; 64-128 registers,
# no spills: scripts/kernel_stats.py), the tiles before 1 or 2.
WALK_FWD_TILES = ((4, 256, 32, 4), (8, 256, 16, 4), (4, 128, 32, 4), (4, 512, 16, 4), (8, 512, 8, 8), (2, 256, 64, 4),
                  (8, 1024, 8, 8), (4, 1024, 16, 4), (8, 1024, 8, 4))
BWD_BLOCK_L, BWD_BLOCK_C, BWD_SEG_TILES, BWD_WARPS = 32, 128, 8, 4
# The backward kernel: "staged" (_conv_bwd_staged_kernel: g once per element, staged for its shifts;
# widths up to STAGED_MAX_WIDTH, wider kernels take "recompute") or "recompute" (_conv_bwd_kernel: the
# pre-activation recomputed at K shifts), each with its own tile. On an H200 (scripts/gpu_mamba1.py
# --conv, bf16, fwd+bwd, experiments/bench/H200.md): at the 1B Mamba layer (16×1024×4096) recompute
# 1.254 ms, staged at this tile 0.581 ms; at Mamba-2's xBC (16×1024×4352) 1.380 and 0.652 ms. Of the
# ten staged tiles swept, (16, 128, 32, 4) was fastest at 4096 channels (0.473) but 0.869 at 4352;
# this one has the lowest sum over the two. Compiled for sm_90 (scripts/kernel_stats.py --conv):
# 57 SASS instructions per element in its main loop and no spills, against 161 and 796 bytes of
# spills for "recompute".
#
# "walk" (``_conv_bwd_walk_kernel``, widths up to STAGED_MAX_WIDTH): each thread walks its channels'
# rows with x and g in registers, every element of x and dy read once, nothing staged. Tenth session,
# call B (GPU kernel time, the tiled forward's 0.106/0.116 ms included): fwd+bwd 0.262 ms at
# 16×1024×4096 and 0.287 at 4352 at the tile below (the best of WALK_TILES at both), against the staged
# backward's 0.574 / 0.633 at its default tile and 0.442 / 0.483 at its best: the default.
# FLOWHN_CONV_BWD picks one for a process. (Timed by wall clock in call A, with another GPU's run
# on the same host, every variant read 0.65-0.94 ms: the launches, not the kernels, set that time.)
BWD_KERNEL = os.environ.get("FLOWHN_CONV_BWD", "walk")
BWD_KERNELS = ("recompute", "staged", "walk")
STAGED_BLOCK_L, STAGED_BLOCK_C, STAGED_SEG_TILES, STAGED_WARPS = 8, 256, 16, 4
STAGED_MAX_WIDTH = 4
# The walk's tile: (rows a block: loads in flight, channels, blocks a segment, warps). WALK_TILES: the
# candidates scripts/gpu_mamba1.py --conv times.
WALK_BLOCK_L, WALK_BLOCK_C, WALK_SEG_TILES, WALK_WARPS = _walk_tile("FLOWHN_CONV_WALK_TILE", (4, 512, 32, 4))
# The last three (nineteenth session) hold 8 channels a thread (128-bit loads; 218-254 registers, no spills).
WALK_TILES = ((4, 256, 32, 4), (4, 256, 16, 4), (8, 256, 16, 4), (4, 128, 32, 4), (8, 128, 8, 4), (4, 512, 32, 4),
              (2, 256, 64, 4), (8, 256, 32, 8), (2, 1024, 64, 4), (4, 1024, 32, 4), (2, 512, 64, 2))


def _channel_last(x: torch.Tensor) -> torch.Tensor:
    # The kernels index channels with unit stride; any other layout is copied once.
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("flowhn::causal_conv1d_silu_fwd", mutates_args=())
def _conv_fwd(x: _Tensor, weight: _Tensor, bias: _MaybeTensor, silu: bool, block_l: int, block_c: int,
              seg_tiles: int, num_warps: int, kernel: str) -> _Tensor:
    """out (B, L, C) contiguous, in x's dtype. ``kernel``: "tiles" or "walk" (``seg_tiles``: its blocks
    a segment; unused by "tiles")."""
    x, weight = _channel_last(x), weight.contiguous()
    batch, length, channels = x.shape
    out = torch.empty(batch, length, channels, device=x.device, dtype=x.dtype)
    args = (x, weight, weight if bias is None else bias, out, length, channels, x.stride(0), x.stride(1))
    flags = dict(K=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu, BLOCK_L=block_l, BLOCK_C=block_c,
                 num_warps=num_warps)
    if kernel == "walk":
        grid = (batch, triton.cdiv(length, block_l * seg_tiles), triton.cdiv(channels, block_c))
        _conv_fwd_walk_kernel[grid](*args, SEG_TILES=seg_tiles, **flags)
    else:
        _conv_fwd_kernel[(batch, triton.cdiv(length, block_l), triton.cdiv(channels, block_c))](*args, **flags)
    return out


@_conv_fwd.register_fake
def _(x, weight, bias, silu, block_l, block_c, seg_tiles, num_warps, kernel):
    return x.new_empty(x.shape)


@torch.library.custom_op("flowhn::causal_conv1d_silu_bwd", mutates_args=())
def _conv_bwd(dout: _Tensor, x: _Tensor, weight: _Tensor, bias: _MaybeTensor, silu: bool, block_l: int,
              block_c: int, seg_tiles: int, num_warps: int, kernel: str, dout2: _MaybeTensor) -> list[_Tensor]:
    """[dx (B, L, C) contiguous in x's dtype, dweight's and dbias's fp32 partial sums (``_grad_part_shapes``;
    dbias's empty without bias)], summed by the caller (``_conv_grads``, traced, so that inductor writes the sums
    in kernels of its own choosing rather than the op running three eager ones a layer).
    ``kernel``: one of BWD_KERNELS (the caller has checked that it applies: ``_bwd_kernel_and_tile``).
    ``dout2``: a second gradient of the output (another consumer's), added to ``dout`` as the walk reads it
    (added first for the other kernels)."""
    if dout2 is not None and kernel != "walk":
        dout, dout2 = dout + dout2, None
    x, weight, dout = _channel_last(x), weight.contiguous(), dout.contiguous()
    dout2 = None if dout2 is None else dout2.contiguous()
    batch, length, channels = x.shape
    width = weight.shape[1]
    n_segments = triton.cdiv(length, block_l * seg_tiles)
    dx = torch.empty(batch, length, channels, device=x.device, dtype=x.dtype)
    dw_shape, db_shape = _grad_part_shapes(x, weight, bias, block_l, seg_tiles)
    f32 = dict(device=x.device, dtype=torch.float32)
    dw_part, db_part = torch.empty(dw_shape, **f32), torch.empty(db_shape, **f32)
    db_out = db_part if bias is not None else dw_part  # a pointer for the kernels; HAS_BIAS says if it is written
    grid = (batch, n_segments, triton.cdiv(channels, block_c))
    args = (length, channels, x.stride(0), x.stride(1), n_segments)
    flags = dict(K=width, K_POW2=triton.next_power_of_2(width), HAS_BIAS=bias is not None, SILU=silu, BLOCK_L=block_l,
                 BLOCK_C=block_c, SEG_TILES=seg_tiles, num_warps=num_warps)
    b = weight if bias is None else bias
    if kernel == "staged" and block_l < triton.next_power_of_2(width):
        # the halo's rows must fit in one half of the ring
        raise ValueError(f"triton_conv: the staged backward needs a row tile of at least "
                         f"{triton.next_power_of_2(width)} rows for width {width}, got {block_l}")
    if kernel == "walk":
        flags.pop("K_POW2")
        _conv_bwd_walk_kernel[grid](x, weight, b, dout, dout if dout2 is None else dout2, dx, dw_part, db_out, *args,
                                    HAS_DY2=dout2 is not None, **flags)
    elif kernel == "staged":
        ring = torch.empty(grid[0] * grid[1] * grid[2], 2 * block_l, block_c, **f32)
        # One stage: the ring's loads must not be hoisted above the barrier that publishes its stores.
        _conv_bwd_staged_kernel[grid](x, weight, b, dout, dx, ring, dw_part, db_out, *args, num_stages=1, **flags)
    else:
        _conv_bwd_kernel[grid](x, weight, b, dout, dx, dw_part, db_out, *args, **flags)
    return [dx, dw_part, db_part]


@_conv_bwd.register_fake
def _(dout, x, weight, bias, silu, block_l, block_c, seg_tiles, num_warps, kernel, dout2):
    dw_shape, db_shape = _grad_part_shapes(x, weight, bias, block_l, seg_tiles)
    return [x.new_empty(x.shape), x.new_empty(dw_shape, dtype=torch.float32),
            x.new_empty(db_shape, dtype=torch.float32)]


def _grad_part_shapes(x, weight, bias, block_l: int, seg_tiles: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The backward's partial sums of dweight, (B · segments, K, C), and of dbias, (B · segments, C) or (0,)
    without bias: one row per (batch, segment of block_l · seg_tiles rows)."""
    batch, length, channels = x.shape
    parts = batch * triton.cdiv(length, block_l * seg_tiles)
    return (parts, weight.shape[1], channels), ((parts, channels) if bias is not None else (0,))


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu = inputs[:4]
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _bwd_kernel_and_tile(width: int) -> tuple[str, tuple[int, int, int, int]]:
    """The backward kernel for this width (BWD_KERNEL, but "staged" and "walk" take widths up to
    STAGED_MAX_WIDTH; wider ones "recompute") and its tile (rows, channels, row tiles a segment, warps).
    Read at call time, so a sweep can set them."""
    if BWD_KERNEL not in BWD_KERNELS:
        raise ValueError(f"triton_conv.BWD_KERNEL (FLOWHN_CONV_BWD) must be one of {BWD_KERNELS}, got {BWD_KERNEL!r}")
    kernel = BWD_KERNEL
    if kernel != "recompute" and width > STAGED_MAX_WIDTH:
        kernel = "recompute"
    tiles = {"recompute": (BWD_BLOCK_L, BWD_BLOCK_C, BWD_SEG_TILES, BWD_WARPS),
             "staged": (STAGED_BLOCK_L, STAGED_BLOCK_C, STAGED_SEG_TILES, STAGED_WARPS),
             "walk": (WALK_BLOCK_L, WALK_BLOCK_C, WALK_SEG_TILES, WALK_WARPS)}
    return kernel, tiles[kernel]


def _backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    return (*_conv_grads(dout, None, x, weight, bias, ctx.silu), None, None, None, None, None, None)


def _conv_grads(dout, dout2, x, weight, bias, silu):
    """(dx, dweight, dbias or None) by the backward op and the sums of its partials; dout2: ``_conv_bwd``'s.
    dout is made contiguous here,
    traced into the compiled backward, not inside the op: when it was the sum of a Mamba-1 mixer's x_proj
    gradient and the scan's transposed du, inductor laid it out transposed, and the op's own .contiguous()
    was then an eager strided copy (0.42 ms a layer at Mamba 1B, tenth session)."""
    kernel, tile = _bwd_kernel_and_tile(weight.shape[1])
    dx, dw_part, db_part = _conv_bwd(dout.contiguous(), x, weight, bias, silu, *tile, kernel, dout2)
    # The partial sums added up here, traced (the op's outputs are its kernel's (segment, K, C) rows).
    return dx, dw_part.sum(0).t().to(weight.dtype), None if bias is None else db_part.sum(0).to(bias.dtype)


_conv_fwd.register_autograd(_backward, setup_context=_setup_context)


def _fwd_kernel_and_tile(width: int, channels: int) -> tuple[str, tuple[int, int, int, int]]:
    """The forward kernel for this width (FWD_KERNEL; "walk" takes widths up to STAGED_MAX_WIDTH) and its
    tile (rows, channels, blocks a segment, warps) for this many channels, read at call time."""
    if FWD_KERNEL not in FWD_KERNELS:
        raise ValueError(f"triton_conv.FWD_KERNEL (FLOWHN_CONV_FWD) must be one of {FWD_KERNELS}, got {FWD_KERNEL!r}")
    if FWD_KERNEL == "walk" and width <= STAGED_MAX_WIDTH:
        wide = WALK_FWD_WIDE_BLOCK_C and channels % WALK_FWD_WIDE_BLOCK_C == 0
        return "walk", (WALK_FWD_BLOCK_L, WALK_FWD_WIDE_BLOCK_C if wide else WALK_FWD_BLOCK_C, WALK_FWD_SEG_TILES,
                        WALK_FWD_WARPS)
    return "tiles", (FWD_BLOCK_L, FWD_BLOCK_C, 1, FWD_WARPS)


# The conv and the projection that reads its output (a Mamba-1 mixer's x_proj) as one op. Its output feeds
# two consumers, the scan and x_proj, so autograd would add their gradients in a pass of its own (a layout
# change in the same kernel, since the scan's du arrives transposed) before the conv's backward: 0.90 ms a
# step at Mamba 135M (fifteenth session's profile). Here the conv's backward reads both gradients and adds
# them as it walks, so that pass is gone. (An addmm onto the scan's gradient instead was no faster: cuBLAS
# first copied it into its output, 0.57 ms a step, and its GEMM ran 0.93 against the plain one's ~0.35:
# sixteenth session, call A.)
@torch.library.custom_op("flowhn::causal_conv1d_silu_proj_fwd", mutates_args=())
def _conv_proj_fwd(x: _Tensor, weight: _Tensor, bias: _MaybeTensor, proj_weight: _Tensor, silu: bool, block_l: int,
                   block_c: int, seg_tiles: int, num_warps: int, kernel: str) -> tuple[_Tensor, _Tensor]:
    """(out (B, L, C) as ``_conv_fwd``'s, out @ proj_weight.T (B, L, P)); proj_weight (P, C) in x's dtype."""
    out = _conv_fwd(x, weight, bias, silu, block_l, block_c, seg_tiles, num_warps, kernel)
    return out, torch.mm(out.view(-1, out.shape[-1]), proj_weight.t()).view(*out.shape[:-1], -1)


@_conv_proj_fwd.register_fake
def _(x, weight, bias, proj_weight, silu, block_l, block_c, seg_tiles, num_warps, kernel):
    return x.new_empty(x.shape), x.new_empty(*x.shape[:-1], proj_weight.shape[0])


def _setup_proj_context(ctx, inputs, output):
    x, weight, bias, proj_weight, silu = inputs[:5]
    ctx.save_for_backward(x, weight, bias, proj_weight, output[0])
    ctx.silu = silu


def _proj_backward(ctx, dout, dproj):
    x, weight, bias, proj_weight, out = ctx.saved_tensors
    channels = out.shape[-1]
    if dproj is None:  # the projection unused
        dhidden, dproj_weight = None, torch.zeros_like(proj_weight)
    else:
        rows = dproj.reshape(-1, dproj.shape[-1])
        dhidden = torch.mm(rows, proj_weight).view(out.shape)
        dproj_weight = torch.mm(rows.t(), out.reshape(-1, channels))
    if dout is None:
        dout, dhidden = dhidden, None
    return (*_conv_grads(dout, dhidden, x, weight, bias, ctx.silu), dproj_weight, None, None, None, None, None,
            None)


_conv_proj_fwd.register_autograd(_proj_backward, setup_context=_setup_proj_context)


def causal_conv1d_silu_proj_triton(x, weight, bias, proj_weight):
    """(silu(causal conv1d(x) + bias), that @ proj_weight.T), the second computed in x's dtype (as autocast's
    F.linear would); the first as ``causal_conv1d_silu_triton``'s. proj_weight (P, C)."""
    check_conv_args(x, weight, bias)
    if proj_weight.dim() != 2 or proj_weight.shape[1] != x.shape[-1]:
        raise ValueError(f"causal_conv1d_silu_proj: proj_weight has shape {tuple(proj_weight.shape)}, expected "
                         f"(P, {x.shape[-1]}) for x of shape {tuple(x.shape)}")
    kernel, (rows, channels, seg_tiles, warps) = _fwd_kernel_and_tile(weight.shape[1], x.shape[-1])
    return _conv_proj_fwd(x, weight, bias, proj_weight.to(x.dtype), True, rows, channels, seg_tiles, warps, kernel)


def causal_conv1d_silu_triton(x, weight, bias=None, silu=True, block_l=None, block_c=None, num_warps=None):
    """Same contract as ``torch_conv.causal_conv1d_silu_reference``; x (B, L, C), weight (C, K), bias (C,).
    ``block_l``, ``block_c``, ``num_warps`` override the forward kernel's tile (tests, tuning)."""
    check_conv_args(x, weight, bias)
    kernel, (rows, channels, seg_tiles, warps) = _fwd_kernel_and_tile(weight.shape[1], x.shape[-1])
    return _conv_fwd(x, weight, bias, bool(silu), block_l or rows, block_c or channels, seg_tiles,
                     num_warps or warps, kernel)
