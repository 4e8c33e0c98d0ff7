"""Causal depthwise conv1d + bias + SiLU as one Triton kernel forward and one backward, channel-last.

Semantics: ``flowhn.kernels.torch_conv.causal_conv1d_silu_reference`` (F.conv1d with K-1 zeros on the
left, then SiLU). ``x`` is (B, L, C) with unit channel stride and any batch/row strides, so the hidden
half of a mixer's in_proj output (a view with row stride 2E) is read in place, no transpose or copy.

Forward: a program owns a (BLOCK_L rows × BLOCK_C channels) tile and sums K row-shifted loads of x
(the shifted rows are L1/L2 hits), adds the bias and applies SiLU; only the output is written.

Backward: the pre-activation is recomputed, not stored. With p_t = bias + Σ_k w_k x_{t-K+1+k} and
g_t = dy_t · silu'(p_t):  dx_t = Σ_j w_{K-1-j} g_{t+j},  dw_k = Σ_t g_t x_{t-K+1+k},  dbias = Σ_t g_t.
A program recomputes g at its rows shifted by j = 0..K-1 (K sigmoids per element; the special-function
units have room for that many), writes dx once, and accumulates dw/dbias in registers over a segment
of SEG_TILES row tiles; the per-segment partial sums (B · L/segment · (K+1) · C floats) are summed after.
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
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, L, C, stride_xb, stride_xl,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
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
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_k = tl.arange(0, K_POW2)
    x_row_ptr = x_ptr + pid_b * stride_xb
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
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


# Tile defaults; scripts/gpu_mamba1.py sweeps them. BLOCK_C channels × 2 bytes should span whole
# 128-byte lines in bf16.
FWD_BLOCK_L, FWD_BLOCK_C, FWD_WARPS = 32, 128, 4
BWD_BLOCK_L, BWD_BLOCK_C, BWD_SEG_TILES, BWD_WARPS = 32, 128, 8, 4


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
              block_c: int, seg_tiles: int, num_warps: int) -> list[_Tensor]:
    """[dx (B, L, C) contiguous in x's dtype, dweight (C, K), dbias (C,) (empty without bias)]."""
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
    _conv_bwd_kernel[grid](x, weight, weight if bias is None else bias, dout, dx, dw_part, db_part,
                           length, channels, x.stride(0), x.stride(1), n_segments,
                           K=width, K_POW2=triton.next_power_of_2(width), HAS_BIAS=bias is not None, SILU=silu,
                           BLOCK_L=block_l, BLOCK_C=block_c, SEG_TILES=seg_tiles, num_warps=num_warps)
    dweight = dw_part.sum(0).t().to(weight.dtype)
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return [dx, dweight.contiguous(), dbias]


@_conv_bwd.register_fake
def _(dout, x, weight, bias, silu, block_l, block_c, seg_tiles, num_warps):
    return [x.new_empty(x.shape), torch.empty_like(weight, memory_format=torch.contiguous_format),
            x.new_empty(0) if bias is None else torch.empty_like(bias)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu, _, _, _ = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    # The backward tile is read from the module at call time so a sweep can set it.
    dx, dweight, dbias = _conv_bwd(dout, x, weight, bias, ctx.silu, BWD_BLOCK_L, BWD_BLOCK_C, BWD_SEG_TILES,
                                   BWD_WARPS)
    return dx, dweight, None if bias is None else dbias, None, None, None, None


_conv_fwd.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d_silu_triton(x, weight, bias=None, silu=True, block_l=None, block_c=None, num_warps=None):
    """Same contract as ``torch_conv.causal_conv1d_silu_reference``; x (B, L, C), weight (C, K), bias (C,).
    ``block_l``, ``block_c``, ``num_warps`` override the forward tile (tests, tuning)."""
    check_conv_args(x, weight, bias)
    return _conv_fwd(x, weight, bias, bool(silu), block_l or FWD_BLOCK_L, block_c or FWD_BLOCK_C,
                     num_warps or FWD_WARPS)
