"""SSM scan backends against the step-by-step reference: outputs and every gradient.

CPU tests compare the ``torch`` backend in float64 (so any mismatch is a bug, not rounding) and run the
Triton kernels through Triton's CPU interpreter in a subprocess (TRITON_INTERPRET must be set before
triton is imported). GPU tests run the compiled kernels at realistic sizes against the float64 reference.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import textwrap

import pytest
import torch
from conftest import assert_errors_below, run_in_triton_interpreter

from flowhn.kernels import available_backends, resolve_backend, selective_scan, ssd
from flowhn.kernels.testing import compare, in_mixer_layout, reference_fn, scan_inputs, ssd_inputs
from flowhn.kernels.torch_scan import linear_scan, selective_scan_torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
has_triton = importlib.util.find_spec("triton") is not None


def on_gpu_in_every_dtype_layout_and_walk(test):
    """A GPU test of the Gluon scan run in fp32 and bf16, both layouts and both walks (its dtype, layout and
    walk arguments)."""
    marks = [pytest.mark.gpu, cuda, pytest.mark.skipif(not has_triton, reason="triton is not installed"),
             pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str),
             pytest.mark.parametrize("layout", ["channel-last", "row-major"]),
             pytest.mark.parametrize("walk", ["sequence", "chunks"])]
    for mark in reversed(marks):
        test = mark(test)
    return test
has_mamba_ssm = importlib.util.find_spec("mamba_ssm") is not None

SCAN_FLAGS = {  # (D, z, delta_bias, delta_softplus)
    "all": (True, True, True, True),
    "none": (False, False, False, False),
    "skip+bias": (True, False, True, False),
    "gate+softplus": (False, True, False, True),
}


def _scan_case(shape, flags, dtype=torch.float64, device="cpu", seed=0):
    has_D, has_z, has_bias, softplus = SCAN_FLAGS[flags]
    return scan_inputs(*shape, dtype=dtype, device=device, D=has_D, z=has_z, delta_bias=has_bias,
                       delta_softplus=softplus, seed=seed)


# ---------------------------------------------------------------- torch backend (CPU, float64)

@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_solves_the_recurrence(reverse):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 13, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 13, generator=gen, dtype=torch.float64)
    h0 = torch.randn(3, generator=gen, dtype=torch.float64)
    expected, h = torch.empty_like(x), h0
    for t in (reversed(range(13)) if reverse else range(13)):
        h = a[:, t] * h + x[:, t]
        expected[:, t] = h
    torch.testing.assert_close(linear_scan(a, x, h0, reverse=reverse), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flags", ["all", "none"])
def test_in_mixer_layout_hands_over_the_mixers_views(flags):
    """The GPU tests' stand-in for Mamba1Mixer's layout: u and delta channel-last and dense, z a half of a
    (B, L, 2D) tensor, B and C column views of one (B, L, 2N) tensor, and the gradients reach the
    arguments through it unchanged (the torch backend against the float64 reference)."""
    inputs = _scan_case((2, 6, 11, 4), flags, seed=5)
    seen = {}

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, **kwargs):
        seen.update(u=u.stride(), delta=delta.stride(), z=None if z is None else z.stride(), B=B.stride(),
                    C=C.stride(), C_offset=C.storage_offset() - B.storage_offset())
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, backend="torch", **kwargs)

    errors = compare(in_mixer_layout(scan), reference_fn("selective_scan"), inputs)
    assert seen == {"u": (66, 1, 6), "delta": (66, 1, 6), "z": None if flags == "none" else (132, 1, 12),
                    "B": (88, 1, 8), "C": (88, 1, 8), "C_offset": 4}
    assert_errors_below(errors, 1e-10)


@pytest.mark.parametrize("shape", [(2, 5, 37, 4), (1, 8, 64, 16), (3, 3, 1, 2)], ids=str)
@pytest.mark.parametrize("flags", list(SCAN_FLAGS))
def test_selective_scan_torch_matches_reference(shape, flags):
    inputs = _scan_case(shape, flags, seed=sum(shape) + list(SCAN_FLAGS).index(flags))
    errors = compare(functools.partial(selective_scan, backend="torch"), reference_fn("selective_scan"), inputs)
    assert_errors_below(errors, 1e-10)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_selective_scan_takes_A_as_its_log(backend):
    """A_is_log=True: A holds Mamba's A_log, the scan runs with -exp(A_log), and the gradient is A_log's."""
    inputs = scan_inputs(2, 5, 37, 4, dtype=torch.float64, A_as_log=True, seed=5)
    assert inputs["A_is_log"] and (inputs["A"] > -1).all()  # log(1..N · ~1): a log, not the negative rates
    errors = compare(functools.partial(selective_scan, backend=backend), reference_fn("selective_scan_A_log"), inputs)
    assert_errors_below(errors, 1e-10)


@pytest.mark.parametrize("chunk", [1, 7, 16, 100])
def test_selective_scan_torch_any_chunk(chunk):
    # Chunks that do not divide L (37) and one longer than L: the carried state must be exact.
    inputs = _scan_case((2, 4, 37, 3), "all", seed=chunk)
    errors = compare(functools.partial(selective_scan_torch, chunk=chunk), reference_fn("selective_scan"), inputs)
    assert_errors_below(errors, 1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_selective_scan_torch_low_precision(dtype, tol):
    inputs = _scan_case((2, 16, 80, 16), "all", dtype=dtype, seed=3)
    out = selective_scan(**inputs, backend="torch")
    assert out.dtype == dtype
    errors = compare(functools.partial(selective_scan, backend="torch"), reference_fn("selective_scan"), inputs)
    assert_errors_below(errors, tol)


SSD_SHAPES = [  # (batch, length, heads, head_dim, groups, state, chunk)
    (2, 37, 4, 3, 2, 5, 8),     # L not a multiple of the chunk, 2 heads per group
    (1, 64, 2, 4, 1, 3, 16),    # exact multiple, one group shared by all heads
    (2, 10, 6, 2, 6, 4, 64),    # shorter than one chunk, G = H
    (1, 50, 4, 8, 2, 16, 64),
]


@pytest.mark.parametrize("shape", SSD_SHAPES, ids=str)
@pytest.mark.parametrize("with_D", [True, False])
def test_ssd_torch_matches_reference(shape, with_D):
    *dims, chunk = shape
    inputs = ssd_inputs(*dims, dtype=torch.float64, D=with_D, seed=sum(shape))
    errors = compare(functools.partial(ssd, chunk_size=chunk, backend="torch"), reference_fn("ssd"), inputs)
    assert_errors_below(errors, 1e-10)


def test_ssd_strong_decay_has_finite_gradients():
    # exp of the masked (upper) part of the decay matrix must never be formed, or its gradient is NaN.
    inputs = ssd_inputs(1, 40, 2, 4, 1, 4, dtype=torch.float64, seed=5)
    inputs["dt"] = inputs["dt"] * 500.0  # per-step decay down to exp(-800): underflows to 0
    errors = compare(functools.partial(ssd, chunk_size=16, backend="torch"), reference_fn("ssd"), inputs)
    assert_errors_below(errors, 1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_ssd_torch_low_precision(dtype, tol):
    inputs = ssd_inputs(2, 70, 4, 8, 1, 16, dtype=dtype, seed=4)
    assert ssd(**inputs, backend="torch").dtype == dtype
    errors = compare(functools.partial(ssd, chunk_size=32, backend="torch"), reference_fn("ssd"), inputs)
    assert_errors_below(errors, tol)


# ---------------------------------------------------------------- dispatch

def test_auto_backend_on_cpu_is_torch():
    assert resolve_backend("auto", "cpu") == "torch"
    assert {"torch", "reference"} <= set(available_backends("cpu"))
    assert "mamba_ssm" not in available_backends("cpu")


def test_auto_backend_on_cuda_prefers_ours_to_mamba_ssm(monkeypatch):
    """mamba-ssm only where Triton cannot run: ours were faster on an H200 (twenty-first session, call D)."""
    import flowhn.kernels as kernels_module

    usable = {"triton", "mamba_ssm"}
    monkeypatch.setattr(kernels_module, "_unavailable", lambda name, device: None if name in usable else "no")
    assert resolve_backend("auto", "cuda") == "triton"
    usable.discard("triton")
    assert resolve_backend("auto", "cuda") == "mamba_ssm"
    usable.clear()
    assert resolve_backend("auto", "cuda") == "torch"


@pytest.mark.parametrize("name", ["mamba_ssm", "nonsense"] + ([] if os.environ.get("TRITON_INTERPRET") == "1"
                                                              else ["triton"]))
def test_unavailable_backend_names_the_config_key(name):
    with pytest.raises(ValueError, match=r"model\.ssm_backend") as info:
        resolve_backend(name, "cpu")
    assert "\n" not in str(info.value)


def test_dispatch_reaches_the_backend_and_checks_shapes():
    inputs = _scan_case((1, 4, 9, 3), "all", dtype=torch.float32)
    torch.testing.assert_close(selective_scan(**inputs, backend="torch"), selective_scan_torch(**inputs))
    inputs["B"] = inputs["B"][:, :2]
    with pytest.raises(ValueError, match="B has shape"):
        selective_scan(**inputs)
    bad = ssd_inputs(1, 8, 3, 2, 2, 4)  # 3 heads cannot share 2 groups
    with pytest.raises(ValueError, match="groups"):
        ssd(**bad)


# ---------------------------------------------------------------- Triton kernels on the CPU interpreter

_INTERPRETER_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import torch
    import flowhn.kernels.triton_scan
    from flowhn.kernels import selective_scan, ssd
    from flowhn.kernels.testing import compare, reference_fn, relative_error, scan_inputs, ssd_inputs
    from flowhn.kernels.triton_scan import selective_scan_triton
    from flowhn.nn.ssm import Mamba1Mixer

    results = {}
    # The backward's programs each walk BWD_SUB_BLOCKS channel blocks; the interpreter runs every one,
    # masked or not. The default (8) runs in the default-tile case; the tile-override cases walk 1 or 2,
    # so their backward spans several programs along the channels (dB, dC summed by atomics across them),
    # and so do the checks after them (routing, layout, the mixer's wiring) on 1.
    default_sub_blocks = flowhn.kernels.triton_scan.BWD_SUB_BLOCKS
    default_loop = flowhn.kernels.triton_scan.BWD_LOOP
    flowhn.kernels.triton_scan.BWD_LOOP = "states"
    cases = [  # shape, (D, z, bias, softplus), tile override (block_d, chunk, backward sub-blocks)
        ((2, 5, 19, 3), (True, True, True, True), (2, 8, 2)),      # 3 chunks, last one partial; a masked sub-block
        ((1, 3, 16, 4), (False, False, False, False), (4, 4, 1)),  # exact chunks, a masked channel row
        ((2, 6, 33, 5), (True, False, True, False), (4, 16, 1)),
        ((1, 4, 7, 16), (False, True, False, True), (None, None, None)),  # default tiles, one short chunk
    ]
    for shape, (D, z, bias, softplus), (block_d, chunk, sub_blocks) in cases:
        flowhn.kernels.triton_scan.BWD_SUB_BLOCKS = sub_blocks or default_sub_blocks
        inputs = scan_inputs(*shape, D=D, z=z, delta_bias=bias, delta_softplus=softplus, seed=sum(shape))
        fn = functools.partial(selective_scan_triton, block_d=block_d, chunk=chunk)
        results[f"scan{shape}"] = compare(fn, reference_fn("selective_scan"), inputs)
    # The backward on a tile of its own (2 channels x 2 blocks a program, the forward 4 channels):
    # 7 channels make 2 backward programs, the second with a masked channel.
    scan_module = flowhn.kernels.triton_scan
    scan_module.BWD_BLOCK_D, scan_module.BWD_SUB_BLOCKS = 2, 2
    inputs = scan_inputs(2, 7, 19, 3, seed=31)
    fn = functools.partial(selective_scan_triton, block_d=4, chunk=8)
    results["own_backward_tile"] = compare(fn, reference_fn("selective_scan"), inputs)
    scan_module.BWD_BLOCK_D, scan_module.BWD_SUB_BLOCKS = None, 1
    # The backward that loops over channels (a (states x steps) tile): a program of 4 channels over 5
    # (the second program masks 3), 3 chunks, the last partial; then without z and softplus.
    scan_module.BWD_LOOP, scan_module.BWD_CHANNELS = "channels", 4
    for shape, (D, z, bias, softplus), chunk in [((2, 5, 19, 3), (True, True, True, True), 8),
                                                 ((2, 6, 33, 5), (True, False, True, False), 16)]:
        inputs = scan_inputs(*shape, D=D, z=z, delta_bias=bias, delta_softplus=softplus, seed=sum(shape) + 1)
        fn = functools.partial(selective_scan_triton, block_d=4, chunk=chunk)
        results[f"channels_loop{shape}"] = compare(fn, reference_fn("selective_scan"), inputs)
    # The checks after this take the default loop (4 channels a program keep the interpreter's work small).
    scan_module.BWD_LOOP = default_loop
    inputs = scan_inputs(2, 4, 10, 4, seed=9)
    results["dispatch"] = compare(functools.partial(selective_scan, backend="triton"),
                                  reference_fn("selective_scan"), inputs)
    # Channel-last: u, delta, z, B, C as transposed views of (B, L, ·) memory, read with their strides.
    cl = lambda t: None if t is None else t.transpose(1, 2).contiguous().transpose(1, 2)
    inputs = scan_inputs(2, 5, 19, 3, seed=29)
    inputs = {k: cl(v) if k in ("u", "delta", "z", "B", "C") else v for k, v in inputs.items()}
    assert flowhn.kernels.triton_scan.is_channel_last(inputs["u"])
    fn = functools.partial(selective_scan_triton, block_d=4, chunk=8, channel_last=True)  # a masked channel, a partial chunk
    results["channel_last"] = compare(fn, reference_fn("selective_scan"), inputs)  # 2 backward programs
    # A given as Mamba's A_log: -exp(A_log) formed for the kernels, dA_log from dA (the mixer's call).
    inputs = scan_inputs(2, 5, 19, 3, A_as_log=True, seed=37)
    fn = functools.partial(selective_scan_triton, block_d=4, chunk=8)
    results["A_log"] = compare(fn, reference_fn("selective_scan_A_log"), inputs)
    # The whole Mamba-1 mixer (conv on in_proj's strided half, scan on views of in_proj/x_proj/dt_proj
    # outputs, gate from the other half) against the same mixer on the sequential reference in float64.
    torch.manual_seed(0)
    mixer = Mamba1Mixer(d_model=4, d_state=3, d_conv=4, backend="triton").double()
    x = torch.randn(2, 11, 4, dtype=torch.float64, requires_grad=True)
    got = [mixer(x)]
    got += torch.autograd.grad(got[0].square().sum(), [x, *mixer.parameters()])
    mixer.backend = "reference"
    want = [mixer(x)]
    want += torch.autograd.grad(want[0].square().sum(), [x, *mixer.parameters()])
    results["mamba1_mixer"] = {f"t{i}": relative_error(a, b) for i, (a, b) in enumerate(zip(got, want))}
    inputs = ssd_inputs(1, 20, 4, 4, 2, 8, seed=3)
    results["ssd"] = compare(functools.partial(ssd, chunk_size=8, backend="triton"), reference_fn("ssd"), inputs)
    json.dump(results, sys.stdout)
""")


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_triton_kernels_in_interpreter():
    results = json.loads(run_in_triton_interpreter(_INTERPRETER_SCRIPT))
    assert {"channel_last", "mamba1_mixer", "own_backward_tile", "channels_loop(2, 5, 19, 3)", "A_log"} <= set(results)
    for case, errors in results.items():
        assert set(errors) >= {"out", "du", "ddelta", "dA", "dB", "dC"} or case in ("ssd", "mamba1_mixer"), case
        assert_errors_below({f"{case}:{k}": v for k, v in errors.items()}, 2e-5)


