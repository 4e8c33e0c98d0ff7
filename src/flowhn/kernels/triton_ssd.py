"""Mamba-2 SSD on the GPU: our Triton kernels (``triton_ssd_kernels``) as ``torch.library`` custom ops.

``ssd_gpu`` is what ``kernels.ssd(..., backend="triton")`` runs. Two implementations:

* ``impl="triton"`` (default): the fused chunk kernels. Forward and backward are the custom ops
  ``flowhn::ssd_fwd`` / ``flowhn::ssd_bwd`` with fake (meta) shapes and ``register_autograd``, so
  ``torch.compile`` keeps one graph across them. With ``recompute`` the backward keeps only the inputs
  and recomputes the chunk states (a matmul per chunk and one pass over the chunks); without it the
  forward also keeps the states entering each chunk, (batch, chunks, heads, P, N) fp32.
* ``impl="compiled_chunked"``: the earlier path, the PyTorch chunked SSD (``ssd_chunked``) under
  ``torch.compile``, with ``recompute`` by ``torch.utils.checkpoint``. Kept for comparison
  (scripts/gpu_ssd.py times both).

``chunk_size`` is the kernels' step tile: rounded up to a power of two of at least 16 (``tl.dot``'s
smallest tile); any L works (the last chunk is masked). Results do not depend on it beyond rounding.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
from torch.utils.checkpoint import checkpoint

from flowhn.kernels import triton_ssd_kernels as K
from flowhn.kernels.ssd_chunked import ssd_chunked

_HALF = (torch.bfloat16, torch.float16)
# dynamic=False: training runs one shape, and static shapes let inductor pick the best matmul tiles.
_ssd_compiled = torch.compile(ssd_chunked, dynamic=False)
# A dB/dC program sums this many heads of a group at most (fewer when they do not divide the group).
MAX_HEADS_PER_PROGRAM = 8
# N block of the interpreter runs (the GPU autotunes it): smaller than the test states, so the N loops run.
_INTERPRETER_BLOCK_NK = 16

_Tensor = torch.Tensor
_MaybeTensor = Optional[torch.Tensor]


def _chunk(chunk_size: int) -> int:
    return max(16, triton.next_power_of_2(chunk_size))


def _n_chunks(length: int, chunk: int) -> int:
    return (length + chunk - 1) // chunk


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _flags(x: torch.Tensor, P: int) -> dict:
    fp64 = x.dtype == torch.float64
    return dict(BLOCK_P=max(16, triton.next_power_of_2(P)), LOWP=x.dtype in _HALF,
                PRECISION="ieee" if fp64 else K.FP32_DOT_PRECISION, ACC=K.tl.float64 if fp64 else K.tl.float32)


def _launch(kernel, grid, *args, **meta):
    if not isinstance(kernel, triton.runtime.Autotuner):  # the interpreter: fixed tiles
        meta.setdefault("BLOCK_NK", _INTERPRETER_BLOCK_NK)
    kernel[grid](*args, **meta)


def _heads_per_program(rep: int) -> int:
    return max(d for d in range(1, min(rep, MAX_HEADS_PER_PROGRAM) + 1) if rep % d == 0)


def _strides(*tensors):
    return [s for t in tensors for s in t.stride()]


# The pass over chunks: "loop" (``_state_pass_kernel``, one chunk a step) or "prefetch"
# (``_state_pass_prefetch_kernel``, STATE_PASS_CHUNKS chunks' loads at once). On an H200 (seventh
# session, `scripts/gpu_ssd.py --state-pass`, experiments/bench/H200.md) the prefetching pass took
# 0.126 ms where the loop took 0.398 (16×16×24×64×128, one direction; ~3.2 TB/s against ~1.0) with
# the same result bit for bit, and Mamba-2 135M went from 174,705 to 202,170 tok/s: it is the default.
# The environment variable lets a process pick either.
STATE_PASS = os.environ.get("FLOWHN_SSD_STATE_PASS", "prefetch")
STATE_PASS_CHUNKS = 16
STATE_PASS_BLOCK = 512  # columns of P·N a program of the prefetching pass (4 warps, 4 a thread)


def state_pass(state, adjoint, total, heads, n_chunks, with_state, with_adjoint, acc, impl=None,
               state_out=None, adjoint_out=None):
    """S (``state``, (batch, chunks, heads, P, N)) into the states entering each chunk, and K (``adjoint``)
    into the adjoints of each chunk's end state; ``total`` (batch, heads, chunks) holds each chunk's summed
    log decay. Written to ``state_out`` / ``adjoint_out`` (same shape, any float dtype: the pass carries in
    ``acc`` and rounds only what it stores), in place where they are None. ``impl``: "loop" or "prefetch"
    (default ``STATE_PASS``)."""
    impl = impl or STATE_PASS
    state_out = state if state_out is None else state_out
    adjoint_out = adjoint if adjoint_out is None else adjoint_out
    buffer = state if with_state else adjoint
    batch, PN = buffer.shape[0], buffer[0, 0, 0].numel()
    first, directions = (0 if with_state else 1), int(with_state) + int(with_adjoint)
    buffers = (state, adjoint, state_out, adjoint_out, total, heads, PN, n_chunks, first)
    if impl == "loop":
        block = min(1024, triton.next_power_of_2(PN))
        K._state_pass_kernel[(triton.cdiv(PN, block), batch * heads, directions)](*buffers, BLOCK=block, ACC=acc)
    elif impl == "prefetch":
        block = min(STATE_PASS_BLOCK, triton.next_power_of_2(PN))
        K._state_pass_prefetch_kernel[(triton.cdiv(PN, block), batch * heads, directions)](
            *buffers, BLOCK=block, CHUNKS=STATE_PASS_CHUNKS, ACC=acc)
    else:
        raise ValueError(f"triton_ssd.STATE_PASS must be 'loop' or 'prefetch', got {impl!r}")


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the states the pass over chunks hands on (entering states H, end-state adjoints Ĝ).
    bf16/fp16 inputs: their own dtype, as mamba-ssm's SSD does. Every matmul that reads them takes bf16
    operands anyway (``_dot`` with LOWP), so only the dA term ⟨Ĝ, H⟩ sees the rounding; and the
    (batch, chunks, heads, P, N) tensors are the SSD's largest: at the Mamba-2 1B layer 0.54 GB a layer in
    fp32, read and written five times a step. The chunk sums S and K stay fp32 (each is rounded once
    when stored, never accumulated in low precision)."""
    return x.dtype if x.dtype in _HALF else _acc_dtype(x)


