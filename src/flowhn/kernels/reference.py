"""Step-by-step recurrences: the definitions every fast SSM path is tested against.

These loop over time one step at a time, exactly as the state-space equations read, so they are
slow and obviously right. They use elementwise products only (no matmuls), so a FLOP counter
run over a model with this backend counts the model's projections and attention alone. Layouts follow mamba-ssm so its kernels are drop-in replacements:

* Mamba-1 selective scan: ``u, delta, z`` are ``(B, D, L)``; ``A`` is ``(D, N)``; ``B, C`` are
  ``(B, N, L)`` (one shared input/output projection per step, as in Mamba-1).
* Mamba-2 SSD: ``x`` is ``(B, L, H, P)``; ``dt`` is ``(B, L, H)`` and already positive; ``A`` is
  ``(H,)`` (negative); ``B, C`` are ``(B, L, G, N)`` with ``H`` divisible by ``G``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(t):
    """Float32 for everything below float64, float64 for float64: the float64 reference the fast paths
    are judged against must not silently round to float32 on the way."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t ;  y_t = C_t · h_t + D u_t ;  y ← y · silu(z)."""
    dtype = u.dtype
    u, delta, B, C = _acc(u), _acc(delta), _acc(B), _acc(C)
    if delta_bias is not None:
        delta = delta + _acc(delta_bias)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * _acc(A))
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * _acc(D)[None, :, None]
    if z is not None:
        y = y * F.silu(_acc(z))
    return y.to(dtype)


def ssd_sequential(x, dt, A, B, C, D=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t ;  y_t = h_t C_t + D x_t   (per head)."""
    dtype = x.dtype
    batch, length, heads, head_dim = x.shape
    groups = B.shape[2]
    rep = heads // groups
    Bh = _acc(B).repeat_interleave(rep, dim=2)
    Ch = _acc(C).repeat_interleave(rep, dim=2)
    x, dt = _acc(x), _acc(dt)
    h = x.new_zeros(batch, heads, head_dim, B.shape[-1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * _acc(A))  # (B, H)
        h = decay[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((h * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * _acc(D)[None, None, :, None]
    return y.to(dtype)