_COMPILE_SCRIPT = textwrap.dedent("""
    import torch
    from flowhn.kernels import ssd
    from flowhn.kernels.testing import saved_tensor_bytes, saved_tensors, scan_inputs, ssd_inputs
    from flowhn.nn.ssm import Mamba1Mixer, Mamba2Mixer
    import flowhn.kernels.triton_scan  # registers the flowhn:: ops

    # What is checked here is the ops' registration and graphs, not the tiles (test_triton_kernels_in_interpreter
    # checks those): one channel block per program and one backward sub-block keep the interpreter's work small.
    flowhn.kernels.triton_scan.BWD_SUB_BLOCKS = 1
    flowhn.kernels.triton_scan.BWD_CHANNELS = 4

    # The scan's custom ops: schema, fake (meta) shapes, autograd registration, and the same outputs
    # traced by AOTAutograd as run eagerly.
    # Rows padded from 19 to a pitch of 32, as the wrapper pads them; 3 chunks of 8, the last partial.
    inputs = scan_inputs(2, 5, 19, 3, dtype=torch.float32, seed=1)
    pad = lambda t: torch.nn.functional.pad(t, (0, 13)) if t.shape[-1] == 19 else t
    args = [pad(inputs[k]).requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    torch.library.opcheck(torch.ops.flowhn.selective_scan_fwd.default, (*args, 19, True, 8, 8, 1, False, False, False))
    # Channel-last: (B, D, L) views of (B, L, D) memory in, channel-last out (fake strides must match).
    cl = lambda t: t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    args = [cl(inputs[k]) if k in ("u", "delta", "B", "C", "z") else inputs[k].detach().requires_grad_(True)
            for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    torch.library.opcheck(torch.ops.flowhn.selective_scan_fwd.default, (*args, 19, True, 16, 8, 1, True, True, False))
    # A given as A_log (a_is_log), as Mamba1Mixer passes it.
    args[2] = torch.log(-inputs["A"]).detach().requires_grad_(True)
    torch.library.opcheck(torch.ops.flowhn.selective_scan_fwd.default, (*args, 19, True, 16, 8, 1, True, True, True))

    # Both mixers compile to one graph (fullgraph raises at a break) with the same outputs and
    # gradients as eager; Mamba-2 compares recompute against keeping the intermediates.
    def check(mixer, width, tweak=lambda m: None):
        x = torch.randn(2, 19, width, requires_grad=True)
        compiled = torch.compile(mixer, backend="aot_eager", fullgraph=True)
        out = compiled(x)
        got = torch.autograd.grad(out.square().sum(), [x, *mixer.parameters()])
        tweak(mixer)
        ref = mixer(x)
        want = torch.autograd.grad(ref.square().sum(), [x, *mixer.parameters()])
        torch.testing.assert_close(out, ref)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)

    torch.manual_seed(0)
    check(Mamba1Mixer(d_model=4, d_state=4, backend="triton"), 4)
    check(Mamba2Mixer(d_model=16, d_state=8, head_dim=8, chunk_size=8, backend="triton"), 16,
          tweak=lambda m: setattr(m, "recompute", False))

    # SSD with recompute keeps exactly its inputs for the backward.
    inputs = ssd_inputs(2, 64, 4, 8, 1, 16, dtype=torch.float32, seed=3)
    for key in ("x", "dt", "B", "C"):
        inputs[key].requires_grad_(True)
    input_bytes = sum(t.numel() * t.element_size() for t in inputs.values() if t is not None)
    for recompute in (False, True):
        saved = saved_tensor_bytes(lambda: ssd(**inputs, chunk_size=16, backend="triton", recompute=recompute))
        print("recompute" if recompute else "keep", saved, input_bytes)

    # Mamba1Mixer(remake_scan_inputs=True) under inductor's partitioner (min-cut, as torch.compile's default
    # backend uses): the backward remakes Δ and the scan's padded (B, d_inner, pitch) copies of u and Δ
    # instead of keeping them, so of those copies only z's is kept (without it, all three are).
    torch.manual_seed(0)
    mixer = Mamba1Mixer(d_model=16, d_state=4, backend="triton", remake_scan_inputs=True)
    compiled = torch.compile(mixer, backend="aot_eager_decomp_partition", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, kept = saved_tensors(lambda: compiled(torch.randn(2, 20, 16, requires_grad=True)))
    shapes = [shape for shape, _ in kept]
    print("padded_copies_kept", shapes.count((2, mixer.d_inner, 32)))  # L = 20 is padded to a pitch of 32
""")


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_triton_ops_compile_to_one_graph_in_interpreter():
    """The Triton scan is a torch.library op, so torch.compile neither breaks its graph nor
    retraces there (on the H100 each break had left the GPU idle while Python ran), the GPU SSD
    path's recompute keeps only the inputs, and a Mamba-1 mixer that remakes its scan inputs keeps
    neither padded copy."""
    stdout = run_in_triton_interpreter(_COMPILE_SCRIPT)
    saved = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in stdout.splitlines()}
    keep, inputs = saved["keep"]
    assert saved["recompute"] == [inputs, inputs]
    assert keep > inputs  # without recompute the entering chunk states are kept too
    assert saved["padded_copies_kept"] == [1]  # z's: u's and Δ's are remade in the backward


