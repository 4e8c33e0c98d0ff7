"""Mamba-2 SSD as Triton kernels: forward in three launches, backward in four, nothing of size L·P·N kept.

Per (batch, head) and chunk of T steps, with a_t = dt_t A (≤ 0) and s_t = a_1 + … + a_t inside the chunk,
the state entering the chunk H (P × N) and x̃_t = dt_t x_t:

  y_t   = Σ_{u≤t} exp(s_t − s_u) (C_t·B_u) x̃_u  +  exp(s_t) H C_t  +  D x_t       (intra + inter chunk)
  S     = Σ_u exp(s_T − s_u) x̃_u ⊗ B_u                                              (what the chunk adds)
  H'    = exp(s_T) H + S                                                             (state passing)

Every exponent is a difference s_t − s_u with u ≤ t, or s_t itself, so it is ≤ 0: no overflow, and
its rounding error is proportional to its own size.

Forward: (1) ``_chunk_state_kernel`` S per chunk (T×P by T×N matmul) and the chunk's total log decay;
(2) ``_state_pass_kernel`` walks the chunks in order, turning S into the entering states H (carried in
fp32, stored in x's dtype for bf16/fp16 inputs, as mamba-ssm does: ``triton_ssd._state_dtype``)
(``_state_pass_prefetch_kernel``: the same, its loads issued CHUNKS chunks at a time; ``triton_ssd.STATE_PASS``);
(3) ``_chunk_scan_fwd_kernel`` the output: C Bᵀ (T×T), masked decay, times x̃, plus exp(s) C Hᵀ.

Backward, with dy: the adjoint of the state at the end of chunk c, Ĝ_c, obeys Ĝ_{c−1} = K_c + exp(s_T) Ĝ_c
with K_c = Σ_t exp(s_t) dy_t ⊗ C_t, the chunk's own pull on its entering state. (1) the same
``_chunk_state_kernel`` recomputes S (unless the forward kept H) and computes K; (2) the same pass kernel
runs forwards for H and backwards for Ĝ (two program columns of one launch); (3) ``_chunk_scan_bwd_dx_kernel``
per head: dx, ddt, and the per-chunk sums of dA and dD; the gradient of each step's log decay a_t sums
every term over exactly the (t', u) pairs whose decay spans step t; (4) ``_chunk_scan_bwd_dbc_kernel`` per group and block of N: dB and
dC summed over the group's heads in registers (a few heads per program, partial sums added in PyTorch).

Matmuls run on tensor cores: bf16 operands for bf16/fp16 inputs (fp32 accumulation), fp32 operands as
tf32x3 (three tf32 products: fp32-level accuracy) for fp32 inputs, and float64 for float64 inputs.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from flowhn.kernels import _interpreting

# Importing the Mamba-1 kernels patches the CPU interpreter's runtime loop bounds (NumPy >= 2.3).
import flowhn.kernels.triton_scan  # noqa: F401

# Matmul precision for fp32 inputs: tf32x3 keeps fp32 accuracy on tensor cores; "ieee" is the fallback.
FP32_DOT_PRECISION = os.environ.get("FLOWHN_SSD_FP32_DOT", "tf32x3")


def _autotuned(configs, key):
    """Autotune on the GPU; the CPU interpreter runs the kernel as written (the launcher passes defaults)."""
    def wrap(kernel):
        if _interpreting():
            return kernel
        return triton.autotune(configs=configs, key=key)(kernel)
    return wrap


# (N block, warps). With 64 × 64 chunk tiles, 4 warps at N block 64 spilled registers in the backward
# (ptxas for sm_90); a whole N = 128 block saves the dB/dC kernel recomputing dy x̃ᵀ per block. Each
# config costs a compile on first use, so the list is short.
TILES = ((32, 4), (32, 8), (64, 8), (128, 8))
# The dB/dC kernel without the N block of 32. On an H200 (Triton 3.6, 2026-11-29, `scripts/gpu_ssd.py
# --diagnose`, bf16 at 2×1000×8×64 G=2 N=128, each config in its own process): N block 32 crashed with an
# illegal address (4 and 8 warps, pipelined or not) or gave NaN (8 warps, not pipelined); 64 and 128 passed
# (worst error 7.1e-3), pipelined or not. The interpreter finds no out-of-bounds address for any tile
# (tests/test_triton_ssd.py::test_triton_ssd_kernels_stay_in_bounds_for_every_tile), so the fault is in
# code generation for that tile. Without it every bf16 case of gpu_ssd.py passes (fifth session), and
# triton_ssd.ssd_gpu now takes these kernels in bf16.
# Since the thirteenth session one program makes both dB and dC (each head's dM' once, not twice): at the
# Mamba-2 1B layer 1.07 -> 0.59 ms. Its registers (`scripts/kernel_stats.py --ssd`, sm_90): N block 64 with
# 8 warps spills 20 bytes a thread and 128 with 8 spills 116; 64 with 4 warps does not spill, so it joins.
DBC_TILES = tuple(tile for tile in TILES if tile[0] != 32) + ((64, 4),)
# Software-pipelining depth of the dB/dC kernel's loop over a group's heads (1-8): both depths passed
# at N blocks 64 and 128 (the kernel of separate dB and dC programs); 1 is kept (it buys little at so few
# iterations).
DBC_STAGES = os.environ.get("FLOWHN_SSD_DBC_STAGES", "1")
if DBC_STAGES not in ("1", "2", "3"):
    raise ValueError(f"FLOWHN_SSD_DBC_STAGES must be 1, 2 or 3 (software-pipelining depth), got {DBC_STAGES!r}")
DBC_STAGES = int(DBC_STAGES)


def _configs(stages=2, tiles=TILES):
    return [triton.Config({"BLOCK_NK": nk}, num_warps=w, num_stages=stages) for nk, w in tiles]


# Tiles depend on the head and state sizes and the chunk (the T × T tiles' registers; the dtypes the
# autotuner adds), not on L. Without T a process that ran two chunk sizes reused the first one's tile.
_KEY = ["P", "N", "T"]


@triton.jit
def _dot(a, b, LOWP: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    if LOWP:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    else:
        return tl.dot(a.to(ACC), b.to(ACC), input_precision=PRECISION)


@triton.jit
def _chunk_steps(dt_ptr, A_ptr, b, c, h, L, s_dt_b, s_dt_l, s_dt_h, T: tl.constexpr, ACC: tl.constexpr):
    """Step indices of chunk c, their mask, dt (zero past L: a zero step changes no state), A, the
    inclusive cumulative log decay s inside the chunk, and its total s_end (the chunk's whole decay)."""
    t = c * T + tl.arange(0, T)
    mask_t = t < L
    dt = tl.load(dt_ptr + b * s_dt_b + t * s_dt_l + h * s_dt_h, mask=mask_t, other=0.0).to(ACC)
    A = tl.load(A_ptr + h).to(ACC)
    s = tl.cumsum(dt * A, axis=0)
    s_end = tl.sum(dt * A, axis=0)
    return t, mask_t, dt, A, s, s_end


@triton.jit
def _tile(ptr, base, rows, s_row, cols, s_col, mask_rows, mask_cols, ACC: tl.constexpr):
    """A 2-D tile in the accumulation dtype, or in its storage dtype with ACC=None (matmul operands only:
    fewer registers)."""
    tile = tl.load(ptr + base + rows[:, None] * s_row + cols[None, :] * s_col,
                   mask=mask_rows[:, None] & mask_cols[None, :], other=0.0)
    if ACC is not None:
        tile = tile.to(ACC)
    return tile


@_autotuned(_configs(), _KEY)
@triton.jit
def _chunk_state_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, dy_ptr, state_ptr, adjoint_ptr, total_ptr,
    L, H, P, N, rep, n_chunks,
    s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h,
    s_B_b, s_B_l, s_B_g, s_B_n, s_C_b, s_C_l, s_C_g, s_C_n, s_dy_b, s_dy_l, s_dy_h, s_dy_p,
    T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_NK: tl.constexpr, WITH_STATE: tl.constexpr,
    WITH_ADJOINT: tl.constexpr, LOWP: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (chunk, batch·head). state[b, c, h] = S (P × N), adjoint[b, c, h] = K, total[b, h, c] = s_T."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    g = h // rep
    t, mask_t, dt, A, s, s_end = _chunk_steps(dt_ptr, A_ptr, b, c, h, L, s_dt_b, s_dt_l, s_dt_h, T, ACC)
    p = tl.arange(0, BLOCK_P)
    mask_p = p < P
    out_at = ((b * n_chunks + c) * H + h) * P * N
    tl.store(total_ptr + bh * n_chunks + c, s_end)
    if WITH_STATE:
        x = _tile(x_ptr, b * s_x_b + h * s_x_h, t, s_x_l, p, s_x_p, mask_t, mask_p, ACC)
        xw = tl.trans(x * (tl.exp(s_end - s) * dt)[:, None])  # (P, T)
    if WITH_ADJOINT:
        dy = _tile(dy_ptr, b * s_dy_b + h * s_dy_h, t, s_dy_l, p, s_dy_p, mask_t, mask_p, ACC)
        dyw = tl.trans(dy * tl.exp(s)[:, None])  # (P, T)
    for n0 in range(0, N, BLOCK_NK):
        n = n0 + tl.arange(0, BLOCK_NK)
        mask_n = n < N
        out_offs = out_at + p[:, None] * N + n[None, :]
        mask_out = mask_p[:, None] & mask_n[None, :]
        if WITH_STATE:
            Bt = _tile(B_ptr, b * s_B_b + g * s_B_g, t, s_B_l, n, s_B_n, mask_t, mask_n, None)
            tl.store(state_ptr + out_offs, _dot(xw, Bt, LOWP, PRECISION, ACC), mask=mask_out)
        if WITH_ADJOINT:
            Ct = _tile(C_ptr, b * s_C_b + g * s_C_g, t, s_C_l, n, s_C_n, mask_t, mask_n, None)
            tl.store(adjoint_ptr + out_offs, _dot(dyw, Ct, LOWP, PRECISION, ACC), mask=mask_out)


@triton.jit
def _state_row(b, c, h, H, PN, n_chunks):
    """Offset of (batch b, chunk c, head h)'s P·N states in a (batch, chunks, heads, P, N) buffer."""
    return ((b * n_chunks + c) * H + h) * PN


@triton.jit
def _state_pass_kernel(state_ptr, adjoint_ptr, state_out_ptr, adjoint_out_ptr, total_ptr, H, PN, n_chunks,
                       first_direction, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Grid (block of P·N, batch·head, directions). Direction 0 turns the chunk states S into the states
    entering each chunk, H_c = exp(s_T,c−1) H_{c−1} + S_{c−1}; direction 1 turns the adjoint pulls K into
    the adjoints of each chunk's end state, Ĝ_c = K_{c+1} + exp(s_T,c+1) Ĝ_{c+1}. Carried in ACC, stored in
    the output's dtype; the output may be the input (in place)."""
    bh = tl.program_id(1).to(tl.int64)
    direction = tl.program_id(2) + first_direction
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    b, h = bh // H, bh % H
    carried = tl.zeros([BLOCK], dtype=ACC)
    if direction == 0:
        for c in range(n_chunks):
            at = _state_row(b, c, h, H, PN, n_chunks) + offs
            added = tl.load(state_ptr + at, mask=mask, other=0.0).to(ACC)
            tl.store(state_out_ptr + at, carried.to(state_out_ptr.dtype.element_ty), mask=mask)
            carried = tl.exp(tl.load(total_ptr + bh * n_chunks + c)) * carried + added
    else:
        for i in range(n_chunks):
            c = n_chunks - 1 - i
            at = _state_row(b, c, h, H, PN, n_chunks) + offs
            pull = tl.load(adjoint_ptr + at, mask=mask, other=0.0).to(ACC)
            tl.store(adjoint_out_ptr + at, carried.to(adjoint_out_ptr.dtype.element_ty), mask=mask)
            carried = pull + tl.exp(tl.load(total_ptr + bh * n_chunks + c)) * carried


@triton.jit
def _pass_prefetched(ptr, out_ptr, total_ptr, b, h, bh, H, PN, n_chunks, offs, mask,
                     REVERSE: tl.constexpr, CHUNKS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """One direction of ``_state_pass_prefetch_kernel``: CHUNKS chunks at a time, all their loads first."""
    carried = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n_chunks, CHUNKS):
        values = ()
        decays = ()
        for r in tl.static_range(CHUNKS):
            i = start + r
            c = n_chunks - 1 - i if REVERSE else i
            valid = i < n_chunks  # past the last chunk: x = 0, decay exp(0) = 1, nothing stored
            values = values + (tl.load(ptr + _state_row(b, c, h, H, PN, n_chunks) + offs, mask=mask & valid,
                                       other=0.0).to(ACC),)
            decays = decays + (tl.exp(tl.load(total_ptr + bh * n_chunks + c, mask=valid, other=0.0)),)
        for r in tl.static_range(CHUNKS):  # addresses recomputed rather than kept live across the loads
            i = start + r
            c = n_chunks - 1 - i if REVERSE else i
            tl.store(out_ptr + _state_row(b, c, h, H, PN, n_chunks) + offs, carried.to(out_ptr.dtype.element_ty),
                     mask=mask & (i < n_chunks))
            carried = decays[r] * carried + values[r]


@triton.jit
def _state_pass_prefetch_kernel(state_ptr, adjoint_ptr, state_out_ptr, adjoint_out_ptr, total_ptr, H, PN, n_chunks,
                                first_direction, BLOCK: tl.constexpr, CHUNKS: tl.constexpr, ACC: tl.constexpr):
    """``_state_pass_kernel``'s two passes with its loads issued CHUNKS chunks at a time. That kernel
    loads, stores and updates one chunk per step, so each step waits a memory round trip for its load
    (at 135M: 0.40 ms a launch where its bytes need 0.084 at copy bandwidth, experiments/bench/H200.md);
    here a thread loads its columns of CHUNKS chunks (and their decays) into registers first, then walks
    them: one round trip per CHUNKS chunks. Same operations in the same order, so the same results. A
    thread stores only the addresses it loaded itself (one layout for ``offs``), so in place is safe."""
    bh = tl.program_id(1).to(tl.int64)
    direction = tl.program_id(2) + first_direction
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    b, h = bh // H, bh % H
    if direction == 0:
        _pass_prefetched(state_ptr, state_out_ptr, total_ptr, b, h, bh, H, PN, n_chunks, offs, mask, False, CHUNKS,
                         BLOCK, ACC)
    else:
        _pass_prefetched(adjoint_ptr, adjoint_out_ptr, total_ptr, b, h, bh, H, PN, n_chunks, offs, mask, True, CHUNKS,
                         BLOCK, ACC)


@triton.jit
def _causal_decay(s, T: tl.constexpr):
    """exp(s_t − s_u) for u ≤ t, else 0 (T × T)."""
    rows = tl.arange(0, T)
    causal = rows[:, None] >= rows[None, :]
    return tl.exp(tl.where(causal, s[:, None] - s[None, :], float("-inf")))


@_autotuned(_configs(), _KEY)
@triton.jit
def _chunk_scan_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, state_ptr, y_ptr,
    L, H, P, N, rep, n_chunks,
    s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h,
    s_B_b, s_B_l, s_B_g, s_B_n, s_C_b, s_C_l, s_C_g, s_C_n,
    T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_NK: tl.constexpr, HAS_D: tl.constexpr,
    LOWP: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (chunk, batch·head). y (B, L, H, P) contiguous."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    g = h // rep
    t, mask_t, dt, A, s, _ = _chunk_steps(dt_ptr, A_ptr, b, c, h, L, s_dt_b, s_dt_l, s_dt_h, T, ACC)
    p = tl.arange(0, BLOCK_P)
    mask_p = p < P
    state_at = ((b * n_chunks + c) * H + h) * P * N
    scores = tl.zeros([T, T], dtype=ACC)  # C Bᵀ
    inter = tl.zeros([T, BLOCK_P], dtype=ACC)  # C Hᵀ
    for n0 in range(0, N, BLOCK_NK):
        n = n0 + tl.arange(0, BLOCK_NK)
        mask_n = n < N
        Ct = _tile(C_ptr, b * s_C_b + g * s_C_g, t, s_C_l, n, s_C_n, mask_t, mask_n, None)
        Bt = _tile(B_ptr, b * s_B_b + g * s_B_g, t, s_B_l, n, s_B_n, mask_t, mask_n, None)
        state = _tile(state_ptr, state_at, n, 1, p, N, mask_n, mask_p, ACC)  # Hᵀ (N, P)
        scores += _dot(Ct, tl.trans(Bt), LOWP, PRECISION, ACC)
        inter += _dot(Ct, state, LOWP, PRECISION, ACC)
    x = _tile(x_ptr, b * s_x_b + h * s_x_h, t, s_x_l, p, s_x_p, mask_t, mask_p, ACC)
    y = _dot(scores * _causal_decay(s, T), x * dt[:, None], LOWP, PRECISION, ACC) + tl.exp(s)[:, None] * inter
    if HAS_D:
        y += tl.load(D_ptr + h).to(ACC) * x
    y_offs = ((b * L + t[:, None]) * H + h) * P + p[None, :]
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_p[None, :])


@_autotuned(_configs(), _KEY)
@triton.jit
def _chunk_scan_bwd_dx_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dy_ptr, state_ptr, adjoint_ptr,
    dx_ptr, ddt_ptr, dA_ptr, dD_ptr,
    L, H, P, N, rep, n_chunks,
    s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h,
    s_B_b, s_B_l, s_B_g, s_B_n, s_C_b, s_C_l, s_C_g, s_C_n, s_dy_b, s_dy_l, s_dy_h, s_dy_p,
    T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_NK: tl.constexpr, HAS_D: tl.constexpr,
    LOWP: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (chunk, batch·head). dx (B, L, H, P), ddt (B, L, H) contiguous; dA, dD per (b, h, chunk).

    ds_t, the gradient of the cumulative log decay s_t, gathers: the intra-chunk scores Q = dM ∘ M
    (s_t enters row t positively, column u negatively), the inter-chunk term dy_t · exp(s_t) H C_t, and the
    chunk-state term R_u = exp(s_T − s_u) x̃_u · Ĝ B_u (negatively at u, summed at T), plus the state
    passing term exp(s_T) ⟨Ĝ, H⟩ at T; da_t = Σ_{t'≥t} ds_t' since s_t' = Σ_{t≤t'} a_t.
    """
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    g = h // rep
    t, mask_t, dt, A, s, s_end = _chunk_steps(dt_ptr, A_ptr, b, c, h, L, s_dt_b, s_dt_l, s_dt_h, T, ACC)
    p = tl.arange(0, BLOCK_P)
    mask_p = p < P
    state_at = ((b * n_chunks + c) * H + h) * P * N
    scores = tl.zeros([T, T], dtype=ACC)  # C Bᵀ
    inter = tl.zeros([T, BLOCK_P], dtype=ACC)  # C Hᵀ
    pulled = tl.zeros([T, BLOCK_P], dtype=ACC)  # B Ĝᵀ
    passing = tl.zeros([BLOCK_P], dtype=ACC)  # row sums of Ĝ ∘ H
    # Tiles are loaded in their storage dtype and widened where elementwise math reads them (exactly: bf16
    # into fp32), and each is used up as early as the formulas allow: with every T × T and T × P tile of
    # the formulas below live at once, a 4-warp program needed more than 255 registers a thread and spilled
    # (`scripts/kernel_stats.py --ssd`: 376 spilled bytes a thread, now 84).
    for n0 in range(0, N, BLOCK_NK):
        n = n0 + tl.arange(0, BLOCK_NK)
        mask_n = n < N
        Ct = _tile(C_ptr, b * s_C_b + g * s_C_g, t, s_C_l, n, s_C_n, mask_t, mask_n, None)
        Bt = _tile(B_ptr, b * s_B_b + g * s_B_g, t, s_B_l, n, s_B_n, mask_t, mask_n, None)
        state = _tile(state_ptr, state_at, n, 1, p, N, mask_n, mask_p, None)  # Hᵀ (N, P)
        adjoint = _tile(adjoint_ptr, state_at, n, 1, p, N, mask_n, mask_p, None)  # Ĝᵀ (N, P)
        scores += _dot(Ct, tl.trans(Bt), LOWP, PRECISION, ACC)
        inter += _dot(Ct, state, LOWP, PRECISION, ACC)
        pulled += _dot(Bt, adjoint, LOWP, PRECISION, ACC)
        passing += tl.sum(state.to(ACC) * adjoint.to(ACC), axis=0)
    dy = _tile(dy_ptr, b * s_dy_b + h * s_dy_h, t, s_dy_l, p, s_dy_p, mask_t, mask_p, None)
    inter_pull = tl.sum(dy.to(ACC) * inter, axis=1) * tl.exp(s)  # dy_t · exp(s_t) H C_t
    x = _tile(x_ptr, b * s_x_b + h * s_x_h, t, s_x_l, p, s_x_p, mask_t, mask_p, None)
    xdt = x.to(ACC) * dt[:, None]
    pulled = pulled * tl.exp(s_end - s)[:, None]
    R = tl.sum(xdt * pulled, axis=1)  # enters s_T positively and s_u negatively: da_t gets Σ_{u<t} R_u
    M = scores * _causal_decay(s, T)
    dxdt = _dot(tl.trans(M), dy, LOWP, PRECISION, ACC) + pulled
    dx = dxdt * dt[:, None]
    if HAS_D:
        dx += tl.load(D_ptr + h).to(ACC) * dy.to(ACC)
        tl.store(dD_ptr + bh * n_chunks + c, tl.sum(tl.sum(dy.to(ACC) * x.to(ACC), axis=1), axis=0))
    row = (b * L + t) * H + h
    tl.store(dx_ptr + row[:, None] * P + p[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=mask_t[:, None] & mask_p[None, :])
    ddt_x = tl.sum(dxdt * x.to(ACC), axis=1)
    dM = _dot(dy, tl.trans(xdt), LOWP, PRECISION, ACC)

    # da_t = Σ_{t'≥t} ds_t'. Each term is summed over exactly the index pairs it covers, never as a
    # difference of larger sums: under strong decay those differences lost 6 of 16 digits in float64.
    rows = tl.arange(0, T)[:, None]
    cols = tl.arange(0, T)[None, :]
    Q = tl.where(rows > cols, dM * M, 0.0)  # [t', u]: the diagonal adds to s_t and takes it away again
    before = tl.cumsum(Q, axis=1) - Q  # [t', t] = Σ_{u<t} Q[t', u]
    da = tl.sum(tl.where(rows >= cols, before, 0.0), axis=0)  # pairs u < t ≤ t'
    da += tl.cumsum(inter_pull, axis=0, reverse=True)
    da += tl.sum(tl.where(cols < rows, R[None, :], 0.0), axis=1)
    da += tl.exp(s_end) * tl.sum(passing, axis=0)

    ddt = ddt_x + A * da
    tl.store(dA_ptr + bh * n_chunks + c, tl.sum(dt * da, axis=0))
    tl.store(ddt_ptr + row, ddt, mask=mask_t)


@triton.jit
def _group_gradients(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, dy_ptr, state_ptr, adjoint_ptr, b, c, g, split, n, mask_n,
                     t, mask_t, p, mask_p, L, H, P, N, rep, n_chunks,
                     s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h, s_B_b, s_B_l, s_B_g, s_B_n,
                     s_C_b, s_C_l, s_C_g, s_C_n, s_dy_b, s_dy_l, s_dy_h, s_dy_p,
                     T: tl.constexpr, BLOCK_NK: tl.constexpr, HEADS_PER_PROGRAM: tl.constexpr,
                     LOWP: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """dB and dC for one block of N, summed over the split's heads; each head's dM' is made once for both."""
    Bt = _tile(B_ptr, b * s_B_b + g * s_B_g, t, s_B_l, n, s_B_n, mask_t, mask_n, None)
    Ct = _tile(C_ptr, b * s_C_b + g * s_C_g, t, s_C_l, n, s_C_n, mask_t, mask_n, None)
    dB = tl.zeros([T, BLOCK_NK], dtype=ACC)
    dC = tl.zeros([T, BLOCK_NK], dtype=ACC)
    for i in range(HEADS_PER_PROGRAM):
        h = g * rep + split * HEADS_PER_PROGRAM + i
        _, _, dt, A, s, s_end = _chunk_steps(dt_ptr, A_ptr, b, c, h, L, s_dt_b, s_dt_l, s_dt_h, T, ACC)
        x = _tile(x_ptr, b * s_x_b + h * s_x_h, t, s_x_l, p, s_x_p, mask_t, mask_p, None)
        dy = _tile(dy_ptr, b * s_dy_b + h * s_dy_h, t, s_dy_l, p, s_dy_p, mask_t, mask_p, None)
        xdt = x.to(ACC) * dt[:, None]
        at = ((b * n_chunks + c) * H + h) * P * N
        state = _tile(state_ptr, at, p, N, n, 1, mask_p, mask_n, None)  # H (P, N block)
        adjoint = _tile(adjoint_ptr, at, p, N, n, 1, mask_p, mask_n, None)  # Ĝ (P, N block)
        dM = _dot(dy, tl.trans(xdt), LOWP, PRECISION, ACC) * _causal_decay(s, T)
        dC += _dot(dM, Bt, LOWP, PRECISION, ACC) + tl.exp(s)[:, None] * _dot(dy, state, LOWP, PRECISION, ACC)
        dB += _dot(tl.trans(dM), Ct, LOWP, PRECISION, ACC) + \
            tl.exp(s_end - s)[:, None] * _dot(xdt, adjoint, LOWP, PRECISION, ACC)
    return dB, dC


@_autotuned(_configs(DBC_STAGES, DBC_TILES), _KEY)
@triton.jit
def _chunk_scan_bwd_dbc_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, dy_ptr, state_ptr, adjoint_ptr, dB_ptr, dC_ptr,
    batch, L, H, P, N, G, rep, n_chunks, n_splits,
    s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h,
    s_B_b, s_B_l, s_B_g, s_B_n, s_C_b, s_C_l, s_C_g, s_C_n, s_dy_b, s_dy_l, s_dy_h, s_dy_p,
    T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_NK: tl.constexpr, HEADS_PER_PROGRAM: tl.constexpr,
    LOWP: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (chunk, batch·group·split, blocks of N). dB, dC (splits, B, L, G, N) contiguous: the sums over
    the split's HEADS_PER_PROGRAM heads of
      dC_t = Σ_u dM'_{tu} B_u + exp(s_t) dy_t H,     dB_u = Σ_t dM'_{tu} C_t + exp(s_T − s_u) x̃_u Ĝ,
    with dM' = (dy x̃ᵀ) ∘ causal decay."""
    c = tl.program_id(0)
    pid = tl.program_id(1).to(tl.int64)
    split = pid % n_splits
    b, g = pid // n_splits // G, pid // n_splits % G
    t = c * T + tl.arange(0, T)
    mask_t = t < L
    n = tl.program_id(2) * BLOCK_NK + tl.arange(0, BLOCK_NK)
    mask_n = n < N
    p = tl.arange(0, BLOCK_P)
    mask_p = p < P
    dB, dC = _group_gradients(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, dy_ptr, state_ptr, adjoint_ptr, b, c, g, split,
                              n, mask_n, t, mask_t, p, mask_p, L, H, P, N, rep, n_chunks,
                              s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h, s_B_b, s_B_l, s_B_g, s_B_n,
                              s_C_b, s_C_l, s_C_g, s_C_n, s_dy_b, s_dy_l, s_dy_h, s_dy_p,
                              T, BLOCK_NK, HEADS_PER_PROGRAM, LOWP, PRECISION, ACC)
    out = (((split * batch + b) * L + t[:, None]) * G + g) * N + n[None, :]
    mask = mask_t[:, None] & mask_n[None, :]
    tl.store(dB_ptr + out, dB, mask=mask)
    tl.store(dC_ptr + out, dC, mask=mask)