def _chunk_states(x, dt, A, B, C, dy, chunk, with_state, with_adjoint):
    """Per chunk: S (what it adds to the state), K (its adjoint pull), and its total log decay; then the
    passes over chunks turn S into entering states H and K into end-state adjoints Ĝ (``_state_dtype``:
    in place when that is the accumulation dtype)."""
    batch, length, heads, P = x.shape
    groups, N = B.shape[2], B.shape[3]
    n_chunks = _n_chunks(length, chunk)
    acc, passed = _acc_dtype(x), _state_dtype(x)
    empty = lambda dtype: torch.empty(batch, n_chunks, heads, P, N, device=x.device, dtype=dtype)  # noqa: E731
    state = empty(acc) if with_state else x.new_empty(0, dtype=acc)
    adjoint = empty(acc) if with_adjoint else x.new_empty(0, dtype=acc)
    total = torch.empty(batch, heads, n_chunks, device=x.device, dtype=acc)
    dy_or_x = dy if with_adjoint else x
    flags = _flags(x, P)
    _launch(K._chunk_state_kernel, (n_chunks, batch * heads),
            x, dt, A, B, C, dy_or_x, state, adjoint, total,
            length, heads, P, N, heads // groups, n_chunks, *_strides(x, dt, B, C, dy_or_x),
            T=chunk, WITH_STATE=with_state, WITH_ADJOINT=with_adjoint, **flags)
    if passed == acc:
        state_out, adjoint_out = state, adjoint
    else:
        state_out = empty(passed) if with_state else state
        adjoint_out = empty(passed) if with_adjoint else adjoint
    state_pass(state, adjoint, total, heads, n_chunks, with_state, with_adjoint, flags["ACC"],
               state_out=state_out, adjoint_out=adjoint_out)
    return state_out, adjoint_out