_LAYOUT_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import flowhn.kernels.triton_conv as triton_conv
    import flowhn.kernels.triton_scan as triton_scan
    from flowhn.kernels.testing import scan_inputs
    from flowhn.nn.ssm import Mamba1Mixer

    seen = {}

    def recording(name, op):
        def wrapped(dout, *args):
            seen[name] = dout.is_contiguous()
            return op(dout, *args)
        return wrapped

    triton_scan._scan_bwd = recording("scan", triton_scan._scan_bwd)
    triton_conv._conv_bwd = recording("conv", triton_conv._conv_bwd)
    torch.manual_seed(0)
    mixer = Mamba1Mixer(d_model=4, d_state=3, d_conv=4, backend="triton")
    mixer(torch.randn(1, 7, 4)).square().sum().backward()
    seen["scan in the mixer"] = seen.pop("scan")
    # Eager autograd hands the scan a contiguous dout anyway (its output's slice backward makes one);
    # under inductor it arrives as out_proj's gradient transposed, which this gradient stands in for.
    inputs = scan_inputs(1, 3, 16, 2, seed=1)
    args = [inputs[k].requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out = torch.ops.flowhn.selective_scan_fwd(*args, 16, True, 4, 16, 1, False, False, False)[0]
    out.backward(torch.randn(1, 16, 3).transpose(1, 2))
    json.dump(seen, sys.stdout)
""")


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_backward_ops_get_their_gradient_contiguous_in_interpreter():
    """In a Mamba-1 mixer the scan's dout (out_proj's gradient, transposed) arrives strided, and so may the
    scan's du that the conv-and-x_proj op's backward adds x_proj's gradient onto. The conv and scan backward
    ops must receive them contiguous, made so in the autograd functions (traced into the compiled backward,
    where inductor writes the layout): made inside an op, each was an eager strided copy a layer (about 0.45
    and 0.42 ms at Mamba 1B on an H200)."""
    assert json.loads(run_in_triton_interpreter(_LAYOUT_SCRIPT)) == {"scan in the mixer": True, "conv": True, "scan": True}


# ---------------------------------------------------------------- GPU (compiled kernels, realistic sizes)

GPU_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kernels", ["triton-states", "triton-channels", "gluon-chunks", "gluon-sequence",
                                     "gluon-forward", "gluon-backward", "gluon-partials"])
def test_triton_selective_scan_gpu(dtype, kernels, monkeypatch):
    """triton-*: the Triton main kernels with either backward loop; gluon-*: the Gluon ones with each
    GLUON_WALK (which directions walk every chunk in one program); gluon-partials: walking the sequence,
    dB and dC from stored per-program sums instead of atomics (GLUON_DB_DC)."""
    import flowhn.kernels.triton_scan as triton_scan

    main, _, option = kernels.partition("-")
    monkeypatch.setattr(triton_scan, "MAIN_KERNELS", main)
    monkeypatch.setattr(triton_scan, "GLUON_DB_DC", "partials" if option == "partials" else "atomics")
    if option == "partials":
        option = "sequence"
    monkeypatch.setattr(triton_scan, "BWD_LOOP" if main == "triton" else "GLUON_WALK", option)
    # 1500 channels: not a multiple of any channel tile; 1000 steps: not a multiple of the chunk.
    inputs = _scan_case((2, 1500, 1000, 16), "all", dtype=dtype, device="cuda", seed=11)
    errors = compare(functools.partial(selective_scan, backend="triton"), reference_fn("selective_scan"), inputs)
    assert_errors_below(errors, GPU_TOL[dtype])


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("walk", ["chunks", "sequence", "sequence-partials"])
@pytest.mark.parametrize("shape", [(3, 100, 37, 9), (1, 70, 130, 16)], ids=str)
@pytest.mark.parametrize("flags", list(SCAN_FLAGS))
def test_gluon_scan_walks_match_reference_gpu(walk, shape, flags, monkeypatch):
    """The Gluon kernels in fp32 at shapes off their tiles: one partial chunk (37 steps), three (130),
    9 states of a 16-wide block, and every combination of D, z, delta bias and softplus; dB and dC by
    atomics and (-partials) by stored per-program sums (GLUON_DB_DC)."""
    import flowhn.kernels.triton_scan as triton_scan

    walk, _, option = walk.partition("-")
    monkeypatch.setattr(triton_scan, "MAIN_KERNELS", "gluon")
    monkeypatch.setattr(triton_scan, "GLUON_WALK", walk)
    monkeypatch.setattr(triton_scan, "GLUON_DB_DC", "partials" if option == "partials" else "atomics")
    inputs = _scan_case(shape, flags, dtype=torch.float32, device="cuda", seed=sum(shape))
    errors = compare(functools.partial(selective_scan, backend="triton"), reference_fn("selective_scan"), inputs)
    assert_errors_below(errors, GPU_TOL[torch.float32])


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_ssd_gpu(dtype):
    inputs = ssd_inputs(2, 1000, 8, 64, 2, 64, dtype=dtype, device="cuda", seed=12)
    errors = compare(functools.partial(ssd, backend="triton"), reference_fn("ssd"), inputs)
    assert_errors_below(errors, GPU_TOL[dtype])


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_mamba_ssm, reason="mamba_ssm is not installed")
@pytest.mark.parametrize("kind", ["selective_scan", "ssd"])
def test_mamba_ssm_backend_gpu(kind):
    if kind == "selective_scan":
        inputs = _scan_case((2, 512, 512, 16), "all", dtype=torch.float32, device="cuda", seed=13)
        fn = functools.partial(selective_scan, backend="mamba_ssm")
    else:
        inputs = ssd_inputs(2, 512, 8, 64, 2, 64, dtype=torch.float32, device="cuda", seed=14)
        fn = functools.partial(ssd, backend="mamba_ssm")
    # mamba-ssm's Triton SSD multiplies fp32 tiles as TF32 (tl.dot's default): on an H200 its output was
    # 8.2e-4 and its gradients up to 1.5e-3 off float64 (twenty-first session, call D); its CUDA scan is fp32.
    assert_errors_below(compare(fn, reference_fn(kind), inputs), 1e-3 if kind == "selective_scan" else 3e-3)


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kernels", ["gluon-sequence", "gluon-chunks", "triton"])
def test_triton_selective_scan_channel_last_gpu(dtype, kernels, monkeypatch):
    """u, delta, z, B, C laid out as Mamba1Mixer passes them (in_mixer_layout), read in place: the Gluon
    kernels walking the sequence (the default) or a chunk a program, and the Triton ones. 1500 channels
    are not a multiple of any channel tile; L = 1000 is not a multiple of the chunk."""
    import flowhn.kernels.triton_scan as triton_scan

    main, _, walk = kernels.partition("-")
    monkeypatch.setattr(triton_scan, "MAIN_KERNELS", main)
    if walk:
        monkeypatch.setattr(triton_scan, "GLUON_WALK", walk)
    inputs = _scan_case((2, 1500, 1000, 16), "all", dtype=dtype, device="cuda", seed=15)
    calls = []

    def scan(u, *args, **kwargs):
        calls.append(triton_scan.is_channel_last(u))
        return triton_scan.selective_scan_triton(u, *args, channel_last=True, **kwargs)

    errors = compare(in_mixer_layout(scan), reference_fn("selective_scan"), inputs)
    assert calls == [True]
    assert_errors_below(errors, GPU_TOL[dtype])


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("tile", [
    dict(GLUON_CL_VECTOR=(8, 0)), dict(GLUON_CL_VECTOR=(8, 1)), dict(GLUON_CL_VECTOR=(2, 2)),
    dict(GLUON_CL_VECTOR=(8, 4)), dict(GLUON_BWD_LANES=4, GLUON_CL_VECTOR=(8, 0)),
    dict(GLUON_BWD_LANES=4, GLUON_CL_VECTOR=(8, 1)), dict(GLUON_BWD_LANES=4, GLUON_SUB=4, GLUON_CL_VECTOR=(8, 0)),
], ids=lambda tile: ",".join(f"{k[6:].lower()}={v}" for k, v in tile.items()))
def test_gluon_scan_channel_last_tiles_gpu(tile, monkeypatch):
    """The channel-last Gluon kernels at each tile they can run with: (forward, backward) channels a thread
    (triton_scan.GLUON_CL_VECTOR; 0: the row-major tiles' layout), the backward's lanes a channel and
    sub-chunk; fp32, every flag, in the mixer's layout at a shape off every tile (300 channels, 700 steps).
    Three channels' steps go where softplus is the identity (above 20), where it underflows (-30) and where
    the backward's slope takes its series (-8)."""
    import flowhn.kernels.triton_scan as triton_scan

    for name, value in tile.items():
        monkeypatch.setattr(triton_scan, name, value)
    inputs = _scan_case((2, 300, 700, 16), "all", dtype=torch.float32, device="cuda", seed=16)
    for channel, pre in enumerate((25.0, -30.0, -8.0)):
        inputs["delta"][:, channel, ::3] = pre
    errors = compare(in_mixer_layout(functools.partial(triton_scan.selective_scan_triton, channel_last=True)),
                     reference_fn("selective_scan"), inputs)
    assert_errors_below(errors, GPU_TOL[torch.float32])


@on_gpu_in_every_dtype_layout_and_walk
@pytest.mark.parametrize("shape", [(2, 300, 700, 16), (3, 100, 37, 9)], ids=str)
def test_gluon_scan_keeps_states_gpu(dtype, layout, walk, shape, monkeypatch):
    """keep_states: the forward keeps the state after every sub-chunk (in u's dtype) and the backward reads
    them instead of walking each chunk to find them. Every flag, against float64, in both layouts and walks, at
    shapes off the tiles (700 steps: a partial last chunk and sub-chunk; 37: one partial chunk; 9 states); the
    states it keeps have the shape the op's fake says, and none are kept where the Gluon kernels do not run."""
    import flowhn.kernels.triton_scan as triton_scan

    monkeypatch.setattr(triton_scan, "GLUON_WALK", walk)
    forward, kept = triton_scan._scan_fwd, []

    def spy(*args):
        outputs = forward(*args)
        kept.append(outputs[3])
        return outputs

    monkeypatch.setattr(triton_scan, "_scan_fwd", spy)
    inputs = _scan_case(shape, "all", dtype=dtype, device="cuda", seed=sum(shape) + 2)
    scan = functools.partial(triton_scan.selective_scan_triton, keep_states=True,
                             channel_last=layout == "channel-last")
    scan = in_mixer_layout(scan) if layout == "channel-last" else scan
    errors = compare(scan, reference_fn("selective_scan"), inputs)
    assert_errors_below(errors, GPU_TOL[dtype])
    batch, dim, length, state = shape
    assert kept[0].dtype == dtype and kept[0].shape == (batch, dim, -(-length // 64) * 8, state)
    monkeypatch.setattr(triton_scan, "GLUON_SUB", 4)  # not the forward's block of 8 steps: nothing kept
    kept.clear()
    compare(scan, reference_fn("selective_scan"), inputs)
    assert kept[0].numel() == 0


@on_gpu_in_every_dtype_layout_and_walk
def test_gluon_scan_takes_A_as_its_log_gpu(dtype, layout, walk, monkeypatch):
    """A given as Mamba's A_log (A_is_log, as Mamba1Mixer passes it): the Gluon kernels form -exp(A_log)
    and write dA_log, forward and backward, with and without the kept states, against float64, in both
    layouts and walks, at a shape off the tiles (300 channels, 700 steps, 13 states of a 16-wide block)."""
    import flowhn.kernels.triton_scan as triton_scan

    monkeypatch.setattr(triton_scan, "MAIN_KERNELS", "gluon")
    monkeypatch.setattr(triton_scan, "GLUON_WALK", walk)
    inputs = scan_inputs(2, 300, 700, 13, dtype=dtype, device="cuda", A_as_log=True, seed=41)
    for keep in (True, False):
        scan = functools.partial(triton_scan.selective_scan_triton, keep_states=keep,
                                 channel_last=layout == "channel-last")
        scan = in_mixer_layout(scan) if layout == "channel-last" else scan
        errors = compare(scan, reference_fn("selective_scan_A_log"), inputs)
        assert_errors_below({f"keep={keep}:{k}": v for k, v in errors.items()}, GPU_TOL[dtype])


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("shape", [(3, 100, 37, 9), (1, 70, 130, 16)], ids=str)
@pytest.mark.parametrize("flags", list(SCAN_FLAGS))
def test_gluon_scan_channel_last_matches_reference_gpu(shape, flags, monkeypatch):
    """The default path for a mixer's views on a GPU (channel_last=None: the Gluon kernels read them in
    place) in fp32 at shapes off the tiles, every combination of D, z, delta bias and softplus."""
    import flowhn.kernels.triton_scan as triton_scan

    assert triton_scan.CHANNEL_LAST_BY_DEFAULT and triton_scan.MAIN_KERNELS == "gluon"
    forward, layouts = triton_scan._scan_fwd, []

    def spy(*args):
        layouts.append(args[13])  # the op's channel_last argument (keep follows it)
        return forward(*args)

    monkeypatch.setattr(triton_scan, "_scan_fwd", spy)
    inputs = _scan_case(shape, flags, dtype=torch.float32, device="cuda", seed=sum(shape) + 1)
    errors = compare(in_mixer_layout(functools.partial(selective_scan, backend="triton")),
                     reference_fn("selective_scan"), inputs)
    assert layouts == [True]
    assert_errors_below(errors, GPU_TOL[torch.float32])


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_mamba1_mixer_triton_matches_reference_gpu():
    """The fused path (Triton conv on in_proj's strided half, channel-last scan on views of the
    projections) against the same weights on the float64 sequential reference: output and every gradient."""
    from flowhn.kernels.testing import relative_error
    from flowhn.nn.ssm import Mamba1Mixer

    torch.manual_seed(0)
    mixer = Mamba1Mixer(d_model=96, d_state=16, backend="triton").cuda().double()
    x = torch.randn(2, 257, 96, device="cuda", dtype=torch.float64, requires_grad=True)
    results = []
    for backend, keep in (("triton", False), ("triton", True), ("reference", False)):
        mixer.backend, mixer.keep_scan_states = backend, keep
        out = mixer(x)
        results.append([out, *torch.autograd.grad(out.square().sum(), [x, *mixer.parameters()])])
    names = ["out", "dx"] + [f"d{name}" for name, _ in mixer.named_parameters()]
    for fused in results[:2]:
        assert_errors_below({n: relative_error(a, b) for n, a, b in zip(names, fused, results[-1])}, 1e-4)


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
@pytest.mark.parametrize("block_n", [8, 16])
@pytest.mark.parametrize("warps", [1, 2, 4])
def test_gluon_scan_backward_sum_layout_stays_within_warps(lanes, block_n, warps):
    """The layout the backward re-lays its dB/dC products into (warp_sums_layout) holds every element of
    the (channels, 2·states) tile once, and gives each warp the rows (channels) products_registers gives
    it, so the conversion never moves data between warps and the per-warp sums cover the program."""
    from flowhn.kernels import gluon_scan

    rows, cols = (32 // lanes) * warps, 2 * block_n
    layout = gluon_scan.warp_sums_layout(rows, cols, warps)
    assert layout.shape == [rows, cols]

    # A linear layout: the element a (register, lane, warp) index holds is the XOR of the bases of its set bits.
    bases = layout.reg_bases + layout.lane_bases + layout.warp_bases
    warp_shift = len(layout.reg_bases) + len(layout.lane_bases)
    seen = {}
    for index in range(1 << len(bases)):
        row = col = 0
        for bit, (r, c) in enumerate(bases):
            if index >> bit & 1:
                row, col = row ^ r, col ^ c
        seen.setdefault((row, col), set()).add(index >> warp_shift)
    assert len(seen) == rows * cols and all(0 <= r < rows and 0 <= c < cols for r, c in seen)
    rows_a_warp = 32 // lanes  # products_registers: warp w holds channels [w·32/LPC, (w+1)·32/LPC)
    assert all(warps_of == {r // rows_a_warp} for (r, _), warps_of in seen.items())


@pytest.mark.skipif(not has_triton, reason="triton is not installed")
def test_gluon_scan_kernels_compile_for_sm90():
    """No GPU needed: Triton compiles for a target it is given and ships ptxas. Both Gluon kernels at
    the model's tile (chunk 64, 16 states, their default warps) build for sm_90 in both layouts, fit
    shared memory, spill little. The stride that is 1 in each layout is a constant, as at run time
    (Triton compiles an integer argument equal to 1 as one)."""
    import re
    import subprocess
    import tempfile

    import triton

    import flowhn.kernels.gluon_scan as gluon_scan
    from flowhn.kernels.testing import GLUON_SCAN_STRIDES, compile_gluon_scan_for_sm90

    # A_IS_LOG: A formed from Mamba's A_log in the kernels, as Mamba1Mixer runs them.
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, CHUNK=64, BLOCK_N=16, LPC=2, A_IS_LOG=True)
    from flowhn.kernels import triton_scan

    forward, backward = gluon_scan._scan_fwd_seq_kernel, gluon_scan._scan_bwd_seq_kernel
    fwd_warps, bwd_warps = triton_scan.GLUON_FWD_WARPS, triton_scan.GLUON_BWD_WARPS
    # Both walks at the defaults; the backward's dB/dC by partial sums (GLUON_DB_DC) walking the sequence.
    # With the states kept after every sub-chunk (KEEP) walking the sequence too.
    kernels = [(forward, dict(UNROLL=8, SEQUENCE=walk, KEEP=keep), fwd_warps)
               for walk, keep in ((False, False), (True, False), (True, True))]
    kernels += [(backward, dict(SUB=8, SEQUENCE=walk, PARTIALS=False, KEEP=keep), bwd_warps)
                for walk, keep in ((False, False), (True, False), (True, True))]
    kernels += [(backward, dict(SUB=8, SEQUENCE=True, PARTIALS=True, KEEP=False), bwd_warps)]
    # Channel-last at the channels a thread it runs with at 1024 and at 369 steps (triton_scan.cl_vector).
    strides = GLUON_SCAN_STRIDES
    vectors = {fn: sorted({triton_scan.cl_vector(length)[i] for length in (1024, 369)})
               for i, fn in enumerate((forward, backward))}
    builds = [(fn, dict(extra, CHANNEL_LAST=False, CL_VECTOR=1, **strides[False]), warps) for fn, extra, warps in kernels]
    builds += [(fn, dict(extra, CHANNEL_LAST=True, CL_VECTOR=vector, **strides[True]), warps)
               for fn, extra, warps in kernels for vector in vectors[fn]]
    for fn, extra, warps in builds:
        kernel = compile_gluon_scan_for_sm90(fn, dict(flags, **extra), warps)
        assert kernel.metadata.shared <= 100 * 1024, (fn.__name__, kernel.metadata.shared)
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        with tempfile.TemporaryDirectory() as folder:
            ptx = os.path.join(folder, "k.ptx")
            with open(ptx, "w") as f:
                f.write(kernel.asm["ptx"])
            report = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(folder, "k.cubin")],
                                    capture_output=True, text=True, check=True).stderr
        # Row-major: 0 bytes (backward walking the sequence), 72 (walking chunks: loop-invariant addresses
        # reloaded once a sub-chunk) and 36 (forward, at its 128-register cap); channel-last's backward at 4
        # channels a thread 92 (measured faster at 369 steps than 1 channel's 52 all the same).
        spills = re.search(r"(\d+) bytes spill stores", report)
        assert spills is None or int(spills.group(1)) <= (128 if extra["CHANNEL_LAST"] else 96), (fn.__name__, report)
