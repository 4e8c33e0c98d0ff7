"""The Mamba-1 selective scan's main kernels in Gluon (Triton's lower-level dialect), for sm_90 GPUs.

Why not plain Triton: a Triton kernel can only walk time inside a tile with ``tl.associative_scan``,
whose lane shuffles and fix-ups are most of the 14 (forward) and 61 (backward) SASS instructions per
(channel, state, step) of ``triton_scan`` (scripts/kernel_stats.py). Gluon states the layout, so here a
channel's states sit in the registers of LPC lanes (N // LPC each) and those lanes walk the chunk's
steps one at a time: a step is an exponential and a few multiply-adds per state, and sums over states
(y, dL/du, dL/dΔ) are in-thread plus log2(LPC) shuffles. A program is (batch, (32 // LPC)·warps
channels, chunk of CHUNK steps); its inputs are staged in shared memory, coalesced, and read back one
step (one row) at a time.

Second version (the first, a lane per channel with per-step shared-memory stores, was correct on an
H200 but slower than triton_scan: shared memory held it to 4-6 warps an SM, and every per-step store
made the compiler put a barrier in the step): per-step results (y, du, dΔ) are collected into register
tiles (one column a step) and stored once per block of steps; the backward keeps a sub-chunk's states
in registers; dB and dC, sums over channels (across threads), are re-laid out within each warp (see
warp_sums_layout), summed in the thread, and added to global memory with relaxed atomics once a sub-chunk.

The chunk structure is ``triton_scan``'s. A program either is one chunk (``SEQUENCE=False``: the state
entering it and the adjoint from later chunks come from ``triton_scan``'s summary and chunk-pass
kernels) or walks all of its channels' chunks in turn (``SEQUENCE=True``: the state is carried forward
and the adjoint backward from chunk to chunk, so those kernels do not run; the forward writes the
chunk-end states and step totals they would have produced). Row-major (B, D, pitch) inputs, or
(CHANNEL_LAST) the mixer's transposed views of (B, L, ·) memory read in place (fourteenth session: their
tiles are loaded and stored channels-fastest; the default for a mixer). On a CUDA GPU these are the scan's
default kernels, walking the sequence (``triton_scan.MAIN_KERNELS``, ``GLUON_WALK``). On an H200,
bf16, forward+backward at 16×4096×1024×16: Triton's 6.508 ms, these walking chunks 5.338, walking the
sequence 4.493; at L = 369: 3.377, 3.524, 3.157; every float64 check passed (experiments/bench/H200.md,
seventh session). Ninth session, the backward's dB/dC sums without shared-memory bank conflicts and
their atomics once a sub-chunk: 4.497 -> 3.354 ms at L = 1024, 3.142 -> 2.862 at L = 369 (H200.md).

Backward. The adjoint g_t = a_{t+1} g_{t+1} + C_t dy_t runs backwards in time and needs h_t at each
step. The chunk is cut into sub-chunks of SUB steps: a forward pass keeps the state entering each
sub-chunk (shared memory); then the sub-chunks run last to first: recompute its SUB states (registers),
walk them backwards. The sub-chunk's epilogue stores du, dΔ, dz: dz's gate factor dout·σ(z)(1 + z(1 − σ(z)))
is staged in shared memory beside dy, and softplus's slope is 1 − exp(−Δ) of the staged steps, so dout, z
and delta are read from global memory once a sub-chunk, not twice (fifteenth session: spills 8 -> 0 bytes
row-major; with channel-last tiles in io_layout, 11 barriers instead of 23; H200.md). KEEP (sixteenth
session): the forward stores the state entering every sub-chunk, so the backward loads it and the first
pass does not run (H200, bf16 fwd+bwd: 1.538 -> 1.436 ms at 16×1536×1024×16, 3.366 -> 2.945 at
16×4096×1024×16; slower at 369 steps).
"""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

LOG2E = gl.constexpr(1.4426950408889634)


