"""SSM scan kernels behind one interface, dispatched by backend.

``selective_scan`` (Mamba-1) and ``ssd`` (Mamba-2) have the semantics and layouts of the step-by-step
definitions in ``flowhn.kernels.reference``. Backends (config key ``model.ssm_backend``):

* ``torch``: chunked PyTorch (CPU, and anywhere as a fallback);
* ``triton``: our Triton kernels for Mamba-1 (``triton_scan``) and Mamba-2 (``triton_ssd``) (CUDA, or the
  CPU interpreter when ``TRITON_INTERPRET=1``);
* ``mamba_ssm``: the reference CUDA/Triton kernels of the ``mamba_ssm`` package, when it is installed;
* ``reference``: the sequential definitions (slow; for tests);
* ``auto``: ``triton`` on CUDA if it works, else ``mamba_ssm`` if it imports, else ``torch``.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from flowhn.kernels import reference
from flowhn.kernels.ssd_chunked import ssd_chunked
from flowhn.kernels.torch_conv import check_conv_args, causal_conv1d_silu_reference, causal_conv1d_silu_shifted
from flowhn.kernels.torch_scan import selective_scan_torch

__all__ = ["selective_scan", "ssd", "causal_conv1d_silu", "causal_conv1d_silu_proj", "available_backends",
           "resolve_backend", "BACKENDS"]

# The conv the GPU backends (triton, mamba_ssm) use: "triton" (one Triton kernel forward, one backward,
# triton_conv.py) or "shifted" (K multiply-adds that inductor fuses with bias and SiLU, torch_conv.py).
# Chosen from the conv rows of scripts/gpu_mamba1.py on an H200 (fwd+bwd, 16x1024x4096, k=4, bf16):
# Triton 1.07-1.25 ms, shifted compiled 3.39 ms, the old F.conv1d + SiLU 3.05 ms eager / 3.39 compiled.
GPU_CONV = "triton"

BACKENDS = ("auto", "torch", "triton", "mamba_ssm", "reference")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _import_problem(module: str) -> str | None:
    """Why ``module`` cannot be used (None if it imports). Cached: import attempts are slow."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken binary extension raises more than ImportError
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _unavailable(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run on ``device``, or None if it can."""
    if name in ("torch", "reference"):
        return None
    if name == "triton":
        if device.type != "cuda" and not (device.type == "cpu" and _interpreting()):
            return f"it needs a CUDA device (got {device.type}; TRITON_INTERPRET=1 runs it on CPU, slowly)"
        return _import_problem("flowhn.kernels.triton_scan")
    if name == "mamba_ssm":
        if device.type != "cuda":
            return f"it needs a CUDA device (got {device.type})"
        return _import_problem("flowhn.kernels.mamba_ssm_ops")
    return f"unknown backend; choose one of {', '.join(BACKENDS)}"


# Under torch.compile the answer is taken once, at trace time: it depends only on the device and the
# environment, and tracing the import probe would break the graph at every mixer.
@torch.compiler.assume_constant_result
def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend ``name`` means on ``device``; raises a one-line ValueError if unusable."""
    device = torch.device(device)
    if name == "auto":
        # Triton (ours) before mamba-ssm: on an H200 its scan forward+backward is 3.11 against mamba-ssm's
        # 5.67 ms at 16x4096x1024x16 bf16, its conv 0.240 against causal-conv1d's 0.288, and mamba-ssm's
        # CUDA ops break the compiled graph (experiments/bench/H200.md, twenty-first session, call D).
        if device.type == "cuda":
            for candidate in ("triton", "mamba_ssm"):
                if _unavailable(candidate, device) is None:
                    return candidate
        return "torch"
    problem = _unavailable(name, device)
    if problem is not None:
        raise ValueError(f"model.ssm_backend={name!r} is not available: {problem}")
    return name


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Concrete backends usable on ``device`` (default: CUDA if present, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return [name for name in BACKENDS[1:] if _unavailable(name, device) is None]


def _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias):
    batch, dim, length = u.shape
    state = A.shape[-1]
    expected = {"delta": (delta, (batch, dim, length)), "A": (A, (dim, state)), "B": (B, (batch, state, length)),
                "C": (C, (batch, state, length)), "D": (D, (dim,)), "z": (z, (batch, dim, length)),
                "delta_bias": (delta_bias, (dim,))}
    for key, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {key} has shape {tuple(tensor.shape)}, expected {shape} "
                             f"for u of shape {tuple(u.shape)} and A of shape {tuple(A.shape)}")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend="auto",
                   remake_inputs=False, keep_states=None, A_is_log=False):
    """Mamba-1 selective scan. u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,  y_t = C_t·h_t + D u_t,  y ← y·silu(z), with
    Δ = softplus(delta + delta_bias) if ``delta_softplus`` else delta + delta_bias. Returns y (B, D, L)
    in u's dtype, differentiable in every tensor argument. ``remake_inputs`` (triton backend, under
    torch.compile): the backward remakes its padded row-major copies of u and delta from u and delta
    instead of keeping them (``triton_scan.selective_scan_triton``); the other backends ignore it, as they
    do ``keep_states`` (triton backend: the forward keeps the state after every sub-chunk for the backward;
    None: ``triton_scan.KEEP_STATES``). ``A_is_log``: A holds Mamba's A_log parameter, and the scan runs with
    -exp(A_log), differentiable in A_log; the triton backend forms it inside its GPU kernels (no elementwise
    kernel of its own before the scan, nor for its gradient after).
    """
    _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    if name == "triton":
        from flowhn.kernels.triton_scan import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                     delta_softplus=delta_softplus, remake_inputs=remake_inputs,
                                     keep_states=keep_states, A_is_log=A_is_log)
    if A_is_log:
        A = -torch.exp(A)
    args = (u, delta, A, B, C)
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    if name == "torch":
        return selective_scan_torch(*args, **kwargs)
    if name == "reference":
        return reference.selective_scan_sequential(*args, **kwargs)
    from flowhn.kernels.mamba_ssm_ops import selective_scan_mamba_ssm

    return selective_scan_mamba_ssm(*args, **kwargs)


