"""The Triton Mamba-2 SSD kernels (flowhn.kernels.triton_ssd) against the step-by-step reference.

CPU: Triton's interpreter, in one subprocess (TRITON_INTERPRET must be set before triton is imported), at
small shapes that are not multiples of the chunk, with non-power-of-two head and state sizes, grouped
B/C, strided inputs, and decays strong enough to underflow; float64 inputs (so any mismatch is a bug,
not rounding) and one float32 case. Output and every gradient (x, dt, A, B, C, D). The custom ops are
checked with torch.library.opcheck, and what the backward keeps is measured. A bounds check runs every
kernel, for every N block the GPU autotuner may pick, with every load/store address checked against the
extents of the launch's tensors.
GPU: the compiled kernels at realistic, non-multiple shapes in fp32 and bf16 (each in a child process).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import assert_errors_below, run_in_triton_interpreter

from flowhn.kernels.testing import compare, reference_fn, ssd_inputs

has_triton = importlib.util.find_spec("triton") is not None
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# name: (batch, length, heads, head_dim, groups, state, chunk, dtype, with_D, recompute)
CASES = {
    "L37_G1_N16_chunk16": (1, 37, 4, 16, 1, 16, 16, "float64", True, True),
    "L70_G2_N32_chunk32_noD_keep": (1, 70, 4, 16, 2, 32, 32, "float64", False, False),
    "odd_P12_N20_chunk8_G=H": (1, 20, 3, 12, 3, 20, 8, "float64", True, False),
    "float32_B2_L37_G2_N32": (2, 37, 2, 16, 2, 32, 16, "float32", True, True),
}
TOL = {"float64": 1e-10, "float32": 1e-5}

_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import torch
    from flowhn.kernels import ssd
    from flowhn.kernels.testing import compare, reference_fn, saved_tensor_bytes, ssd_inputs
    from flowhn.kernels.triton_ssd import ssd_triton

    cases = json.loads(sys.argv[1])
    results = {}
    for name, (batch, length, heads, P, G, N, chunk, dtype, with_D, recompute) in cases.items():
        inputs = ssd_inputs(batch, length, heads, P, G, N, dtype=getattr(torch, dtype), D=with_D, seed=length + N)
        fn = functools.partial(ssd_triton, chunk_size=chunk, recompute=recompute)
        results[name] = compare(fn, reference_fn("ssd"), inputs)

    # Through the dispatch, with x, B, C as strided views of one packed tensor (the mixer's layout).
    def packed(x, dt, A, B, C, D):
        b, l, h, p = x.shape
        xbc = torch.cat([x.flatten(2), B.flatten(2), C.flatten(2)], dim=-1)
        xs, Bs, Cs = xbc.split([h * p, B[0, 0].numel(), C[0, 0].numel()], dim=-1)
        assert not xs.is_contiguous()
        return ssd(xs.reshape(x.shape), dt, A, Bs.reshape(B.shape), Cs.reshape(C.shape), D, chunk_size=16,
                   backend="triton")
    inputs = ssd_inputs(1, 29, 4, 16, 2, 16, dtype=torch.float64, seed=7)
    results["strided_views_via_dispatch"] = compare(packed, reference_fn("ssd"), inputs)

    # The pass over chunks (triton_ssd.STATE_PASS): the cases above ran the default (prefetching, 16
    # chunks a tile: one tile); here with 2 chunks a tile (5 chunks -> tiles of 2, 2, 1), with and
    # without recompute (with it the backward runs both directions in one launch). The loop kernel is
    # checked against a PyTorch loop in test_both_passes_over_chunks_match_a_pytorch_loop_in_interpreter.
    from flowhn.kernels import triton_ssd
    kept = triton_ssd.STATE_PASS_CHUNKS
    triton_ssd.STATE_PASS_CHUNKS = 2
    for recompute in (True, False):
        inputs = ssd_inputs(1, 70, 4, 16, 2, 32, dtype=torch.float64, seed=11)
        fn = functools.partial(ssd_triton, chunk_size=16, recompute=recompute)
        results[f"prefetch_pass_recompute={recompute}"] = compare(fn, reference_fn("ssd"), inputs)
    triton_ssd.STATE_PASS_CHUNKS = kept

    # Per-step decays down to exp(-800): no exponent may overflow, no masked entry may turn into NaN.
    inputs = ssd_inputs(1, 40, 2, 16, 1, 16, dtype=torch.float64, seed=5)
    inputs["dt"] = inputs["dt"] * 500.0
    results["strong_decay"] = compare(functools.partial(ssd_triton, chunk_size=16), reference_fn("ssd"), inputs)

    # The custom ops: schema, fake shapes, autograd registration (keeping the states: both outputs real).
    inputs = ssd_inputs(1, 20, 2, 16, 1, 16, dtype=torch.float64, seed=9)
    args = [inputs[k].requires_grad_(True) for k in ("x", "dt", "A", "B", "C", "D")]
    torch.library.opcheck(torch.ops.flowhn.ssd_fwd.default, (*args, 16, True))

    # What the backward keeps: exactly the inputs with recompute; plus the entering states without.
    inputs = ssd_inputs(2, 40, 4, 16, 1, 16, dtype=torch.float32, seed=3)
    for key in ("x", "dt", "B", "C"):
        inputs[key].requires_grad_(True)
    saved = {str(recompute): saved_tensor_bytes(lambda: ssd_triton(**inputs, chunk_size=16, recompute=recompute))
             for recompute in (True, False)}
    saved["inputs"] = sum(t.numel() * t.element_size() for t in inputs.values())
    json.dump({"errors": results, "saved": saved}, sys.stdout)
""")


