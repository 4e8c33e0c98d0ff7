"""Causal depthwise conv1d + bias + SiLU: the PyTorch paths and the Triton kernels against the float64
F.conv1d definition, output and every gradient (x, weight, bias).

The Triton kernels run through Triton's CPU interpreter in a subprocess (TRITON_INTERPRET must be set
before triton is imported), at lengths and channel counts that are not tile multiples, with a strided
input (the hidden half of an in_proj output). GPU tests run them compiled at realistic sizes.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import assert_errors_below, run_in_triton_interpreter

from flowhn import kernels
from flowhn.kernels.torch_conv import (causal_conv1d_silu_reference, causal_conv1d_silu_shifted, compare_conv,
                                       conv_inputs)

has_triton = importlib.util.find_spec("triton") is not None
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_reference_is_the_causal_definition():
    # out[t] = silu(b + Σ_k w[k] x[t-K+1+k]) with zeros before t = 0, written out by hand.
    inputs = conv_inputs(2, 7, 3, 4, dtype=torch.float64, seed=2)
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    padded = torch.cat([torch.zeros(2, 3, 3, dtype=torch.float64), x], dim=1)
    pre = b + sum(padded[:, k:k + 7] * w[:, k] for k in range(4))
    torch.testing.assert_close(causal_conv1d_silu_reference(x, w, b), torch.nn.functional.silu(pre))


@pytest.mark.parametrize("shape,bias,row_stride", [
    ((2, 13, 11, 4), True, None), ((1, 5, 20, 3), False, None), ((2, 9, 16, 4), True, 40), ((1, 2, 5, 4), True, 7)])
def test_shifted_matches_reference(shape, bias, row_stride):
    inputs = conv_inputs(*shape, dtype=torch.float64, bias=bias, row_stride=row_stride, seed=sum(shape))
    assert_errors_below(compare_conv(causal_conv1d_silu_shifted, inputs), 1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_shifted_low_precision_keeps_dtype(dtype, tol):
    inputs = conv_inputs(2, 30, 24, 4, dtype=dtype, row_stride=48, seed=3)
    assert causal_conv1d_silu_shifted(**inputs).dtype == dtype
    assert_errors_below(compare_conv(causal_conv1d_silu_shifted, inputs), tol)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_conv_with_projection_dispatch(backend):
    # Off the GPU backends: the conv, then F.linear; both outputs and all four gradients against float64.
    inputs = conv_inputs(2, 11, 6, 4, dtype=torch.float64, row_stride=10, seed=6, proj_rows=5)
    fn = functools.partial(kernels.causal_conv1d_silu_proj, backend=backend)
    errors = compare_conv(fn, inputs)
    assert set(errors) == {"out", "proj", "dx", "dweight", "dbias", "dproj_weight"}
    assert_errors_below(errors, 1e-12)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_dispatch_and_bad_shapes(backend):
    inputs = conv_inputs(1, 6, 5, 4, dtype=torch.float64, seed=4)
    torch.testing.assert_close(kernels.causal_conv1d_silu(**inputs, backend=backend),
                               causal_conv1d_silu_reference(**inputs))
    with pytest.raises(ValueError, match="weight"):
        kernels.causal_conv1d_silu(inputs["x"], inputs["weight"][:4], inputs["bias"])
    with pytest.raises(ValueError, match="bias has shape"):
        kernels.causal_conv1d_silu(inputs["x"], inputs["weight"], inputs["bias"][:2])


_INTERPRETER_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import torch
    from flowhn.kernels.torch_conv import compare_conv, conv_inputs
    import flowhn.kernels.triton_conv as tc

    results = {}
    # The recompute backward (the staged one is the default; this one takes widths over 4).
    tc.BWD_KERNEL = "recompute"
    cases = [  # (B, L, C, K), bias, row stride, forward tile (block_l, block_c), backward tile (l, c, seg_tiles)
        ((2, 13, 11, 4), True, 24, (4, 8), (4, 8, 2)),     # partial row and channel tiles, partial segment
        ((1, 9, 20, 3), False, None, (8, 16), (2, 16, 3)),  # no bias, odd width
        ((2, 5, 16, 4), True, None, (None, None), (None, None, None)),  # default tiles, L < one tile
    ]
    for shape, bias, stride, (fl, fc), (bl, bc, seg) in cases:
        tc.BWD_BLOCK_L, tc.BWD_BLOCK_C, tc.BWD_SEG_TILES = bl or 32, bc or 128, seg or 8
        inputs = conv_inputs(*shape, bias=bias, row_stride=stride, seed=sum(shape))
        fn = functools.partial(tc.causal_conv1d_silu_triton, block_l=fl, block_c=fc)
        results[f"conv{shape}"] = compare_conv(fn, inputs)
    # The staged backward (g once per element, staged in a ring of two row tiles per program): partial
    # row and channel tiles, segments of 1-3 tiles (the first tile's shifted rows come from the next
    # segment's g, computed once more), widths 2-4, with and without bias, a strided input.
    tc.BWD_KERNEL = "staged"
    default_staged_tile = (tc.STAGED_BLOCK_L, tc.STAGED_BLOCK_C, tc.STAGED_SEG_TILES)
    for shape, bias, stride, tile in [
        ((2, 13, 11, 4), True, 24, (4, 8, 2)), ((1, 9, 20, 3), False, None, (4, 16, 3)),
        ((2, 37, 16, 4), True, None, (4, 8, 3)), ((1, 40, 9, 2), True, 12, (8, 8, 1)),
        ((2, 5, 16, 4), True, None, None),  # default tile, L < one tile
        ((1, 11, 8, 5), True, None, None),  # width 5: over STAGED_MAX_WIDTH, so the recompute kernel runs
    ]:
        tc.STAGED_BLOCK_L, tc.STAGED_BLOCK_C, tc.STAGED_SEG_TILES = tile or default_staged_tile
        inputs = conv_inputs(*shape, bias=bias, row_stride=stride, seed=sum(shape) + 1)
        results[f"staged{shape}"] = compare_conv(tc.causal_conv1d_silu_triton, inputs)
    # The walking kernels, both ways (x and g windows in registers): rows a block of 1, 2, 4, 8 (fewer
    # than the 3 rows the backward walks past a segment, and more), partial channel blocks, segments of
    # 1-3 blocks, widths 1-4 (width 5 takes the other kernels), a strided input.
    tc.FWD_KERNEL = tc.BWD_KERNEL = "walk"
    default_walk_tile = (tc.WALK_BLOCK_L, tc.WALK_BLOCK_C, tc.WALK_SEG_TILES)
    for shape, bias, stride, tile in [
        ((2, 13, 11, 4), True, 24, (4, 8, 2)), ((1, 9, 20, 3), False, None, (2, 16, 3)),
        ((2, 37, 16, 4), True, None, (1, 8, 3)), ((1, 40, 9, 2), True, 12, (8, 8, 1)),
        ((1, 11, 8, 1), True, None, (2, 8, 2)), ((2, 5, 16, 4), True, None, None), ((1, 11, 8, 5), True, None, None),
    ]:
        tc.WALK_BLOCK_L, tc.WALK_BLOCK_C, tc.WALK_SEG_TILES = tile or default_walk_tile
        tc.WALK_FWD_BLOCK_L, tc.WALK_FWD_BLOCK_C, tc.WALK_FWD_SEG_TILES = tile or default_walk_tile
        inputs = conv_inputs(*shape, bias=bias, row_stride=stride, seed=sum(shape) + 2)
        results[f"walk{shape}"] = compare_conv(tc.causal_conv1d_silu_triton, inputs)
    # The forward's wider channel block where the channels are a multiple of it (16 channels, blocks of 8).
    tc.WALK_FWD_WIDE_BLOCK_C = 8
    tc.WALK_FWD_BLOCK_L, tc.WALK_FWD_BLOCK_C, tc.WALK_FWD_SEG_TILES = 2, 4, 3
    results["walk_wide_forward"] = compare_conv(tc.causal_conv1d_silu_triton, conv_inputs(2, 37, 16, 4, seed=41))
    tc.FWD_KERNEL, tc.BWD_KERNEL = "tiles", "staged"
    tc.STAGED_BLOCK_L = 2  # under the width's 4 rows: a clear error before the backward kernel runs
    inputs = conv_inputs(1, 9, 8, 4, seed=5)
    try:
        compare_conv(tc.causal_conv1d_silu_triton, inputs)
    except ValueError as exc:
        results["errors"] = {"small_staged_tile": str(exc)}
    tc.BWD_KERNEL = "fastest"
    try:
        compare_conv(tc.causal_conv1d_silu_triton, inputs)
    except ValueError as exc:
        results["errors"]["unknown_kernel"] = str(exc)
    # The op's schema, fake shapes and autograd registration, on a strided input, with each backward.
    inputs = conv_inputs(2, 7, 6, 4, row_stride=12, seed=1)
    leaves = (inputs["x"].detach().requires_grad_(), inputs["weight"].requires_grad_(), inputs["bias"].requires_grad_())
    tc.BWD_BLOCK_L, tc.BWD_BLOCK_C, tc.BWD_SEG_TILES = 4, 8, 1
    tc.STAGED_BLOCK_L, tc.STAGED_BLOCK_C, tc.STAGED_SEG_TILES = 4, 8, 1
    tc.WALK_BLOCK_L, tc.WALK_BLOCK_C, tc.WALK_SEG_TILES = 2, 8, 2
    for forward, backward in zip(("tiles", "walk", "walk"), tc.BWD_KERNELS):
        tc.BWD_KERNEL = backward
        args = (*leaves, True, 4, 8, 2, 1, forward)  # silu, rows, channels, blocks a segment, warps, kernel
        torch.library.opcheck(torch.ops.flowhn.causal_conv1d_silu_fwd.default, args)
    # The conv with the projection that reads its output (a mixer's x_proj) as one op: both outputs and all
    # four gradients, the projection's input gradient added onto the conv output's other gradient by addmm;
    # a strided x, no bias, projection rows not a power of two. Then its schema, fakes and autograd.
    tc.FWD_KERNEL = tc.BWD_KERNEL = "walk"
    tc.WALK_BLOCK_L, tc.WALK_BLOCK_C, tc.WALK_SEG_TILES = 2, 8, 2
    tc.WALK_FWD_BLOCK_L, tc.WALK_FWD_BLOCK_C, tc.WALK_FWD_SEG_TILES = 2, 8, 2
    # The walk's backward adds the two gradients as it reads them; the others get their sum.
    for shape, bias, stride, rows, backward in [((2, 13, 11, 4), True, 24, 7, "walk"),
                                                ((1, 9, 20, 3), False, None, 12, "walk"),
                                                ((2, 13, 11, 4), True, 24, 7, "recompute")]:
        tc.BWD_KERNEL = backward
        inputs = conv_inputs(*shape, bias=bias, row_stride=stride, seed=sum(shape) + 3, proj_rows=rows)
        results[f"proj{shape}{backward}"] = compare_conv(tc.causal_conv1d_silu_proj_triton, inputs)
    tc.BWD_KERNEL = "walk"
    inputs = conv_inputs(2, 7, 6, 4, row_stride=12, seed=1, proj_rows=5)
    leaves = [inputs[k].detach().requires_grad_() for k in ("x", "weight", "bias", "proj_weight")]
    torch.library.opcheck(torch.ops.flowhn.causal_conv1d_silu_proj_fwd.default,
                          (*leaves, True, 2, 8, 2, 1, "walk"))
    try:
        tc.causal_conv1d_silu_proj_triton(inputs["x"], inputs["weight"], inputs["bias"], inputs["proj_weight"].t())
    except ValueError as exc:
        results["errors"]["proj_shape"] = str(exc)
    json.dump(results, sys.stdout)
""")


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_walking_forward_takes_its_wide_channel_block_only_where_the_blocks_are_full(monkeypatch):
    """1024 channels a program where the channels are a multiple of 1024 (Mamba 1B's 4096), else 512 (1536 at
    135M, Mamba-2's 4352: a last block a quarter full was slower); a tile from the environment is taken as given."""
    import flowhn.kernels.triton_conv as tc

    monkeypatch.setattr(tc, "FWD_KERNEL", "walk")
    assert {c: tc._fwd_kernel_and_tile(4, c)[1][1] for c in (4096, 2048, 4352, 1536)} == \
        {4096: 1024, 2048: 1024, 4352: 512, 1536: 512}
    assert tc._fwd_kernel_and_tile(5, 4096) == ("tiles", (tc.FWD_BLOCK_L, tc.FWD_BLOCK_C, 1, tc.FWD_WARPS))
    script = ("import flowhn.kernels.triton_conv as tc; tc.FWD_KERNEL = 'walk'; "
              "print(tc._fwd_kernel_and_tile(4, 4096)[1])")
    env = {**os.environ, "FLOWHN_CONV_WALK_FWD_TILE": "4,256,16,2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(4, 256, 16, 2)"
    env["FLOWHN_CONV_WALK_TILE"] = "4,256"
    failed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert failed.returncode and "FLOWHN_CONV_WALK_TILE must be four positive integers" in failed.stderr


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_triton_conv_in_interpreter():
    results = json.loads(run_in_triton_interpreter(_INTERPRETER_SCRIPT))
    errors = results.pop("errors")
    assert "at least 4 rows for width 4, got 2" in errors["small_staged_tile"]
    assert "BWD_KERNEL (FLOWHN_CONV_BWD) must be one of ('recompute', 'staged', 'walk'), got 'fastest'" in \
        errors["unknown_kernel"]
    assert "proj_weight has shape (6, 5), expected (P, 6)" in errors["proj_shape"]
    assert len(results) == 20
    for case, errors in results.items():
        assert {"out", "dx", "dweight"} <= set(errors), case
        if case.startswith("proj"):
            assert {"proj", "dproj_weight"} <= set(errors), case
        assert_errors_below({f"{case}:{k}": v for k, v in errors.items()}, 1e-5)


GPU_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,row_stride", [((2, 1000, 1536, 4), 3072), ((3, 77, 4352, 4), None),
                                              ((1, 333, 100, 3), 256), ((2, 1000, 2048, 4), 4096)], ids=str)
