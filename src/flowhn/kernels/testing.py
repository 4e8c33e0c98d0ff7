"""Inputs and error measures for checking a scan backend against the float64 reference.

Shared by ``tests/test_kernels.py`` and ``scripts/gpu_check_kernels.py`` so both judge a kernel the
same way: identical (possibly bf16-rounded) inputs go to the kernel and, upcast, to the reference; the
error of the output and of every gradient is ``‖out − ref‖ / ‖ref‖`` under one random cotangent.
"""

from __future__ import annotations

from typing import Callable

import torch

from flowhn.kernels import reference


def _randn(shape, generator, device):
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float64)


def scan_inputs(batch, dim, length, state, *, dtype=torch.float32, device="cpu", D=True, z=True,
                delta_bias=True, delta_softplus=True, A_as_log=False, seed=0) -> dict:
    """Mamba-1 arguments at realistic magnitudes: step sizes ~1e-3..1 and A = -(1..N) as Mamba inits them.
    ``A_as_log``: "A" holds log(-A), as Mamba's A_log parameter, with the flag ``A_is_log=True`` beside it
    (for ``reference_fn("selective_scan_A_log")``)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if delta_softplus:
        delta = _randn((batch, dim, length), gen, device) - 2.0  # softplus(-2 ± 1) ≈ 0.05..0.3
    else:
        delta = torch.rand(batch, dim, length, generator=gen, device=device, dtype=torch.float64) * 0.3 + 1e-3
    steps = torch.arange(1, state + 1, device=device, dtype=torch.float64)
    args = {
        "u": _randn((batch, dim, length), gen, device),
        "delta": delta,
        "A": -steps * torch.exp(0.1 * _randn((dim, state), gen, device)),
        "B": _randn((batch, state, length), gen, device),
        "C": _randn((batch, state, length), gen, device),
        "D": _randn((dim,), gen, device) if D else None,
        "z": _randn((batch, dim, length), gen, device) if z else None,
        "delta_bias": None,
    }
    if delta_bias:
        # Without softplus a negative step would make the recurrence explode, so keep that bias positive.
        bias = _randn((dim,), gen, device)
        args["delta_bias"] = 0.5 * bias if delta_softplus else 0.01 * bias.abs()
    # Parameters stay fp32 in mixed precision; activations take the compute dtype.
    params = ("A", "D", "delta_bias")
    out = {k: None if v is None else v.to(torch.float32 if k in params and dtype != torch.float64 else dtype)
           for k, v in args.items()}
    out["delta_softplus"] = delta_softplus
    if A_as_log:
        out["A"], out["A_is_log"] = torch.log(-out["A"]), True
    return out


def in_mixer_layout(scan: Callable) -> Callable:
    """``scan`` (selective_scan's signature) fed its (B, D, L) and (B, N, L) arguments laid out as
    Mamba1Mixer hands them over: u and delta transposed views of contiguous (B, L, D) memory, B and C column
    views of one (B, L, 2N) tensor (x_proj's); z the second half of a (B, L, 2D) tensor, as in_proj's output
    was (the mixer's z now has u's strides; a wider row stride is the more general case).
    Differentiable: the gradients reach the arguments through the layout changes."""
    def wrapped(u, delta, A, B, C, D=None, z=None, delta_bias=None, **flags):
        channel_last = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
        u, delta = channel_last(u), channel_last(delta)
        if z is not None:
            z = torch.cat([u.transpose(1, 2), z.transpose(1, 2)], dim=-1)[..., u.shape[1]:].transpose(1, 2)
        state = B.shape[1]
        rows = torch.cat([B.transpose(1, 2), C.transpose(1, 2)], dim=-1)
        B, C = rows[..., :state].transpose(1, 2), rows[..., state:].transpose(1, 2)
        return scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, **flags)

    return wrapped


# The Gluon scan kernels' strides as the model runs them: the unit stride of each layout, and channel-last
# the step strides of a Mamba 135M layer ((B, L, 1536) u and z, B of its (B, L, 48 + 2·16) x_proj output),
# compile-time constants as at run time. (z was the second half of one (B, L, 3072) in_proj output, stride
# 3072, until the sixteenth session split in_proj into two GEMMs.)
GLUON_SCAN_STRIDES = {False: dict(su_t=1, sz_t=1, sB_t=1),
                      True: dict(su_d=1, sz_d=1, sB_n=1, su_t=1536, sz_t=1536, sB_t=80)}
_BF16_POINTERS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr",
                  "out_ptr", "kept_ptr"}


def compile_gluon_scan_for_sm90(fn, constexprs: dict, num_warps: int, **options):
    """A gluon_scan kernel compiled for sm_90 without a GPU (Triton compiles for a target it is given): the
    activations' pointers bf16, the rest fp32, every other integer argument an i32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    signature = {name: "constexpr" if name in constexprs else
                 (("*bf16" if name in _BF16_POINTERS else "*fp32") if name.endswith("_ptr") else "i32")
                 for name in fn.arg_names}
    source = GluonASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs={})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, **options))


