"""Causal depthwise conv1d + bias + SiLU in PyTorch: the definition, and the fusable PyTorch path.

Layout is channel-last, ``x`` (B, L, C) as it comes out of a mixer's in_proj (a strided view is fine),
``weight`` (C, K), ``bias`` (C,) or None. Position t sees x[t-K+1 .. t] (zeros before the start):

    out[b, t, c] = silu(bias[c] + Σ_k weight[c, k] · x[b, t - (K-1) + k, c])

* ``causal_conv1d_silu_reference``: ``F.conv1d`` on the transposed input, the mixers' old path; the
  semantic definition the other paths are tested against (float64 inputs give a float64 result).
* ``causal_conv1d_silu_shifted``: the same sum written as K shifted multiply-adds. Under
  ``torch.compile`` inductor fuses the shifts, bias and SiLU into one pointwise kernel in the forward
  and the weight/bias gradients into reductions in the backward, with no transpose copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_conv_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"causal_conv1d_silu: x must be (batch, length, channels) and weight (channels, width); "
                         f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[2],):
        raise ValueError(f"causal_conv1d_silu: bias has shape {tuple(bias.shape)}, expected ({x.shape[2]},)")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def causal_conv1d_silu_reference(x, weight, bias=None, silu=True):
    """The definition: F.conv1d over (B, C, L) with K-1 zeros on the left; result in x's dtype."""
    dtype, acc = x.dtype, _compute_dtype(x)
    width = weight.shape[-1]
    xt = F.pad(x.to(acc).transpose(1, 2), (width - 1, 0))
    out = F.conv1d(xt, weight.to(acc)[:, None, :], None if bias is None else bias.to(acc), groups=x.shape[2])
    out = out.transpose(1, 2)
    return (F.silu(out) if silu else out).to(dtype)


def causal_conv1d_silu_shifted(x, weight, bias=None, silu=True):
    """K shifted multiply-adds in fp32 (fp64 for fp64 x); result in x's dtype."""
    dtype, acc = x.dtype, _compute_dtype(x)
    width, length = weight.shape[-1], x.shape[1]
    padded = F.pad(x, (0, 0, width - 1, 0))  # zeros before position 0, along L
    w = weight.to(acc)
    out = padded[:, width - 1:width - 1 + length].to(acc) * w[:, width - 1]
    for k in range(width - 1):
        out = out + padded[:, k:k + length].to(acc) * w[:, k]
    if bias is not None:
        out = out + bias.to(acc)
    return (F.silu(out) if silu else out).to(dtype)


def conv_inputs(batch, length, channels, width=4, *, dtype=torch.float32, device="cpu", bias=True, row_stride=None,
                seed=0, proj_rows=0) -> dict:
    """Arguments for tests and benchmarks: x (B, L, C) in ``dtype`` (with ``row_stride`` > C, a view of the
    first C columns of a wider tensor, as the hidden half of an in_proj output), weight and bias fp32 as
    parameters stay in mixed precision (float64 when ``dtype`` is). ``proj_rows``: also a projection's weight
    (proj_rows, C), as a mixer's x_proj (for ``causal_conv1d_silu_proj``)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    param = torch.float64 if dtype == torch.float64 else torch.float32
    full = torch.randn(batch, length, row_stride or channels, generator=gen, device=device, dtype=torch.float64)
    inputs = {
        "x": full.to(dtype)[..., :channels],
        "weight": (torch.randn(channels, width, generator=gen, device=device, dtype=torch.float64)
                   / width ** 0.5).to(param),
        "bias": torch.randn(channels, generator=gen, device=device, dtype=torch.float64).to(param) if bias else None,
    }
    if proj_rows:
        inputs["proj_weight"] = (torch.randn(proj_rows, channels, generator=gen, device=device, dtype=torch.float64)
                                 / channels ** 0.5).to(param)
    return inputs


def _conv_proj_reference(x, weight, bias, proj_weight):
    hidden = causal_conv1d_silu_reference(x, weight, bias)
    return hidden, hidden @ proj_weight.t()


def compare_conv(fn, inputs: dict, seed: int = 1) -> dict:
    """Relative errors ‖out − ref‖/‖ref‖ of ``fn(x, weight, bias)`` and of its gradients against the float64
    reference fed the same inputs, under one random cotangent. A strided x (a column view of a wider
    tensor) keeps its strides: gradients are taken on the wider tensor. With ``inputs["proj_weight"]``:
    ``fn(x, weight, bias, proj_weight)`` returns (out, out @ proj_weight.T), compared ("out", "proj") with a
    cotangent each, and its gradient "dproj_weight" too."""
    from flowhn.kernels.testing import relative_error

    x, weight, bias, proj_weight = inputs["x"], inputs["weight"], inputs["bias"], inputs.get("proj_weight")
    channels = x.shape[2]
    whole = (x if x._base is None else x._base).detach()
    if whole.shape[:2] != x.shape[:2] or whole.dtype != x.dtype:
        raise ValueError("compare_conv: x must be a column slice of a (B, L, S) tensor of its dtype")
    params = [t for t in (weight, bias, proj_weight) if t is not None]
    mine = [whole.clone().requires_grad_()] + [t.detach().clone().requires_grad_() for t in params]
    ref = [whole.double().requires_grad_()] + [t.detach().double().requires_grad_() for t in params]

    def run(f, leaves):
        args = [leaves[0][..., :channels], leaves[1], leaves[2] if bias is not None else None]
        if proj_weight is not None:
            return tuple(f(*args, leaves[-1]))
        return (f(*args),)

    outs = run(fn, mine)
    expected = run(_conv_proj_reference if proj_weight is not None else causal_conv1d_silu_reference, ref)
    gen = torch.Generator(device=expected[0].device).manual_seed(seed)
    cotangents = [torch.randn(e.shape, generator=gen, device=e.device, dtype=torch.float64) for e in expected]
    grads = torch.autograd.grad(outs, mine, [c.to(o.dtype) for c, o in zip(cotangents, outs)])
    ref_grads = torch.autograd.grad(expected, ref, cotangents)
    names = ["dx", "dweight"] + ["dbias"] * (bias is not None) + ["dproj_weight"] * (proj_weight is not None)
    errors = {name: relative_error(o, e) for name, o, e in zip(("out", "proj"), outs, expected)}
    errors.update({k: relative_error(g, r) for k, g, r in zip(names, grads, ref_grads)})
    return errors