@pytest.mark.parametrize("forward,backward", [("tiles", "recompute"), ("tiles", "staged"), ("walk", "walk")])
def test_triton_conv_gpu(dtype, shape, row_stride, forward, backward, monkeypatch):
    import flowhn.kernels.triton_conv as triton_conv
    from flowhn.kernels.triton_conv import causal_conv1d_silu_triton

    monkeypatch.setattr(triton_conv, "FWD_KERNEL", forward)
    monkeypatch.setattr(triton_conv, "BWD_KERNEL", backward)
    inputs = conv_inputs(*shape, dtype=dtype, device="cuda", row_stride=row_stride, seed=7)
    assert_errors_below(compare_conv(causal_conv1d_silu_triton, inputs), GPU_TOL[dtype])
    assert_errors_below(compare_conv(functools.partial(kernels.causal_conv1d_silu, backend="triton"), inputs),
                  GPU_TOL[dtype])


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,proj_rows,bias", [((2, 1000, 1536, 4), 80, True), ((3, 77, 4352, 4), 289, True),
                                                  ((1, 333, 100, 3), 37, False), ((2, 1000, 2048, 4), 160, True)],
                         ids=str)
def test_triton_conv_proj_gpu(dtype, shape, proj_rows, bias):
    # A mixer's conv and x_proj as one op (x_proj's rows: dt_rank + 2·d_state, 80 at 135M; 289 is not a tile multiple).
    inputs = conv_inputs(*shape, dtype=dtype, device="cuda", bias=bias, seed=8, proj_rows=proj_rows)
    errors = compare_conv(functools.partial(kernels.causal_conv1d_silu_proj, backend="triton"), inputs)
    assert set(errors) == {"out", "proj", "dx", "dweight", "dproj_weight"} | ({"dbias"} if bias else set())
    assert_errors_below(errors, GPU_TOL[dtype])
