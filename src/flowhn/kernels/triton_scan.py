"""Mamba-1 selective scan as Triton kernels (forward and backward), for CUDA GPUs.

Each program owns one batch row and a block of channels and walks the sequence in chunks. Within a
chunk the (channels × states × steps) tile of the recurrence ``h_t = a_t h_{t-1} + x_t`` lives in
registers and is solved with ``tl.associative_scan``; the state is carried to the next chunk in
registers. The only state written to global memory is the state at each chunk end, (B, D, L/chunk, N)
floats, which the backward uses to recompute each chunk instead of storing the (B, D, L, N) states.

softplus(delta + bias) on the way in, and the D skip and silu(z) gate on the way out, are fused in, so a
forward reads u, delta, z, B, C once and writes y once; the backward also reads dy once and writes du,
ddelta, dz once, with dB/dC accumulated by atomics (they sum over channel blocks) and dA/dD/dbias summed
per batch row and reduced afterwards.

The backward's adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` needs the decay one step ahead, which a
register tile cannot shift; it is recomputed from delta loaded at t + 1 (an L1 hit) instead.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # jit code may only read constexpr globals


def _fix_interpreter_loop_bounds() -> None:
    """Triton 3.6's CPU interpreter (TRITON_INTERPRET=1) turns a runtime loop bound into a 1-element
    numpy array and calls int() on it, which NumPy >= 2.3 refuses. Patch that one conversion; the
    compiled GPU path never goes through it."""
    try:
        int(np.zeros(1))
        return
    except TypeError:
        pass
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    _fix_interpreter_loop_bounds()


@triton.jit
def _compose(a_first, x_first, a_then, x_then):
    # Two steps of h -> a h + x, earlier one first. Triton's reverse scan passes the later-in-time
    # partial result first, so the same function composes the reversed recurrence g -> a g + x too.
    return a_first * a_then, x_first * a_then + x_then


@triton.jit
def _delta(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Raw delta (+ bias) and the step size actually used, zero where masked (zero step = identity)."""
    pre = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre += bias[:, None]
    step = pre
    if SOFTPLUS:
        # Same threshold as torch.nn.functional.softplus.
        step = tl.where(pre <= 20.0, tl.log(1.0 + tl.exp(pre)), pre)
    return pre, tl.where(mask, step, 0.0)


@triton.jit
def _take(tile, offs_n, n):
    """Column n of a (BLOCK_D, BLOCK_N) register tile (registers cannot be indexed by a runtime n)."""
    return tl.sum(tl.where(offs_n[None, :] == n, tile, 0.0), axis=1)