@pytest.fixture(scope="module")
def interpreter_run():
    return json.loads(run_in_triton_interpreter(_SCRIPT, json.dumps(CASES), timeout=600))


# Every load and store of every kernel, for every N block the GPU autotuner may pick, must address memory
# inside one of the launch's tensor arguments. The interpreter does not check this itself (it reads and
# writes through raw pointers), so the script wraps its masked load/store to check each enabled address.
_BOUNDS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    import triton, triton.language as tl
    import triton.runtime.interpreter as interp
    from flowhn.kernels import triton_ssd, triton_ssd_kernels
    from flowhn.kernels.testing import ssd_inputs

    extents = []

    def record_extents(init):
        def wrapped(self, args_dev, kwargs):
            args_hst, kwargs_hst = init(self, args_dev, kwargs)
            extents.clear()
            for name, arg in [*zip(self.arg_names, args_hst), *kwargs_hst.items()]:
                if isinstance(arg, torch.Tensor) and arg.numel() > 0:
                    span = 1 + sum((n - 1) * st for n, st in zip(arg.shape, arg.stride()))
                    extents.append((arg.data_ptr(), arg.data_ptr() + span * arg.element_size(), name))
            return args_hst, kwargs_hst
        return wrapped

    def checked(access, kind):
        def wrapped(self, ptrs, *rest, **kw):
            mask = rest[0] if kind == "load" else rest[1]
            size = np.dtype(interp._get_np_dtype(ptrs.get_element_ty())).itemsize
            addr = ptrs.data.astype(np.uint64)[np.broadcast_to(mask.data.astype(bool), ptrs.data.shape)]
            inside = np.zeros(addr.shape, bool)
            for start, end, _ in extents:
                inside |= (addr >= start) & (addr + size <= end)
            if not inside.all():
                raise AssertionError(f"{kind} outside every tensor argument at grid {interp.interpreter_builder.grid_idx}")
            return access(self, ptrs, *rest, **kw)
        return wrapped

    interp.GridExecutor._init_args_hst = record_extents(interp.GridExecutor._init_args_hst)
    interp.InterpreterBuilder.create_masked_load = checked(interp.InterpreterBuilder.create_masked_load, "load")
    interp.InterpreterBuilder.create_masked_store = checked(interp.InterpreterBuilder.create_masked_store, "store")

    # The checker must catch a read one element past the end.
    @triton.jit
    def overread(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs <= n), mask=offs < n)
    try:
        overread[(1,)](torch.zeros(8), 8, BLOCK=16)
        caught = False
    except Exception as e:
        caught = "outside every tensor argument" in repr(e)

    results = {}
    # (batch, L, H, P, G, N): last chunk partial, P and N not powers of two; N = 40 is two blocks of 32 (the
    # second partial) or one partial block of 64; 3 heads per group; 12 heads of one group = 2 splits of 6.
    cases = [((2, 20, 6, 12, 2, 40), 32), ((1, 20, 6, 12, 2, 40), 64), ((1, 20, 12, 16, 1, 24), 128)]
    assert {nk for _, nk in cases} == {nk for nk, _ in triton_ssd_kernels.TILES}
    for shape, nk in cases:
        triton_ssd._INTERPRETER_BLOCK_NK = nk
        inputs = {k: v.requires_grad_() for k, v in ssd_inputs(*shape, dtype=torch.bfloat16, seed=nk).items()}
        try:
            y = triton_ssd.ssd_triton(**inputs, chunk_size=16, recompute=True)
            y.backward(torch.ones_like(y))
            results[f"{shape} N block {nk}"] = "ok"
        except Exception as e:
            results[f"{shape} N block {nk}"] = repr(e)[-300:]
    json.dump({"checker_catches_overread": caught, "results": results}, sys.stdout)
