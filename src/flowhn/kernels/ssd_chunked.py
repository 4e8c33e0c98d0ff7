"""Mamba-2 SSD by the chunked algorithm of the Mamba-2 paper (section 6), built from matmuls.

With per-head scalar decay the recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t``,
``y_t = h_t C_t`` splits, for chunks of T steps, into
  1. intra-chunk: y = (C Bᵀ ∘ decay mask) (dt x)  — a masked T×T "attention" per chunk and head;
  2. chunk states: the state each chunk adds, s_c = Σ_t exp(A_end - A_t) dt_t x_t ⊗ B_t;
  3. state passing: the state entering chunk c, a decay-weighted sum of earlier s (a small c×c matmul);
  4. inter-chunk: y += exp(A_t) (state entering the chunk) C_t.
Autograd differentiates it. Heads are kept as (groups, heads per group) so B and C are never
repeated per head. Decays are always computed in the accumulation dtype; ``matmul_dtype`` lets the GPU
path run the contractions in bf16 (with fp32 accumulation) where the inputs are bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowhn.kernels.torch_scan import accumulation_dtype


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = x[..., j+1] + ... + x[..., i]`` for i >= j, -inf above the diagonal.

    Built by masked cumulative sums rather than as differences of one cumsum, so a long run of decays
    does not cancel catastrophically; exp(-inf) = 0 then gives the causal mask with zero gradient.
    """
    length = x.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=x.device).tril(-1)
    x = x[..., :, None].expand(*x.shape, length).masked_fill(~lower, 0)
    return torch.cumsum(x, dim=-2).masked_fill(~torch.ones_like(lower).tril(), float("-inf"))


def ssd_chunked(x, dt, A, B, C, D=None, chunk_size=64, matmul_dtype=None):
    """Same contract as ``reference.ssd_sequential``: x (b, l, h, p), dt (b, l, h), A (h,), B/C (b, l, g, n)."""
    batch, length, heads, head_dim = x.shape
    groups, state = B.shape[2], B.shape[3]
    if heads % groups:
        raise ValueError(f"ssd: heads ({heads}) must be a multiple of B/C groups ({groups})")
    rep = heads // groups
    acc = accumulation_dtype(x, dt, A, B, C)
    mm = matmul_dtype or acc
    T = chunk_size
    pad = (-length) % T
    # Padding steps have dt = 0: decay 1 and no input, so they change no state; their outputs are dropped.
    x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    chunks = (length + pad) // T

    xc = x.to(acc).reshape(batch, chunks, T, groups, rep, head_dim)
    dtc = dt.to(acc).reshape(batch, chunks, T, groups, rep)
    Bc = B.reshape(batch, chunks, T, groups, state).to(mm)
    Cc = C.reshape(batch, chunks, T, groups, state).to(mm)
    xdt = (xc * dtc[..., None]).to(mm)
    # Log-decay per step, time last: (b, c, g, r, T); cumulative within each chunk.
    log_a = (dtc * A.to(acc).reshape(groups, rep)).permute(0, 1, 3, 4, 2)
    log_a_cum = torch.cumsum(log_a, dim=-1)

    # 1. intra-chunk
    decay = torch.exp(segment_sum(log_a))  # (b, c, g, r, T, T): target l, source s
    scores = torch.einsum("bclgn,bcsgn->bcgls", Cc, Bc)[:, :, :, None] * decay
    y = torch.einsum("bcgrls,bcsgrp->bclgrp", scores.to(mm), xdt).to(acc)

    # 2. state contributed by each chunk, seen at its end
    to_end = torch.exp(log_a_cum[..., -1:] - log_a_cum)
    states = torch.einsum("bcsgn,bcgrs,bcsgrp->bcgrpn", Bc, to_end.to(mm), xdt).to(acc)

    # 3. state entering each chunk: chunk z receives chunk c < z decayed by chunks c+1 .. z-1
    chunk_log_a = F.pad(log_a_cum[..., -1], (0, 0, 0, 0, 1, 0))  # (b, c+1, g, r)
    passing = torch.exp(segment_sum(chunk_log_a.permute(0, 2, 3, 1)))  # (b, g, r, c+1, c+1)
    entering = torch.einsum("bgrzc,bcgrpn->bzgrpn", passing[..., :-1, 1:], states)

    # 4. inter-chunk output: the entering state, decayed to each step, read out by C
    y = y + torch.einsum("bclgn,bcgrpn,bcgrl->bclgrp", Cc, entering.to(mm), torch.exp(log_a_cum).to(mm)).to(acc)

    y = y.reshape(batch, chunks * T, heads, head_dim)[:, :length]
    if D is not None:
        y = y + x[:, :length].to(acc) * D.to(acc)[None, None, :, None]
    return y.to(x.dtype)