@triton.jit
def _put(tile, offs_n, n, column):
    return tl.where(offs_n[None, :] == n, column[:, None], tile)


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
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    mask_d = offs_d < DIM
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) if HAS_BIAS else None
    skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) if HAS_D else None
    row = (pid_b * DIM + offs_d) * L
    bc_row = pid_b * N * L
    state_at = (pid_b * DIM + offs_d) * n_chunks * N
    first = (offs_t == 0)[None, :]
    last = (offs_t == CHUNK - 1)[None, :]

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(n_chunks):
        t = c * CHUNK + offs_t
        mask_t = t < L
        m = mask_d[:, None] & mask_t[None, :]
        at = row[:, None] + t[None, :]
        u = tl.load(u_ptr + at, mask=m, other=0.0).to(tl.float32)
        _, step = _delta(delta_ptr, at, m, bias, HAS_BIAS, SOFTPLUS)
        stepu = step * u
        y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        for n in range(N):
            A2n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32) * LOG2E
            Bn = tl.load(B_ptr + bc_row + n * L + t, mask=mask_t, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + bc_row + n * L + t, mask=mask_t, other=0.0).to(tl.float32)
            _, _, hs = _states_n(step, stepu, A2n, Bn, _take(h, offs_n, n), first)
            y += hs * Cn[None, :]
            # Past the end of the sequence a = 1 and x = 0, so the last column is the state after step L-1.
            h_end = tl.sum(tl.where(last, hs, 0.0), axis=1)
            h = _put(h, offs_n, n, h_end)
            tl.store(states_ptr + state_at + c * N + n, h_end, mask=mask_d)
        if HAS_D:
            y += skip[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + at, mask=m, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(out_ptr + at, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    DIM, L, N, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    mask_d = offs_d < DIM
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) if HAS_BIAS else None
    skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) if HAS_D else None
    row = (pid_b * DIM + offs_d) * L
    bc_row = pid_b * N * L
    state_at = (pid_b * DIM + offs_d) * n_chunks * N
    first = (offs_t == 0)[None, :]
    last = (offs_t == CHUNK - 1)[None, :]

    # carry[:, n] = a_s g_s for s the first step of the chunk after the current one.
    carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * CHUNK + offs_t
        mask_t = t < L
        m = mask_d[:, None] & mask_t[None, :]
        m_next = mask_d[:, None] & (t + 1 < L)[None, :]
        at = row[:, None] + t[None, :]
        u = tl.load(u_ptr + at, mask=m, other=0.0).to(tl.float32)
        pre, step = _delta(delta_ptr, at, m, bias, HAS_BIAS, SOFTPLUS)
        _, step_next = _delta(delta_ptr, at + 1, m_next, bias, HAS_BIAS, SOFTPLUS)
        stepu = step * u
        dy = tl.load(dout_ptr + at, mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + at, mask=m, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            dout = dy
            dy = dout * z * sig
        y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        gB = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        dstep = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        for n in range(N):
            An = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32)
            A2n = An * LOG2E
            Bn = tl.load(B_ptr + bc_row + n * L + t, mask=mask_t, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + bc_row + n * L + t, mask=mask_t, other=0.0).to(tl.float32)
            h0 = tl.load(states_ptr + state_at + (c - 1) * N + n, mask=mask_d & (c > 0), other=0.0)
            a, x, hs = _states_n(step, stepu, A2n, Bn, h0, first)
            if HAS_Z:
                y += hs * Cn[None, :]
            # Adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}, run backwards through the chunk.
            a_next = tl.exp2(step_next * A2n[:, None])
            gy = dy * Cn[None, :]
            gy = tl.where(last, gy + _take(carry, offs_n, n)[:, None], gy)
            _, g = tl.associative_scan((a_next, gy), 1, _compose, reverse=True)
            carry = _put(carry, offs_n, n, tl.sum(tl.where(first, a * g, 0.0), axis=1))
            # a_t h_{t-1} = h_t - x_t, so g (h - x) = dL/da_t * a_t without keeping h_{t-1}.
            ga = g * (hs - x)
            dA_acc = _put(dA_acc, offs_n, n, _take(dA_acc, offs_n, n) + tl.sum(ga * step, axis=1))
            gB += g * Bn[None, :]
            dstep += ga * An[:, None]
            tl.atomic_add(dB_ptr + bc_row + n * L + t, tl.sum(g * stepu, axis=0), mask=mask_t)
            tl.atomic_add(dC_ptr + bc_row + n * L + t, tl.sum(hs * dy, axis=0), mask=mask_t)

        du = step * gB
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=1)
            du += dy * skip[:, None]
        if HAS_Z:
            if HAS_D:
                y += skip[:, None] * u
            tl.store(dz_ptr + at, (dout * y * sig * (1.0 + z * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=m)
        dstep += u * gB
        if SOFTPLUS:
            dstep = tl.where(pre <= 20.0, dstep * tl.sigmoid(pre), dstep)
        dstep = tl.where(m, dstep, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(dstep, axis=1)
        tl.store(du_ptr + at, du.to(du_ptr.dtype.element_ty), mask=m)
        tl.store(ddelta_ptr + at, dstep.to(ddelta_ptr.dtype.element_ty), mask=m)

    tl.store(dA_ptr + (pid_b * DIM + offs_d[:, None]) * N + offs_n[None, :], dA_acc,
             mask=mask_d[:, None] & (offs_n < N)[None, :])
    if HAS_D:
        tl.store(dD_ptr + pid_b * DIM + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * DIM + offs_d, dbias_acc, mask=mask_d)


def launch_config(length: int, state: int, block_d: int | None = None, chunk: int | None = None,
                  num_warps: int | None = None):
    """Tiles of (channels × steps), one state index at a time."""
    block_n = max(triton.next_power_of_2(state), 2)
    chunk = chunk or min(32, max(triton.next_power_of_2(length), 2))
    block_d = block_d or 32
    return block_d, block_n, chunk, num_warps or 4


class _TritonSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, tiles):
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D, z, delta_bias = (None if t is None else t.contiguous() for t in (D, z, delta_bias))
        batch, dim, length = u.shape
        state = A.shape[1]
        block_d, block_n, chunk, warps = launch_config(length, state, *tiles)
        n_chunks = triton.cdiv(length, chunk)
        out = torch.empty_like(u)
        states = torch.empty(batch, dim, n_chunks, state, device=u.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(dim, block_d))
        _scan_fwd_kernel[grid](
            u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), out, states,
            dim, length, state, n_chunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps,
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.softplus, ctx.config = softplus, (block_d, block_n, chunk, warps)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        block_d, block_n, chunk, warps = ctx.config
        batch, dim, length = u.shape
        state = A.shape[1]
        f32 = dict(device=u.device, dtype=torch.float32)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA = torch.empty(batch, dim, state, **f32)
        dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
        dD = torch.empty(batch, dim, **f32) if D is not None else None
        dbias = torch.empty(batch, dim, **f32) if delta_bias is not None else None
        grid = (batch, triton.cdiv(dim, block_d))
        _scan_bwd_kernel[grid](
            u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), dout.contiguous(), states,
            du, ddelta, _or(dz, du), dA, dB, dC, _or(dD, dA), _or(dbias, dA),
            dim, length, state, states.shape[2],
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.softplus,
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps,
        )
        dD = dD.sum(0).to(D.dtype) if D is not None else None
        dbias = dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
        return du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias, None, None


def _or(tensor, placeholder):
    # Kernels take a pointer for every optional input; a HAS_* flag says whether it is read.
    return placeholder if tensor is None else tensor


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          block_d=None, chunk=None, num_warps=None):
    """Same contract as ``reference.selective_scan_sequential``; differentiable in every tensor input.
    ``block_d``, ``chunk``, ``num_warps`` override the tile choice (tests, tuning)."""
    tiles = (block_d, chunk, num_warps)
    return _TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), tiles)