def ssd_inputs(batch, length, heads, head_dim, groups, state, *, dtype=torch.float32, device="cpu", D=True,
               seed=0) -> dict:
    """Mamba-2 arguments: dt log-uniform in [1e-3, 1e-1] and A in [-16, -1], as Mamba-2 inits them."""
    gen = torch.Generator(device=device).manual_seed(seed)
    unit = lambda *shape: torch.rand(shape, generator=gen, device=device, dtype=torch.float64)  # noqa: E731
    args = {
        "x": _randn((batch, length, heads, head_dim), gen, device),
        "dt": 1e-3 * 100.0 ** unit(batch, length, heads),
        "A": -(1.0 + 15.0 * unit(heads)),
        "B": _randn((batch, length, groups, state), gen, device),
        "C": _randn((batch, length, groups, state), gen, device),
        "D": _randn((heads,), gen, device) if D else None,
    }
    params = ("A", "D")
    return {k: None if v is None else v.to(torch.float32 if k in params and dtype != torch.float64 else dtype)
            for k, v in args.items()}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _outputs(result) -> tuple:
    """A function's outputs as a tuple: one tensor, or a tuple of them."""
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def reference_result(ref_fn: Callable, inputs: dict, seed: int = 1) -> dict:
    """``ref_fn``'s outputs and gradients in float64 under one random cotangent per output: what
    ``errors_against`` compares a kernel with (compute it once to check many kernel variants)."""
    tensors = {k: v.detach().double().requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    flags = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
    expected = _outputs(ref_fn(**tensors, **flags))
    gen = torch.Generator(device=expected[0].device).manual_seed(seed)
    cotangents = [torch.randn(e.shape, generator=gen, device=e.device, dtype=torch.float64) for e in expected]
    grads = torch.autograd.grad(expected, list(tensors.values()), cotangents)
    return {"outs": [e.detach() for e in expected], "cotangents": cotangents, "grads": dict(zip(tensors, grads))}


def errors_against(fn: Callable, inputs: dict, reference_: dict) -> dict:
    """Relative errors of ``fn`` on ``inputs`` against ``reference_result``: 'out' ('out0', 'out1', ...
    for a function with several outputs) and 'd<name>' per input."""
    mine = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    flags = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
    outs = _outputs(fn(**mine, **flags))
    grads = torch.autograd.grad(outs, list(mine.values()), [c.to(o.dtype) for c, o in zip(reference_["cotangents"], outs)])
    names = ["out"] if len(outs) == 1 else [f"out{i}" for i in range(len(outs))]
    errors = {name: relative_error(o, e) for name, o, e in zip(names, outs, reference_["outs"])}
    errors.update({f"d{k}": relative_error(g, reference_["grads"][k]) for k, g in zip(mine, grads)})
    return errors


def compare(fn: Callable, ref_fn: Callable, inputs: dict, seed: int = 1) -> dict:
    """Relative errors of ``fn`` vs ``ref_fn`` (fed the same inputs in float64): 'out' (or 'out0', ...
    per output) and 'd<name>' per input."""
    return errors_against(fn, inputs, reference_result(ref_fn, inputs, seed))


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy of 1 GiB on the current GPU (read + write): the floors' bandwidth."""
    from triton.testing import do_bench

    src = torch.empty(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / do_bench(lambda: dst.copy_(src), return_mode="median") / 1e6


def saved_tensors(call: Callable[[], object]) -> tuple[object, list[tuple[tuple[int, ...], torch.dtype]]]:
    """(``call()``'s result, the (shape, dtype) of every tensor autograd keeps for the backward while it
    runs, a compiled graph's included): what a recompute option is meant to shrink."""
    kept = []

    def pack(tensor):
        kept.append((tuple(tensor.shape), tensor.dtype))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = call()
    return result, kept


def saved_tensor_bytes(call: Callable[[], object]) -> int:
    """Bytes of the tensors autograd keeps for the backward while ``call()`` runs."""
    return sum(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in saved_tensors(call)[1])


def reference_fn(kind: str) -> Callable:
    """The float64-capable definition for ``kind`` ("selective_scan", "ssd", or "selective_scan_A_log": the
    scan taking A as log(-A))."""
    return {"selective_scan": reference.selective_scan_sequential, "ssd": reference.ssd_sequential,
            "selective_scan_A_log": _selective_scan_from_A_log}[kind]


def _selective_scan_from_A_log(A, A_is_log, **kwargs):
    """The sequential scan with A given as Mamba's A_log (``selective_scan(..., A_is_log=True)``)."""
    return reference.selective_scan_sequential(A=-torch.exp(A) if A_is_log else A, **kwargs)


class ScriptLog:
    """``print`` for the GPU scripts that also appends each line to their log under $OUT, once
    ``open`` names it (what comes back from the device is that file)."""

    def __init__(self):
        self.file = None

    def open(self, path) -> None:
        self.file = open(path, "w")

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def poison_allocator_cache() -> None:
    """Fill (up to 8 GiB of) free device memory with NaN and hand it back to PyTorch's cache, so an
    output element a kernel never writes shows up as NaN. No-op without CUDA."""
    if not torch.cuda.is_available():
        return
    free, _ = torch.cuda.mem_get_info()
    torch.cuda.empty_cache()
    block = torch.full((int(min(free * 0.5, 8 << 30)) // 4,), float("nan"), device="cuda")
    del block
