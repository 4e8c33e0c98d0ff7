"""Causal depthwise conv1d + bias + SiLU as one Triton kernel forward and one backward, channel-last.

Semantics: ``flowhn.kernels.torch_conv.causal_conv1d_silu_reference`` (F.conv1d with K-1 zeros on the
left, then SiLU). ``x`` is (B, L, C) with unit channel stride and any batch/row strides, so the hidden
half of a mixer's in_proj output (a view with row stride 2E) is read in place, no transpose or copy.

Forward: a program owns a (BLOCK_L rows × BLOCK_C channels) tile and sums K row-shifted loads of x
(the shifted rows are L1/L2 hits), adds the bias and applies SiLU; only the output is written.

Backward: the pre-activation is recomputed, not stored. With p_t = bias + Σ_k w_k x_{t-K+1+k} and
g_t = dy_t · silu'(p_t):  dx_t = Σ_j w_{K-1-j} g_{t+j},  dw_k = Σ_t g_t x_{t-K+1+k},  dbias = Σ_t g_t.
Two kernels do this (``BWD_KERNEL``). ``staged`` (the default; about 2x faster on an H200): g is
computed once per element and staged in a small per-program ring buffer, from which dx and dw read its
K shifts (a register tile cannot be shifted along its rows). ``recompute``: a program recomputes g at
its rows shifted by j = 0..K-1 (K sigmoids and K² loads of x per element), writes dx once, and
accumulates dw/dbias in registers over a segment of SEG_TILES row tiles. Either way the per-segment
partial sums (B · L/segment · (K+1) · C floats) are summed after.
Both are ``torch.library`` custom ops with fake shapes and ``register_autograd``, so ``torch.compile``
keeps one graph across them.
"""

from __future__ import annotations

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


# Tile defaults; scripts/gpu_mamba1.py sweeps them. BLOCK_C channels × 2 bytes should span whole
# 128-byte lines in bf16.
FWD_BLOCK_L, FWD_BLOCK_C, FWD_WARPS = 32, 128, 4
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
BWD_KERNEL = "staged"
STAGED_BLOCK_L, STAGED_BLOCK_C, STAGED_SEG_TILES, STAGED_WARPS = 8, 256, 16, 4
STAGED_MAX_WIDTH = 4


def _channel_last(x: torch.Tensor) -> torch.Tensor:
    # The kernels index channels with unit stride; any other layout is copied once.
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("flowhn::causal_conv1d_silu_fwd", mutates_args=())
def _conv_fwd(x: _Tensor, weight: _Tensor, bias: _MaybeTensor, silu: bool, block_l: int, block_c: int,
              num_warps: int) -> _Tensor:
    """out (B, L, C) contiguous, in x's dtype."""
    x, weight = _channel_last(x), weight.contiguous()
    batch, length, channels = x.shape
    out = torch.empty(batch, length, channels, device=x.device, dtype=x.dtype)
    grid = (batch, triton.cdiv(length, block_l), triton.cdiv(channels, block_c))
    _conv_fwd_kernel[grid](x, weight, weight if bias is None else bias, out, length, channels,
                           x.stride(0), x.stride(1), K=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu,
                           BLOCK_L=block_l, BLOCK_C=block_c, num_warps=num_warps)
    return out


@_conv_fwd.register_fake
def _(x, weight, bias, silu, block_l, block_c, num_warps):
    return x.new_empty(x.shape)


@torch.library.custom_op("flowhn::causal_conv1d_silu_bwd", mutates_args=())
def _conv_bwd(dout: _Tensor, x: _Tensor, weight: _Tensor, bias: _MaybeTensor, silu: bool, block_l: int,
              block_c: int, seg_tiles: int, num_warps: int, staged: bool) -> list[_Tensor]:
    """[dx (B, L, C) contiguous in x's dtype, dweight (C, K), dbias (C,) (empty without bias)].
    ``staged``: _conv_bwd_staged_kernel (widths up to STAGED_MAX_WIDTH), else _conv_bwd_kernel."""
    x, weight, dout = _channel_last(x), weight.contiguous(), dout.contiguous()
    batch, length, channels = x.shape
    width = weight.shape[1]
    segment = block_l * seg_tiles
    n_segments = triton.cdiv(length, segment)
    f32 = dict(device=x.device, dtype=torch.float32)
    dx = torch.empty(batch, length, channels, device=x.device, dtype=x.dtype)
    dw_part = torch.empty(batch * n_segments, width, channels, **f32)
    db_part = torch.empty(batch * n_segments, channels, **f32) if bias is not None else dw_part
    grid = (batch, n_segments, triton.cdiv(channels, block_c))
    args = (length, channels, x.stride(0), x.stride(1), n_segments)
    flags = dict(K=width, K_POW2=triton.next_power_of_2(width), HAS_BIAS=bias is not None, SILU=silu, BLOCK_L=block_l,
                 BLOCK_C=block_c, SEG_TILES=seg_tiles, num_warps=num_warps)
    b = weight if bias is None else bias
    if staged and width <= STAGED_MAX_WIDTH:
        if block_l < triton.next_power_of_2(width):  # the halo's rows must fit in one half of the ring
            raise ValueError(f"triton_conv: the staged backward needs a row tile of at least "
                             f"{triton.next_power_of_2(width)} rows for width {width}, got {block_l}")
        ring = torch.empty(grid[0] * grid[1] * grid[2], 2 * block_l, block_c, **f32)
        # One stage: the ring's loads must not be hoisted above the barrier that publishes its stores.
        _conv_bwd_staged_kernel[grid](x, weight, b, dout, dx, ring, dw_part, db_part, *args, num_stages=1, **flags)
    else:
        _conv_bwd_kernel[grid](x, weight, b, dout, dx, dw_part, db_part, *args, **flags)
    dweight = dw_part.sum(0).t().to(weight.dtype)
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return [dx, dweight.contiguous(), dbias]


@_conv_bwd.register_fake
def _(dout, x, weight, bias, silu, block_l, block_c, seg_tiles, num_warps, staged):
    return [x.new_empty(x.shape), torch.empty_like(weight, memory_format=torch.contiguous_format),
            x.new_empty(0) if bias is None else torch.empty_like(bias)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu, _, _, _ = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    # The backward kernel and its tile are read from the module at call time so a sweep can set them.
    if BWD_KERNEL not in ("recompute", "staged"):
        raise ValueError(f"triton_conv.BWD_KERNEL must be 'recompute' or 'staged', got {BWD_KERNEL!r}")
    staged = BWD_KERNEL == "staged" and weight.shape[1] <= STAGED_MAX_WIDTH
    tile = ((STAGED_BLOCK_L, STAGED_BLOCK_C, STAGED_SEG_TILES, STAGED_WARPS) if staged
            else (BWD_BLOCK_L, BWD_BLOCK_C, BWD_SEG_TILES, BWD_WARPS))
    dx, dweight, dbias = _conv_bwd(dout, x, weight, bias, ctx.silu, *tile, staged)
    return dx, dweight, None if bias is None else dbias, None, None, None, None


_conv_fwd.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d_silu_triton(x, weight, bias=None, silu=True, block_l=None, block_c=None, num_warps=None):
    """Same contract as ``torch_conv.causal_conv1d_silu_reference``; x (B, L, C), weight (C, K), bias (C,).
    ``block_l``, ``block_c``, ``num_warps`` override the forward tile (tests, tuning)."""
    check_conv_args(x, weight, bias)
    return _conv_fwd(x, weight, bias, bool(silu), block_l or FWD_BLOCK_L, block_c or FWD_BLOCK_C,
                     num_warps or FWD_WARPS)