@torch.library.custom_op("flowhn::ssd_fwd", mutates_args=())
def _ssd_fwd(x: _Tensor, dt: _Tensor, A: _Tensor, B: _Tensor, C: _Tensor, D: _MaybeTensor, chunk: int,
             keep_states: bool) -> tuple[_Tensor, _Tensor]:
    """(y (batch, L, H, P) in x's dtype, the states entering each chunk (batch, chunks, H, P, N) in
    ``_state_dtype`` if ``keep_states`` else an empty tensor)."""
    batch, length, heads, P = x.shape
    groups, N = B.shape[2], B.shape[3]
    n_chunks = _n_chunks(length, chunk)
    state, _ = _chunk_states(x, dt, A, B, C, None, chunk, with_state=True, with_adjoint=False)
    y = torch.empty(batch, length, heads, P, device=x.device, dtype=x.dtype)
    _launch(K._chunk_scan_fwd_kernel, (n_chunks, batch * heads),
            x, dt, A, B, C, x if D is None else D, state, y,
            length, heads, P, N, heads // groups, n_chunks, *_strides(x, dt, B, C),
            T=chunk, HAS_D=D is not None, **_flags(x, P))
    return y, (state if keep_states else state.new_empty(0))


@_ssd_fwd.register_fake
def _(x, dt, A, B, C, D, chunk, keep_states):
    batch, length, heads, P = x.shape
    shape = (batch, _n_chunks(length, chunk), heads, P, B.shape[3]) if keep_states else (0,)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(shape, dtype=_state_dtype(x))


@torch.library.custom_op("flowhn::ssd_bwd", mutates_args=())
def _ssd_bwd(dy: _Tensor, x: _Tensor, dt: _Tensor, A: _Tensor, B: _Tensor, C: _Tensor, D: _MaybeTensor,
             states: _Tensor, chunk: int) -> list[_Tensor]:
    """[dx, ddt, dA, dB, dC, dD (empty without D)]. ``states``: the forward's entering states, or empty
    to recompute them."""
    batch, length, heads, P = x.shape
    groups, N = B.shape[2], B.shape[3]
    rep, n_chunks = heads // groups, _n_chunks(length, chunk)
    acc = _acc_dtype(x)
    kept = states.numel() > 0
    state, adjoint = _chunk_states(x, dt, A, B, C, dy, chunk, with_state=not kept, with_adjoint=True)
    if kept:
        state = states
    flags = _flags(x, P)
    dx = torch.empty(batch, length, heads, P, device=x.device, dtype=x.dtype)
    ddt = torch.empty(batch, length, heads, device=x.device, dtype=acc)
    dA = torch.empty(batch, heads, n_chunks, device=x.device, dtype=acc)
    dD = torch.empty_like(dA) if D is not None else None
    strides = _strides(x, dt, B, C, dy)
    _launch(K._chunk_scan_bwd_dx_kernel, (n_chunks, batch * heads),
            x, dt, A, B, C, x if D is None else D, dy, state, adjoint, dx, ddt, dA, dA if dD is None else dD,
            length, heads, P, N, rep, n_chunks, *strides, T=chunk, HAS_D=D is not None, **flags)
    per_program = _heads_per_program(rep)
    splits = rep // per_program
    dB = torch.empty(splits, batch, length, groups, N, device=x.device, dtype=acc)
    dC = torch.empty_like(dB)
    # Its head loop is not software-pipelined: see K.DBC_STAGES (a bf16 "illegal memory access" on Hopper).
    _launch(K._chunk_scan_bwd_dbc_kernel,
            lambda meta: (n_chunks, batch * groups * splits, triton.cdiv(N, meta["BLOCK_NK"])),
            x, dt, A, B, C, dy, state, adjoint, dB, dC,
            batch, length, heads, P, N, groups, rep, n_chunks, splits, *strides,
            T=chunk, HEADS_PER_PROGRAM=per_program, **flags)
    dB, dC = (t[0] if splits == 1 else t.sum(0) for t in (dB, dC))
    return [dx, ddt.to(dt.dtype), dA.sum((0, 2)).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            x.new_empty(0) if D is None else dD.sum((0, 2)).to(D.dtype)]