""")


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_triton_ssd_kernels_stay_in_bounds_for_every_tile():
    """Every address every kernel loads or stores lies inside its tensors, for every N block in the GPU
    autotune list, bf16 inputs (the low-precision path), partial chunks, partial N blocks, split groups."""
    report = json.loads(run_in_triton_interpreter(_BOUNDS_SCRIPT, timeout=600))
    assert report["checker_catches_overread"], report
    bad = {k: v for k, v in report["results"].items() if v != "ok"}
    assert len(report["results"]) == 3 and not bad, bad


_PASS_SCRIPT = textwrap.dedent("""
    import json
    import torch
    from flowhn.kernels import triton_ssd

    def reference(S, K, total):
        # S, K (batch, chunks, heads, P, N); total (batch, heads, chunks): entering states, end-state adjoints
        decay = total.exp().transpose(1, 2)[..., None, None]
        H, G = torch.empty_like(S), torch.empty_like(K)
        carried = torch.zeros_like(S[:, 0])
        for c in range(S.shape[1]):
            H[:, c] = carried
            carried = decay[:, c] * carried + S[:, c]
        carried = torch.zeros_like(K[:, 0])
        for c in reversed(range(K.shape[1])):
            G[:, c] = carried
            carried = K[:, c] + decay[:, c] * carried
        return H, G

    out = {}
    triton_ssd.STATE_PASS_CHUNKS, triton_ssd.STATE_PASS_BLOCK = 3, 16  # 7 chunks: tiles of 3, 3, 1; P·N = 30: 2 blocks
    for dtype, acc in ((torch.float64, triton_ssd.K.tl.float64), (torch.float32, triton_ssd.K.tl.float32)):
        gen = torch.Generator().manual_seed(0)
        batch, chunks, heads, P, N = 2, 7, 3, 5, 6
        S = torch.randn(batch, chunks, heads, P, N, generator=gen, dtype=dtype)
        K = torch.randn(batch, chunks, heads, P, N, generator=gen, dtype=dtype)
        total = -3 * torch.rand(batch, heads, chunks, generator=gen, dtype=dtype)
        H, G = reference(S, K, total)
        for impl in ("loop", "prefetch"):
            for with_state, with_adjoint in ((True, False), (False, True), (True, True)):
                state = S.clone() if with_state else S.new_empty(0)
                adjoint = K.clone() if with_adjoint else K.new_empty(0)
                triton_ssd.state_pass(state, adjoint, total, heads, chunks, with_state, with_adjoint, acc, impl=impl)
                errors = ([(state - H).abs().max().item()] if with_state else []) + (
                    [(adjoint - G).abs().max().item()] if with_adjoint else [])
                out[f"{impl} {dtype} state={with_state} adjoint={with_adjoint}"] = max(errors)
            # Out of place (what bf16 inputs run: fp32 S, K in, bf16 H, G out): S and K untouched; H and G
            # carried in acc, each stored element the reference's value rounded once.
            for out_dtype in (dtype,) if dtype == torch.float64 else (dtype, torch.bfloat16):
                state, adjoint = S.clone(), K.clone()
                state_out, adjoint_out = torch.full_like(S, float("nan"), dtype=out_dtype), torch.full_like(
                    K, float("nan"), dtype=out_dtype)
                triton_ssd.state_pass(state, adjoint, total, heads, chunks, True, True, acc, impl=impl,
                                      state_out=state_out, adjoint_out=adjoint_out)
                assert torch.equal(state, S) and torch.equal(adjoint, K), "the pass wrote into its inputs"
                relative = out_dtype == torch.bfloat16  # rounded once: within a bf16 step, 2^-7 relative (the
                # GPU rounds to nearest, 2^-8; Triton's interpreter truncates)
                out[f"{impl} {dtype} into {'bf16, relative' if relative else 'a new tensor'}"] = max(
                    torch.where(want == 0, (got.to(dtype) - want).abs(),
                                (got.to(dtype) - want).abs() / (want.abs() if relative else 1.0)).max().item()
                    for got, want in zip((state_out, adjoint_out), (H, G)))
    json.dump(out, __import__("sys").stdout)