def causal_conv1d_silu(x, weight, bias=None, backend="auto"):
    """silu(causal depthwise conv1d(x) + bias), channel-last. x: (B, L, C), any batch/row strides;
    weight: (C, K); bias: (C,) or None. Position t sees x[t-K+1 .. t]. Returns (B, L, C) in x's dtype,
    differentiable in x, weight and bias. Defined by ``torch_conv.causal_conv1d_silu_reference``.
    ``backend`` is the model's ssm backend: ``reference`` runs F.conv1d, ``torch`` the shifted
    multiply-adds, ``triton`` / ``mamba_ssm`` the GPU choice ``GPU_CONV``."""
    check_conv_args(x, weight, bias)
    name = resolve_backend(backend, x.device)
    if name == "reference":
        return causal_conv1d_silu_reference(x, weight, bias)
    if name == "torch" or GPU_CONV == "shifted":
        return causal_conv1d_silu_shifted(x, weight, bias)
    from flowhn.kernels.triton_conv import causal_conv1d_silu_triton

    return causal_conv1d_silu_triton(x, weight, bias)


def causal_conv1d_silu_proj(x, weight, bias, proj_weight, backend="auto"):
    """(h, h @ proj_weight.T) with h = ``causal_conv1d_silu(x, weight, bias)``, proj_weight (P, C): a Mamba-1
    mixer's conv and its x_proj. On the GPU backends one op whose backward hands x_proj's input gradient to
    the conv's backward beside the other consumer's, added as the conv reads them
    (``triton_conv.causal_conv1d_silu_proj_triton``); elsewhere the two calls, x_proj by F.linear."""
    name = resolve_backend(backend, x.device)
    if name in ("torch", "reference") or GPU_CONV == "shifted":
        hidden = causal_conv1d_silu(x, weight, bias, backend=name)
        return hidden, torch.nn.functional.linear(hidden, proj_weight)
    from flowhn.kernels.triton_conv import causal_conv1d_silu_proj_triton

    return causal_conv1d_silu_proj_triton(x, weight, bias, proj_weight)


def ssd(x, dt, A, B, C, D=None, chunk_size=64, backend="auto", recompute=True):
    """Mamba-2 SSD. x: (B, L, H, P); dt: (B, L, H), positive; A: (H,), negative; B, C: (B, L, G, N), G | H.

    Per head: h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t,  y_t = h_t C_t + D x_t. Returns (B, L, H, P) in
    x's dtype, differentiable. L need not be a multiple of ``chunk_size``. ``recompute`` (the triton
    backend): keep only the inputs for the backward and recompute the chunked intermediates there.
    """
    batch, length, heads, _ = x.shape
    if B.shape != C.shape or B.shape[:2] != (batch, length) or heads % B.shape[2]:
        raise ValueError(f"ssd: B {tuple(B.shape)} and C {tuple(C.shape)} must both be (batch, length, groups, "
                         f"state) with groups dividing the {heads} heads of x {tuple(x.shape)}")
    name = resolve_backend(backend, x.device)
    if name == "torch":
        return ssd_chunked(x, dt, A, B, C, D, chunk_size=chunk_size)
    if name == "reference":
        return reference.ssd_sequential(x, dt, A, B, C, D)
    if name == "triton":
        from flowhn.kernels.triton_ssd import ssd_gpu

        return ssd_gpu(x, dt, A, B, C, D, chunk_size=chunk_size, recompute=recompute)
    from flowhn.kernels.mamba_ssm_ops import ssd_mamba_ssm

    return ssd_mamba_ssm(x, dt, A, B, C, D, chunk_size=chunk_size)