@_ssd_bwd.register_fake
def _(dy, x, dt, A, B, C, D, states, chunk):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return [like(x), like(dt), like(A), like(B), like(C), x.new_empty(0) if D is None else like(D)]


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, chunk, _keep = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, output[1])
    ctx.chunk = chunk


def _backward(ctx, dy, _dstates):
    x, dt, A, B, C, D, states = ctx.saved_tensors
    dx, ddt, dA, dB, dC, dD = _ssd_bwd(dy, x, dt, A, B, C, D, states, ctx.chunk)
    return dx, ddt, dA, dB, dC, (None if D is None else dD), None, None


_ssd_fwd.register_autograd(_backward, setup_context=_setup_context)


def _check(x, dt, A, B, C, D):
    if x.dim() != 4 or B.dim() != 4:
        raise ValueError(f"ssd: x must be (batch, length, heads, head_dim) and B/C (batch, length, groups, state); "
                         f"got x {tuple(x.shape)}, B {tuple(B.shape)}")
    batch, length, heads, _ = x.shape
    expected = {"dt": (dt, (batch, length, heads)), "A": (A, (heads,)), "D": (D, (heads,)),
                "C": (C, tuple(B.shape))}
    for key, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"ssd: {key} has shape {tuple(tensor.shape)}, expected {shape} for x {tuple(x.shape)}")
    if B.shape[:2] != (batch, length) or heads % B.shape[2]:
        raise ValueError(f"ssd: B {tuple(B.shape)} must be (batch, length, groups, state) with groups dividing "
                         f"the {heads} heads of x {tuple(x.shape)}")


def ssd_triton(x, dt, A, B, C, D=None, chunk_size=64, recompute=True):
    """Same contract as ``reference.ssd_sequential``; differentiable in every tensor input."""
    _check(x, dt, A, B, C, D)
    if chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be positive, got {chunk_size}")
    keep = not recompute and torch.is_grad_enabled()
    y, _ = _ssd_fwd(x, dt, A, B, C, D, _chunk(chunk_size), keep)
    return y


# The dtypes the fused kernels take by default; others (float16) take the compiled chunked path. bf16
# joined once the faulting dB/dC tile (N block 32) was dropped: on an H200 (scripts/gpu_ssd.py --dtypes
# bfloat16, experiments/bench/H200.md) all three bf16 shapes pass the float64 checks, with and without
# recompute (worst 3.4e-3), and fwd+bwd at 8×1024×24×64, N=128 takes 1.89 against 4.31 ms with
# recompute (2.3×) and 1.69 against 2.20 without (1.3×); at the Mamba-2 1B layer 6.07 against 6.73 and
# 5.08 against 5.03 ms, with less scratch memory in every case.
FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def ssd_gpu(x, dt, A, B, C, D=None, chunk_size=64, recompute=True, impl="auto"):
    """``impl``: ``triton`` (the fused kernels), ``compiled_chunked``, or ``auto``: the fused kernels
    for x in ``FUSED_DTYPES``, else compiled_chunked."""
    if impl == "auto":
        impl = "triton" if x.dtype in FUSED_DTYPES else "compiled_chunked"
    if impl == "triton":
        return ssd_triton(x, dt, A, B, C, D, chunk_size=chunk_size, recompute=recompute)
    if impl != "compiled_chunked":
        raise ValueError(f"ssd_gpu: impl must be 'auto', 'triton' or 'compiled_chunked', got {impl!r}")
    matmul_dtype = x.dtype if x.dtype in _HALF else None
    run = functools.partial(_ssd_compiled if x.is_cuda else ssd_chunked, chunk_size=chunk_size,
                            matmul_dtype=matmul_dtype)
    if recompute and torch.is_grad_enabled():
        return checkpoint(run, x, dt, A, B, C, D, use_reentrant=False)
    return run(x, dt, A, B, C, D)