""")


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_both_passes_over_chunks_match_a_pytorch_loop_in_interpreter():
    """The SSD's pass over chunks, the loop kernel and the prefetching one (several tiles of chunks, the last
    partial; a partial block of P·N), each direction alone and both in one launch, against a PyTorch loop; in
    place, and out of place into fp32 and (from fp32) into bf16, as bf16 inputs run it."""
    errors = json.loads(run_in_triton_interpreter(_PASS_SCRIPT, timeout=300))
    assert len(errors) == 18, errors
    for name, error in errors.items():
        assert error < (2.0 ** -7 if "bf16" in name else 1e-12 if "float64" in name else 1e-5), (name, error)


def _assert_close(errors, tol):
    assert set(errors) >= {"out", "dx", "ddt", "dA", "dB", "dC"}, errors
    assert_errors_below(errors, tol)


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_triton_ssd_matches_reference_in_interpreter(interpreter_run):
    """Every case's output and gradients; also: opcheck passed (the script raises otherwise)."""
    errors = interpreter_run["errors"]
    for name, case in CASES.items():
        _assert_close(errors[name], TOL[case[7]])
        assert ("dD" in errors[name]) == case[8]
    _assert_close(errors["strided_views_via_dispatch"], 1e-10)
    _assert_close(errors["strong_decay"], 1e-10)
    for recompute in (True, False):
        _assert_close(errors[f"prefetch_pass_recompute={recompute}"], 1e-10)


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_triton_ssd_recompute_keeps_only_the_inputs(interpreter_run):
    saved = interpreter_run["saved"]
    inputs = saved["inputs"]
    assert saved["True"] == inputs
    # Without recompute: also the fp32 states entering each of the 3 chunks, (2, 3, 4, 16, 16).
    assert saved["False"] == inputs + 2 * 3 * 4 * 16 * 16 * 4


def test_triton_ssd_rejects_bad_shapes_naming_the_argument():
    from flowhn.kernels.triton_ssd import ssd_triton

    inputs = ssd_inputs(1, 8, 4, 2, 2, 4)
    inputs["A"] = inputs["A"][:3]
    with pytest.raises(ValueError, match="A has shape"):
        ssd_triton(**inputs)


# ---------------------------------------------------------------- GPU

GPU_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


# In a child process: a CUDA illegal memory access poisons the process that hits it, and would fail every
# GPU test after this one in the same pytest run (it did, once, in bf16).
_GPU_CASE = textwrap.dedent("""
    import functools, json, sys
    import torch
    from flowhn.kernels.testing import compare, reference_fn, ssd_inputs
    from flowhn.kernels.triton_ssd import ssd_triton

    dtype, recompute = getattr(torch, sys.argv[1]), sys.argv[2] == "recompute"
    # L = 1000: the last of 16 chunks is partial; 4 heads per group; N = 128 as Mamba-2.
    inputs = ssd_inputs(2, 1000, 8, 64, 2, 128, dtype=dtype, device="cuda", seed=21)
    errors = compare(functools.partial(ssd_triton, recompute=recompute), reference_fn("ssd"), inputs)
    torch.cuda.synchronize()
    json.dump(errors, sys.stdout)
""")


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("recompute", ["recompute", "keep"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_ssd_gpu_matches_reference(dtype, recompute):
    name = str(dtype).removeprefix("torch.")
    proc = subprocess.run([sys.executable, "-c", _GPU_CASE, name, recompute], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_close(json.loads(proc.stdout), GPU_TOL[dtype])


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_triton_ssd_gpu_odd_sizes_and_one_graph():
    """Head and state sizes that are not powers of two, G = H, and torch.compile(fullgraph) through the ops."""
    from flowhn.kernels.triton_ssd import ssd_triton

    inputs = ssd_inputs(3, 333, 6, 48, 6, 80, dtype=torch.float32, device="cuda", seed=22)
    errors = compare(functools.partial(ssd_triton, chunk_size=32), reference_fn("ssd"), inputs)
    _assert_close(errors, GPU_TOL[torch.float32])
    compiled = torch.compile(ssd_triton, fullgraph=True)
    torch.testing.assert_close(compiled(**inputs), ssd_triton(**inputs))