@gluon.constexpr_function
def state_layout(BLOCK_N, LPC, WARPS):
    """(channels, states) in registers: a channel's LPC lanes hold BLOCK_N // LPC states each."""
    return gl.BlockedLayout([1, BLOCK_N // LPC], [32 // LPC, LPC], [WARPS, 1], [1, 0])


@gluon.constexpr_function
def io_layout(STEPS, LPC, WARPS):
    """(channels, steps) tiles of row-major memory: a channel's LPC lanes load consecutive steps."""
    return gl.BlockedLayout([1, max(1, min(8, STEPS // LPC))], [32 // LPC, LPC], [WARPS, 1], [1, 0])


@gluon.constexpr_function
def steps_layout(STEPS, LPC, WARPS):
    """(channels, steps) tiles built in registers one step (column) at a time, rows as in state_layout."""
    return gl.BlockedLayout([1, max(1, STEPS // LPC)], [32 // LPC, LPC], [WARPS, 1], [1, 0])


@gluon.constexpr_function
def channel_last_layout(CHANNELS, STEPS, WARPS, VECTOR):
    """(channels, steps) tiles of channel-last memory ((B, L, D) seen as (B, D, L)): a thread holds VECTOR
    consecutive channels, the lanes run along the channels first, the warps along the steps."""
    CHANNELS, STEPS, WARPS, VECTOR = int(CHANNELS), int(STEPS), int(WARPS), int(VECTOR)
    per_thread = max(1, min(VECTOR, CHANNELS, CHANNELS * STEPS // (32 * WARPS)))
    lanes = min(32, max(1, CHANNELS // per_thread))
    return gl.BlockedLayout([per_thread, 1], [lanes, 32 // lanes], [1, WARPS], [0, 1])


@gluon.constexpr_function
def tile_layout(CHANNEL_LAST, CHANNELS, STEPS, LPC, WARPS, VECTOR):
    """The layout (channels, steps) tiles are loaded and stored in: io_layout's for row-major memory,
    channel_last_layout's for channel-last memory. VECTOR: channels a thread holds in the latter (more
    makes wider loads and stores; fewer, fewer registers: scripts/kernel_stats.py --gluon). VECTOR 0: channel-
    last memory in io_layout's tiles too: a warp's load or store then covers 16 channels (LPC 2) at two steps,
    two full 32-byte sectors of bf16, as channel_last_layout's at VECTOR 1 does, and the backward's per-step
    tiles (steps_layout, the same layout at SUB // LPC <= 8) need no layout change before their stores."""
    if bool(CHANNEL_LAST) and int(VECTOR) > 0:
        return channel_last_layout(CHANNELS, STEPS, WARPS, VECTOR)
    return io_layout(STEPS, LPC, WARPS)


@gluon.jit
def _put_column(tile, cols, j: gl.constexpr, values, layout: gl.constexpr):
    """``tile`` with column j replaced by ``values`` (a per-channel vector in the state layout's rows)."""
    values = gl.convert_layout(values, gl.SliceLayout(1, layout))
    return gl.where(cols[None, :] == j, values[:, None], tile)


@gluon.constexpr_function
def rows_layout(ROWS, STEPS, WARPS):
    """(rows, steps) tiles of B, C (states) or of the dB/dC sums."""
    lanes = min(ROWS, 32)
    return gl.BlockedLayout([1, max(1, min(8, STEPS * lanes // 32))], [lanes, 32 // lanes], [WARPS, 1], [1, 0])


@gluon.jit
def _decay_rates(A_ptr, offs_d, offs_n, N, mask, A_IS_LOG: gl.constexpr):
    """A (channels, states) in fp32. A_IS_LOG: A_ptr holds Mamba's A_log and A = -exp(A_log), formed here so
    the model runs no elementwise kernel for it (nor, in the backward, for dA_log = dA · A)."""
    rates = gl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(gl.float32)
    if A_IS_LOG:
        rates = -gl.exp(rates)
    return rates


@gluon.jit
def _softplus_step(pre, mask, SOFTPLUS: gl.constexpr):
    # Same threshold as torch.nn.functional.softplus; zero where masked (a zero step is the identity).
    step = pre
    if SOFTPLUS:
        step = gl.where(pre <= 20.0, gl.log(1.0 + gl.exp(pre)), pre)
    return gl.where(mask, step, 0.0)


@gluon.jit
def _sigmoid(x):
    return 1.0 / (1.0 + gl.exp(-x))


@gluon.jit
def _io_tile(ptr, pid_b, offs_d, t, mask, stride_b, stride_d, stride_t):
    """A (channels, steps) tile of a (B, D, L) tensor, as fp32. One of its strides is 1 (row-major: the
    steps'; channel-last: the channels'), and Triton compiles an integer argument equal to 1 as a constant."""
    offs = pid_b * stride_b + offs_d[:, None] * stride_d + t[None, :] * stride_t
    return gl.load(ptr + offs, mask=mask, other=0.0).to(gl.float32)


@gluon.jit
def _stage_steps(delta_ptr, u_ptr, bias_ptr, step_smem, u_smem, pid_b, offs_d, mask_d, t, mask_t, stride_b,
                 stride_d, stride_t, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr):
    """softplus(delta + bias) and u of a (channels, steps) io tile into (steps, channels) shared memory."""
    m = mask_d[:, None] & mask_t[None, :]
    pre = _io_tile(delta_ptr, pid_b, offs_d, t, m, stride_b, stride_d, stride_t)
    if HAS_BIAS:
        pre += gl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(gl.float32)[:, None]
    step_smem.permute([1, 0]).store(_softplus_step(pre, m, SOFTPLUS))
    u_smem.permute([1, 0]).store(_io_tile(u_ptr, pid_b, offs_d, t, m, stride_b, stride_d, stride_t))


@gluon.jit
def _rows(smem):
    """A 2-D shared buffer seen as rows: ``.index(t)`` is row t (the layout of a rank-1 row)."""
    return smem._reinterpret(smem.dtype, smem.shape, gl.SwizzledSharedLayout(1, 1, 1, [0]))


@gluon.jit
def _stage_rows(ptr, smem, pid_b, offs_n, mask_n, t, mask_t, stride_b, stride_n, stride_t):
    """Rows of B or C, (B, N, L) with any strides, over the steps t, into (steps, states) shared memory."""
    offs = pid_b * stride_b + offs_n[:, None] * stride_n + t[None, :] * stride_t
    rows = gl.load(ptr + offs, mask=mask_n[:, None] & mask_t[None, :], other=0.0).to(gl.float32)
    smem.permute([1, 0]).store(rows)


@gluon.jit
def _scan_fwd_seq_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr, totals_ptr, kept_ptr,
    DIM, L, N, n_chunks, su_b, su_d, su_t: gl.constexpr, sz_b, sz_d, sz_t: gl.constexpr, sB_b, sB_n,
    sB_t: gl.constexpr,
    HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    CHUNK: gl.constexpr, BLOCK_N: gl.constexpr, LPC: gl.constexpr, UNROLL: gl.constexpr, SEQUENCE: gl.constexpr,
    CHANNEL_LAST: gl.constexpr, CL_VECTOR: gl.constexpr, KEEP: gl.constexpr, A_IS_LOG: gl.constexpr,
):
    """y for (32 // LPC)·warps channels. u, delta, out share strides (su_*), z has its own (sz_*), B and C
    share theirs (sB_*). CHANNEL_LAST: u, delta, z, out are channel-last ((B, L, ·) memory), so their tiles
    are loaded and stored channels-fastest; else row-major, steps-fastest. The step strides are compile-time
    constants (1 row-major, the model's widths channel-last): as run-time values each of a thread's steps
    needed its own address register: the channel-last backward spilled 60-124 bytes by channels a thread
    (1-8), against 52-100 with constants (kernel_stats.py --gluon).
    SEQUENCE: the program walks every chunk in turn (grid (B, channel blocks, 1)) carrying the state, and
    writes each chunk's end state and step total (the summary and chunk-pass kernels' results); else it
    is one chunk (grid (..., chunks)) and reads the state entering it.
    KEEP: the state after every UNROLL steps (the backward's sub-chunks) is also stored, in kept_ptr's dtype, at
    kept_ptr (B, D, chunks · CHUNK // UNROLL, N), so the backward need not walk each chunk once to find them."""
    WARPS: gl.constexpr = gl.num_warps()
    BLOCK_D: gl.constexpr = (32 // LPC) * WARPS
    state: gl.constexpr = state_layout(BLOCK_N, LPC, WARPS)
    io: gl.constexpr = tile_layout(CHANNEL_LAST, BLOCK_D, CHUNK, LPC, WARPS, CL_VECTOR)
    rows: gl.constexpr = rows_layout(BLOCK_N, CHUNK, WARPS)
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    channel: gl.constexpr = gl.SliceLayout(1, state)
    per_state: gl.constexpr = gl.SliceLayout(0, state)

    pid_b = gl.program_id(0).to(gl.int64)
    d0 = gl.program_id(1) * BLOCK_D
    io_d = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, io))
    io_md = io_d < DIM

    step_smem = gl.allocate_shared_memory(gl.float32, [CHUNK, BLOCK_D], plain)
    u_smem = gl.allocate_shared_memory(gl.float32, [CHUNK, BLOCK_D], plain)
    # y in blocks of UNROLL steps: one store (and one barrier) a block, not a step.
    y_blocks = gl.allocate_shared_memory(gl.float32, [CHUNK // UNROLL, UNROLL, BLOCK_D], plain)
    B_smem = gl.allocate_shared_memory(gl.float32, [CHUNK, BLOCK_N], plain)
    C_smem = gl.allocate_shared_memory(gl.float32, [CHUNK, BLOCK_N], plain)
    rows_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, rows))
    step_rows, u_rows = _rows(step_smem), _rows(u_smem)
    B_rows, C_rows = _rows(B_smem), _rows(C_smem)
    block: gl.constexpr = steps_layout(UNROLL, LPC, WARPS)
    cols = gl.arange(0, UNROLL, layout=gl.SliceLayout(0, block))
    iob: gl.constexpr = tile_layout(CHANNEL_LAST, BLOCK_D, UNROLL, LPC, WARPS, CL_VECTOR)
    iob_d = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, iob))
    iob_md = iob_d < DIM
    if HAS_D:
        skip = gl.load(D_ptr + iob_d, mask=iob_md, other=0.0).to(gl.float32)

    offs_d = d0 + gl.arange(0, BLOCK_D, layout=channel)
    offs_n = gl.arange(0, BLOCK_N, layout=per_state)
    m_dn = (offs_d < DIM)[:, None] & (offs_n < N)[None, :]
    A2 = _decay_rates(A_ptr, offs_d, offs_n, N, m_dn, A_IS_LOG) * LOG2E
    chunk_row = (pid_b * DIM + offs_d) * n_chunks  # (batch, channel)'s first chunk in states / totals
    if SEQUENCE:
        first_chunk = 0
        chunks_here = n_chunks
        h = gl.zeros([BLOCK_D, BLOCK_N], gl.float32, layout=state)
    else:
        first_chunk = gl.program_id(2)
        chunks_here = 1
        h = gl.load(states_ptr + (chunk_row + first_chunk - 1)[:, None] * N + offs_n[None, :],
                    mask=m_dn & (first_chunk > 0), other=0.0)
    for i in range(chunks_here):
        c = first_chunk + i
        io_t = c * CHUNK + gl.arange(0, CHUNK, layout=gl.SliceLayout(0, io))
        _stage_steps(delta_ptr, u_ptr, bias_ptr, step_smem, u_smem, pid_b, io_d, io_md, io_t, io_t < L, su_b, su_d,
                     su_t, HAS_BIAS, SOFTPLUS)
        rows_t = c * CHUNK + gl.arange(0, CHUNK, layout=gl.SliceLayout(0, rows))
        _stage_rows(B_ptr, B_smem, pid_b, rows_n, rows_n < N, rows_t, rows_t < L, sB_b, sB_n, sB_t)
        _stage_rows(C_ptr, C_smem, pid_b, rows_n, rows_n < N, rows_t, rows_t < L, sB_b, sB_n, sB_t)
        gl.thread_barrier()
        total = gl.zeros([BLOCK_D], gl.float32, layout=channel)
        # UNROLL steps a pass: their loads and exponentials do not wait for the state, so they overlap.
        for t0 in range(0, CHUNK, UNROLL):
            y_block = gl.zeros([BLOCK_D, UNROLL], gl.float32, layout=block)
            for j in gl.static_range(UNROLL):
                step = step_rows.index(t0 + j).load(channel)
                stepu = step * u_rows.index(t0 + j).load(channel)
                Bt = B_rows.index(t0 + j).load(per_state)
                Ct = C_rows.index(t0 + j).load(per_state)
                h = gl.exp2(A2 * step[:, None]) * h + stepu[:, None] * Bt[None, :]
                y_block = _put_column(y_block, cols, j, gl.sum(h * Ct[None, :], axis=1), block)
                if SEQUENCE:
                    total += step  # masked steps are 0
            y_blocks.index(t0 // UNROLL).permute([1, 0]).store(y_block)
            if KEEP:
                kept_at = chunk_row * (CHUNK // UNROLL) + c * (CHUNK // UNROLL) + t0 // UNROLL
                gl.store(kept_ptr + kept_at[:, None] * N + offs_n[None, :], h.to(kept_ptr.dtype.element_ty),
                         mask=m_dn)
        if SEQUENCE:  # what the backward reads: the state at the chunk's end and the chunk's step total
            gl.store(states_ptr + (chunk_row + c)[:, None] * N + offs_n[None, :], h, mask=m_dn)
            gl.store(totals_ptr + chunk_row + c, total, mask=offs_d < DIM)
        gl.thread_barrier()

        u_blocks = u_smem._reinterpret(gl.float32, [CHUNK // UNROLL, UNROLL, BLOCK_D], y_blocks.layout)
        for b in range(CHUNK // UNROLL):  # a loop, not unrolled: unrolled, its addresses take 100 registers
            t = c * CHUNK + b * UNROLL + gl.arange(0, UNROLL, layout=gl.SliceLayout(0, iob))
            m = iob_md[:, None] & (t < L)[None, :]
            y = y_blocks.index(b).permute([1, 0]).load(iob)
            if HAS_D:
                y += skip[:, None] * u_blocks.index(b).permute([1, 0]).load(iob)
            if HAS_Z:
                z = _io_tile(z_ptr, pid_b, iob_d, t, m, sz_b, sz_d, sz_t)
                y *= z * _sigmoid(z)
            gl.store(out_ptr + pid_b * su_b + iob_d[:, None] * su_d + t[None, :] * su_t,
                     y.to(out_ptr.dtype.element_ty), mask=m)
        gl.thread_barrier()  # the next chunk's staging overwrites what this one read


@gluon.jit
def _stage_dy(dout_ptr, z_ptr, dy_smem, dgate_smem, pid_b, offs_d, t, m, stride_b, stride_d, stride_t, sz_b, sz_d,
              sz_t, HAS_Z: gl.constexpr):
    """dL/dy of the scan itself (before the silu(z) gate) into (steps, channels) shared memory, and with z
    dL/dz / y (the gate's derivative times dout), so the epilogue's dz needs y only."""
    dy = _io_tile(dout_ptr, pid_b, offs_d, t, m, stride_b, stride_d, stride_t)
    if HAS_Z:
        z = _io_tile(z_ptr, pid_b, offs_d, t, m, sz_b, sz_d, sz_t)
        sig = _sigmoid(z)
        dgate_smem.permute([1, 0]).store(dy * sig * (1.0 + z * (1.0 - sig)))
        dy = dy * z * sig
    dy_smem.permute([1, 0]).store(dy)


@gluon.jit
def _softplus_slope(step):
    """d softplus(pre) / d pre = sigmoid(pre) = 1 - exp(-softplus(pre)), from the step itself (1 where the
    step is pre, above 20; a short series where the exponential would cancel)."""
    return gl.where(step < 0.01, step * (1.0 - step * (0.5 - step * (1.0 / 6.0))),
                    1.0 - gl.exp2(-LOG2E * step))


# A step's dB and dC products, (channels, 2·states), summed over the program's channels. Each thread
# holds its lane's states, dB's then dC's (2 · BLOCK_N // LPC floats): "lane-major" column order, column
# = lane part · 2S + (0 dB | 1 dC) · S + state within the part, S = BLOCK_N // LPC. The tile is then
# re-laid out within each warp (warp_sums_layout: the warp's rows in a thread's registers, its lanes on
# the columns; Triton converts through shared-memory scratch, 4 STS.128 + 4 LDSM a warp and step, with a
# barrier a step for the scratch's reuse) and summed over those rows in the thread. The warps' sums are
# added once a sub-chunk. Before (eighth session) the products went through a shared tile read back by
# columns: 16 scalar loads a step, bank conflicts on both sides (16 wavefronts a STS.128 instead of 4),
# and an atomic instruction a step over 32 rows of dB/dC. Ninth session, on an H200: that tile swizzled
# and lane-major (709b960), the sums' atomics once a sub-chunk (fb1dd26), its reads conflict-free
# (5230175), then this re-layout: the backward at 16×4096×1024×16 bf16 3.847 -> 3.462 -> 2.954 -> 2.774
# -> 2.704 ms (gpu_scan_tiles.py, separate calls for each step; float64 checks passed each time).
@gluon.constexpr_function
def products_registers(BLOCK_N, LPC, WARPS):
    """The product tile in registers, lane-major: a thread's dB and dC states side by side."""
    return gl.BlockedLayout([1, 2 * BLOCK_N // LPC], [32 // LPC, LPC], [WARPS, 1], [1, 0])


@gluon.constexpr_function
def warp_sums_layout(ROWS, COLS, WARPS):
    """(channels, 2·states) with each warp's rows (channels) as products_registers has them, but in each
    thread's registers, and the warp's lanes on the columns (on the top rows too when COLS < 32)."""
    ROWS, COLS, WARPS = int(ROWS), int(COLS), int(WARPS)
    rows_a_warp = ROWS // WARPS
    cols = [1 << b for b in range(COLS.bit_length() - 1)]
    rows = [1 << b for b in range(rows_a_warp.bit_length() - 1)]
    lanes = [[0, c] for c in cols[:5]]
    while len(lanes) < 5:
        lanes.append([rows.pop(), 0])
    registers = [[r, 0] for r in rows] + [[0, c] for c in cols[5:]]
    warps = [[rows_a_warp << b, 0] for b in range(WARPS.bit_length() - 1)]
    return gl.DistributedLinearLayout(registers, lanes, warps, [], [ROWS, COLS])


@gluon.jit
def _lane_major_columns(cols, S: gl.constexpr):
    """Of lane-major columns (products_registers): whether each is dB's (else dC's), and its state."""
    return (cols // S) % 2 == 0, (cols // (2 * S)) * S + cols % S


@gluon.constexpr_function
def staged_layout(SUB, WARPS):
    """(lane-major columns, steps, warps) of a sub-chunk's per-warp dB/dC sums: the warps' sums in a
    thread's registers (added there), a warp's lanes along the steps, so an atomic add covers a run of
    consecutive steps of a state's row (32 bytes at SUB = 8)."""
    return gl.BlockedLayout([1, 1, WARPS], [32 // SUB, SUB, 1], [WARPS, 1, 1], [2, 1, 0])


@gluon.jit
def _lane_major(dB_part, dC_part, BLOCK_D: gl.constexpr, BLOCK_N: gl.constexpr, LPC: gl.constexpr,
                layout: gl.constexpr):
    """(channels, states) dB and dC products as one (channels, 2·states) tile in lane-major column order
    (see products_registers); only registers are renamed, no data moves between threads."""
    S: gl.constexpr = BLOCK_N // LPC
    both = gl.join(dB_part.reshape([BLOCK_D, LPC, S]), dC_part.reshape([BLOCK_D, LPC, S]))
    both = both.permute(0, 1, 3, 2).reshape([BLOCK_D, 2 * BLOCK_N])
    return gl.convert_layout(both, layout, assert_trivial=True)


@gluon.jit
def _scan_bwd_seq_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, later_ptr, kept_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    DIM, L, N, n_chunks, su_b, su_d, su_t: gl.constexpr, sz_b, sz_d, sz_t: gl.constexpr, sB_b, sB_n,
    sB_t: gl.constexpr, sdB_b, sdB_n,
    HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    CHUNK: gl.constexpr, SUB: gl.constexpr, BLOCK_N: gl.constexpr, LPC: gl.constexpr, SEQUENCE: gl.constexpr,
    PARTIALS: gl.constexpr, CHANNEL_LAST: gl.constexpr, CL_VECTOR: gl.constexpr, KEEP: gl.constexpr,
    A_IS_LOG: gl.constexpr,
):
    """Gradients for (32 // LPC)·warps channels. u, delta, dout, du, ddelta, dz share strides (su_*), z has
    its own (sz_*), B and C share theirs (sB_*); CHANNEL_LAST as in the forward. dB, dC are (B, N, ·) fp32 with unit step stride, added to atomically, or, with PARTIALS,
    dB_ptr is (B, channel blocks, L, 2·BLOCK_N) fp32 and gets each program's sums (dB's states, then dC's),
    stored, for the caller to add up over the blocks (no atomics; dC_ptr is not used). SEQUENCE: the
    program walks every chunk, last to first (grid (B, channel blocks, 1)), carrying the adjoint from one
    chunk into the one before (``later_ptr`` is not read), and dA (B, D, 1, N), dD and dbias (B, D, 1)
    get its sums; else it is one chunk (grid (..., chunks)), starts from the adjoint ``later_ptr`` holds
    for the chunk after it, and dA (B, D, chunks, N), dD and dbias (B, D, chunks) get the chunk's sums.
    KEEP: the states the forward kept after every SUB steps (kept_ptr, see the forward) are read instead of
    recomputed by a first walk over the chunk (pass 1), which then does not run."""
    WARPS: gl.constexpr = gl.num_warps()
    BLOCK_D: gl.constexpr = (32 // LPC) * WARPS
    SUBS: gl.constexpr = CHUNK // SUB
    state: gl.constexpr = state_layout(BLOCK_N, LPC, WARPS)
    # (channels, steps) tiles of a sub-chunk built in registers a step at a time (io), and the layout
    # tiles are loaded and stored in (tile: io itself for row-major memory).
    io: gl.constexpr = steps_layout(SUB, LPC, WARPS)
    tile: gl.constexpr = tile_layout(CHANNEL_LAST, BLOCK_D, SUB, LPC, WARPS, CL_VECTOR)  # io_layout(SUB, …) is io
    rows: gl.constexpr = rows_layout(BLOCK_N, SUB, WARPS)
    warp_sums: gl.constexpr = warp_sums_layout(BLOCK_D, 2 * BLOCK_N, WARPS)
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    channel: gl.constexpr = gl.SliceLayout(1, state)
    per_state: gl.constexpr = gl.SliceLayout(0, state)

    pid_b = gl.program_id(0).to(gl.int64)
    d0 = gl.program_id(1) * BLOCK_D
    io_s = gl.arange(0, SUB, layout=gl.SliceLayout(0, io))
    tile_d = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, tile))
    tile_md = tile_d < DIM
    tile_s = gl.arange(0, SUB, layout=gl.SliceLayout(0, tile))
    rows_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, rows))
    rows_s = gl.arange(0, SUB, layout=gl.SliceLayout(0, rows))
    mask_rows_n = rows_n < N
    # The sums' columns are lane-major. A step's per-warp sums are staged in shared memory; once the
    # sub-chunk is done they are added over the warps and, PARTIALS, stored at dB_ptr[b, channel block,
    # t, 2·BLOCK_N] (dB's, then dC's), else added to dB and dC (B, N, ·) atomically (a step at a time, an
    # atomic instruction hit 32 rows: 0.58 of the backward's 3.86 ms, eighth session).
    S: gl.constexpr = BLOCK_N // LPC
    staged_warps: gl.constexpr = staged_layout(SUB, WARPS)
    staged: gl.constexpr = gl.SliceLayout(2, staged_warps)
    sum_is_B, sum_state = _lane_major_columns(gl.arange(0, 2 * BLOCK_N, layout=gl.SliceLayout(1, staged)), S)
    sum_mask = sum_state < N
    staged_s = gl.arange(0, SUB, layout=gl.SliceLayout(0, staged))
    if PARTIALS:
        sum_at = (((pid_b * gl.num_programs(1) + gl.program_id(1)) * L) * (2 * BLOCK_N)
                  + gl.where(sum_is_B, sum_state, sum_state + BLOCK_N))
        sum_step = 2 * BLOCK_N
    else:
        sum_at = pid_b * sdB_b + sum_state * sdB_n
        sum_step = 1

    ckpt = gl.allocate_shared_memory(gl.float32, [1 if KEEP else SUBS, BLOCK_D, BLOCK_N], plain)
    step_smem = gl.allocate_shared_memory(gl.float32, [SUB, BLOCK_D], plain)
    u_smem = gl.allocate_shared_memory(gl.float32, [SUB, BLOCK_D], plain)
    dy_smem = gl.allocate_shared_memory(gl.float32, [SUB, BLOCK_D], plain)
    dgate_smem = gl.allocate_shared_memory(gl.float32, [SUB if HAS_Z else 1, BLOCK_D], plain)
    B_smem = gl.allocate_shared_memory(gl.float32, [SUB, BLOCK_N], plain)
    C_smem = gl.allocate_shared_memory(gl.float32, [SUB, BLOCK_N], plain)
    products: gl.constexpr = products_registers(BLOCK_N, LPC, WARPS)
    # A step's per-warp sums: row r of sums_rows, (warps · 2·states); read back as (steps, warps, 2·states).
    sums_smem = gl.allocate_shared_memory(gl.float32, [SUB, WARPS * 2 * BLOCK_N], plain)
    sums_rows = _rows(sums_smem)
    sums_3d = sums_smem._reinterpret(gl.float32, [SUB, WARPS, 2 * BLOCK_N], gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0]))
    step_rows, u_rows, dy_rows = _rows(step_smem), _rows(u_smem), _rows(dy_smem)
    B_rows, C_rows = _rows(B_smem), _rows(C_smem)

    offs_d = d0 + gl.arange(0, BLOCK_D, layout=channel)
    offs_n = gl.arange(0, BLOCK_N, layout=per_state)
    m_dn = (offs_d < DIM)[:, None] & (offs_n < N)[None, :]
    An = _decay_rates(A_ptr, offs_d, offs_n, N, m_dn, A_IS_LOG)
    A2 = An * LOG2E
    # g is dL/dh, a_next the decay of the step after the one g is at.
    g = gl.zeros([BLOCK_D, BLOCK_N], gl.float32, layout=state)
    a_next = gl.full([BLOCK_D, BLOCK_N], 1.0, gl.float32, layout=state)
    dA_acc = gl.zeros([BLOCK_D, BLOCK_N], gl.float32, layout=state)
    dD_acc = gl.zeros([BLOCK_D], gl.float32, layout=gl.SliceLayout(1, tile))
    dbias_acc = gl.zeros([BLOCK_D], gl.float32, layout=gl.SliceLayout(1, tile))
    if SEQUENCE:
        chunks_here = n_chunks
    else:
        chunks_here = 1
    for i in range(chunks_here):
        if SEQUENCE:
            c = n_chunks - 1 - i
        else:
            c = gl.program_id(2)
        chunk_at = ((pid_b * DIM + offs_d) * n_chunks + c) * N
        if not KEEP:
            h = gl.load(states_ptr + chunk_at[:, None] - N + offs_n[None, :], mask=m_dn & (c > 0), other=0.0)
            # Pass 1: the state entering each sub-chunk.
            for k in range(SUBS):
                ckpt.index(k).store(h)
                tile_t = c * CHUNK + k * SUB + tile_s
                _stage_steps(delta_ptr, u_ptr, bias_ptr, step_smem, u_smem, pid_b, tile_d, tile_md, tile_t,
                             tile_t < L, su_b, su_d, su_t, HAS_BIAS, SOFTPLUS)
                rows_t = c * CHUNK + k * SUB + rows_s
                _stage_rows(B_ptr, B_smem, pid_b, rows_n, mask_rows_n, rows_t, rows_t < L, sB_b, sB_n, sB_t)
                gl.thread_barrier()
                for j in gl.static_range(SUB):
                    step = step_rows.index(j).load(channel)
                    stepu = step * u_rows.index(j).load(channel)
                    h = gl.exp2(A2 * step[:, None]) * h + stepu[:, None] * B_rows.index(j).load(per_state)[None, :]
                gl.thread_barrier()

        # Pass 2: the sub-chunks last to first, starting with what the next chunk sends back: carried in
        # (SEQUENCE), or a_s g_s at its first step s as the summary and chunk-pass kernels left it.
        if not SEQUENCE:
            g = gl.load(later_ptr + chunk_at[:, None] + N + offs_n[None, :], mask=m_dn & (c + 1 < n_chunks), other=0.0)
            a_next = gl.full([BLOCK_D, BLOCK_N], 1.0, gl.float32, layout=state)
        for kk in range(SUBS):
            k = SUBS - 1 - kk
            if KEEP:  # the state entering sub-chunk k: kept after the one before it (none before the first)
                kept = (pid_b * DIM + offs_d) * (n_chunks * SUBS) + c * SUBS + k - 1
                h_entering = gl.load(kept_ptr + kept[:, None] * N + offs_n[None, :],
                                     mask=m_dn & (c * SUBS + k > 0), other=0.0).to(gl.float32)
            tile_t = c * CHUNK + k * SUB + tile_s
            tile_mt = tile_t < L
            m = tile_md[:, None] & tile_mt[None, :]
            _stage_steps(delta_ptr, u_ptr, bias_ptr, step_smem, u_smem, pid_b, tile_d, tile_md, tile_t, tile_mt,
                         su_b, su_d, su_t, HAS_BIAS, SOFTPLUS)
            _stage_dy(dout_ptr, z_ptr, dy_smem, dgate_smem, pid_b, tile_d, tile_t, m, su_b, su_d, su_t, sz_b, sz_d, sz_t, HAS_Z)
            rows_t = c * CHUNK + k * SUB + rows_s
            _stage_rows(B_ptr, B_smem, pid_b, rows_n, mask_rows_n, rows_t, rows_t < L, sB_b, sB_n, sB_t)
            _stage_rows(C_ptr, C_smem, pid_b, rows_n, mask_rows_n, rows_t, rows_t < L, sB_b, sB_n, sB_t)
            gl.thread_barrier()
            # The sub-chunk's states, kept in registers (SUB tiles), and y for dz.
            if KEEP:
                h = h_entering
            else:
                h = ckpt.index(k).load(state)
            hs = ()
            y = gl.zeros([BLOCK_D, SUB], gl.float32, layout=io)
            for j in gl.static_range(SUB):
                step = step_rows.index(j).load(channel)
                stepu = step * u_rows.index(j).load(channel)
                h = gl.exp2(A2 * step[:, None]) * h + stepu[:, None] * B_rows.index(j).load(per_state)[None, :]
                hs = hs + (h,)
                if HAS_Z:
                    y = _put_column(y, io_s, j, gl.sum(h * C_rows.index(j).load(per_state)[None, :], axis=1), io)
            du = gl.zeros([BLOCK_D, SUB], gl.float32, layout=io)
            dstep = gl.zeros([BLOCK_D, SUB], gl.float32, layout=io)
            for r in gl.static_range(SUB - 1, -1, -1):  # the steps, walking backwards
                step = step_rows.index(r).load(channel)
                u = u_rows.index(r).load(channel)
                dy = dy_rows.index(r).load(channel)
                Bt = B_rows.index(r).load(per_state)[None, :]
                a = gl.exp2(A2 * step[:, None])
                g = a_next * g + C_rows.index(r).load(per_state)[None, :] * dy[:, None]
                h = hs[r]
                stepu = (step * u)[:, None]
                # a_t h_{t-1} = h_t - x_t, so dL/da_t · a_t = g (h - x) without h_{t-1}.
                ga = g * (h - stepu * Bt)
                dA_acc += ga * step[:, None]
                gB = gl.sum(g * Bt, axis=1)
                du = _put_column(du, io_s, r, step * gB, io)
                dstep = _put_column(dstep, io_s, r, gl.sum(ga * An, axis=1) + u * gB, io)
                both = gl.convert_layout(_lane_major(g * stepu, h * dy[:, None], BLOCK_D, BLOCK_N, LPC, products),
                                         warp_sums)
                per_warp = gl.sum(both.reshape([WARPS, BLOCK_D // WARPS, 2 * BLOCK_N]), axis=1)
                sums_rows.index(r).store(per_warp.reshape([WARPS * 2 * BLOCK_N]))
                a_next = a

            # This sub-chunk's du, dΔ, dz (channels × steps, coalesced: the tiles built a step at a time
            # change to the load/store layout first, a no-op for row-major memory).
            du = gl.convert_layout(du, tile)
            dstep = gl.convert_layout(dstep, tile)
            tile_t = c * CHUNK + k * SUB + tile_s
            m = tile_md[:, None] & (tile_t < L)[None, :]
            dy = dy_smem.permute([1, 0]).load(tile)
            u = u_smem.permute([1, 0]).load(tile)
            grad_at = pid_b * su_b + tile_d[:, None] * su_d + tile_t[None, :] * su_t
            if HAS_D:
                skip = gl.load(D_ptr + tile_d, mask=tile_md, other=0.0).to(gl.float32)
                dD_acc += gl.sum(dy * u, axis=1)
                du += dy * skip[:, None]
            if HAS_Z:
                y = gl.convert_layout(y, tile)
                if HAS_D:
                    y += skip[:, None] * u
                dgate = dgate_smem.permute([1, 0]).load(tile)
                gl.store(dz_ptr + grad_at, (dgate * y).to(dz_ptr.dtype.element_ty), mask=m)
            if SOFTPLUS:
                dstep *= _softplus_slope(step_smem.permute([1, 0]).load(tile))
            dstep = gl.where(m, dstep, 0.0)
            dbias_acc += gl.sum(dstep, axis=1)
            gl.store(du_ptr + grad_at, du.to(du_ptr.dtype.element_ty), mask=m)
            gl.store(ddelta_ptr + grad_at, dstep.to(ddelta_ptr.dtype.element_ty), mask=m)
            gl.thread_barrier()
            # (sums_smem is next written after the next sub-chunk's staging barrier)
            t = c * CHUNK + k * SUB + staged_s[None, :]
            sums = gl.sum(sums_3d.permute([2, 0, 1]).load(staged_warps), axis=2)
            sums_at = sum_at[:, None] + t * sum_step
            sums_m = sum_mask[:, None] & (t < L)
            if PARTIALS:
                gl.store(dB_ptr + sums_at, sums, mask=sums_m)
            else:
                gl.atomic_add(dB_ptr + sums_at, sums, mask=sums_m & sum_is_B[:, None], sem="relaxed")
                gl.atomic_add(dC_ptr + sums_at, sums, mask=sums_m & (~sum_is_B)[:, None], sem="relaxed")

    if SEQUENCE:
        part = 0
        parts = 1
    else:
        part = gl.program_id(2)
        parts = n_chunks
    if A_IS_LOG:  # dL/dA_log = dL/dA · A
        dA_acc = dA_acc * An
    gl.store(dA_ptr + ((pid_b * DIM + offs_d) * parts + part)[:, None] * N + offs_n[None, :], dA_acc, mask=m_dn)
    partial_at = (pid_b * DIM + tile_d) * parts + part
    if HAS_D:
        gl.store(dD_ptr + partial_at, dD_acc, mask=tile_md)
    if HAS_BIAS:
        gl.store(dbias_ptr + partial_at, dbias_acc, mask=tile_md)

