"""Causal grouped-query attention with rotary positions, through ``scaled_dot_product_attention``.

A branch may see only some of the sequence's tokens (token splits), so attention takes the
original positions of the tokens it gets: RoPE then encodes true distances, and causality among
the gathered tokens is the ordinary lower triangle because they stay in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowhn.nn.flops import Flops, linear_flops


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (T, head_dim) in the non-interleaved (rotate-half) layout Llama uses."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


class RotaryTables(nn.Module):
    """RoPE's cos/sin for positions [0, length), computed once for each (head_dim, theta) a model's
    attention layers use, and held as buffers (not persistent: checkpoints are unchanged). Traced
    inside the compiled graph instead, the tables were fused into every kernel that applies RoPE,
    which then recomputed cos and sin (fp32 libdevice calls with range reduction) per element: at 1B
    those kernels took ~10 ms of llama's 204 ms of kernel time a step on an H200 (experiments/bench/H200.md)."""

    def __init__(self, keys, length: int):
        super().__init__()
        self.length = length
        self.names: dict[tuple[int, float], str] = {}
        positions = torch.arange(length)
        for i, (head_dim, theta) in enumerate(sorted({(int(h), float(t)) for h, t in keys})):
            cos, sin = rope_tables(positions, head_dim, theta)
            self.register_buffer(f"table_{i}", torch.stack([cos, sin]), persistent=False)
            self.names[(head_dim, theta)] = f"table_{i}"

    def get(self, head_dim: int, theta: float, seq_len: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) for positions [0, seq_len), or None where the tables do not cover them (a longer
        sequence, another head_dim) or were cast with the model (the caller then computes them in fp32)."""
        name = self.names.get((head_dim, float(theta)))
        if name is None or seq_len > self.length:
            return None
        table = getattr(self, name)
        if table.dtype != torch.float32:
            return None
        return table[0, :seq_len], table[1, :seq_len]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def window_mask(positions: torch.Tensor, window: int, n_prefix: int) -> torch.Tensor:
    """Boolean (T, T) mask: causal, keys at most ``window - 1`` positions back, and the first
    ``n_prefix`` positions (Hymba's meta tokens) always visible, as attention sinks."""
    q = positions[:, None]
    k = positions[None, :]
    return (k <= q) & ((q - k < window) | (k < n_prefix))


class Attention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int | None = None,
        rope_theta: float = 10000.0,
        window: int | None = None,
        kv_role: str | None = None,
    ):
        """``kv_role``: None (own K/V), "produce" (own K/V, shared with the next layer) or
        "consume" (no K/V projections; uses the producing layer's, Hymba's cross-layer sharing)."""
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = head_dim or d_model // n_heads
        self.rope_theta, self.window, self.kv_role = rope_theta, window, kv_role
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        if kv_role != "consume":
            self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, ctx) -> torch.Tensor:
        batch, length, _ = x.shape
        cos, sin = ctx.rope(positions, self.head_dim, self.rope_theta)
        q = apply_rope(self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)
        if self.kv_role == "consume":
            k, v = ctx.shared_kv.pop()
        else:
            k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
            k = apply_rope(k, cos, sin)
            if self.kv_role == "produce":
                ctx.shared_kv.append((k, v))
        gqa = self.n_kv_heads != self.n_heads
        if self.window is None or self.window >= length:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            mask = ctx.cached(("window", self.window), lambda: window_mask(positions, self.window, ctx.n_prefix),
                              per=positions)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def flops(self, seq_len: int) -> Flops:
        """Forward FLOPs per query token when the branch sees ``seq_len`` tokens; each query is
        counted against every key it could see (the window caps that)."""
        keys = seq_len if self.window is None else min(seq_len, self.window)
        return Flops(matmul=linear_flops(self), attention=4.0 * self.n_heads * self.head_dim * keys)
