"""Mamba-1 (selective scan) and Mamba-2 (SSD) mixers.

Parameter names follow HF transformers' ``MambaMixer`` / ``Mamba2Mixer`` (and so mamba-ssm's), so
weights load across and the reference tests compare like with like. The scan itself lives in
``flowhn.kernels``, which picks mamba-ssm, our Triton kernels or the PyTorch path by device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowhn import kernels
from flowhn.nn.flops import Flops, linear_flops
from flowhn.nn.norm import RMSNorm
from flowhn.recompute import recomputed_in_backward


def init_dt_bias(dim: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    """Inverse-softplus of dt drawn log-uniformly in [dt_min, dt_max] (mamba-ssm's init), so the
    initial step sizes span fast and slow memories."""
    dt = torch.exp(torch.rand(dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


class Mamba1Mixer(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        inner_norms: bool = False,
        norm_eps: float = 1e-6,
        backend: str = "auto",
        remake_scan_inputs: bool = False,
        keep_scan_states: bool = False,
    ):
        """``inner_norms``: RMSNorm on dt, B and C before the scan, as Jamba does for stability.
        ``remake_scan_inputs`` (model.ssm_remake_scan_inputs): under torch.compile the backward remakes Δ
        (dt_proj's low-rank matmul) and the Triton scan's padded copies of u and Δ instead of keeping them.
        ``keep_scan_states`` (model.ssm_keep_scan_states): the GPU scan's forward keeps the state after every
        sub-chunk for its backward (``triton_scan.KEEP_STATES``): faster, 2·d_inner·d_state/8 bytes a token more
        kept in bf16."""
        super().__init__()
        self.remake_scan_inputs = remake_scan_inputs
        self.keep_scan_states = keep_scan_states
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(self.d_inner))
        self.dt_proj.keep_init = True  # CausalLM's generic init must not zero this bias
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.inner_norms = inner_norms
        if inner_norms:
            self.dt_layernorm = RMSNorm(self.dt_rank, norm_eps)
            self.b_layernorm = RMSNorm(d_state, norm_eps)
            self.c_layernorm = RMSNorm(d_state, norm_eps)

    def forward(self, x: torch.Tensor, positions=None, ctx=None) -> torch.Tensor:
        # Channel-last: every tensor stays (B, L, ·) as the projections make it; the scan gets transposed
        # views ((B, E, L) by shape, (B, L, E) in memory). On a GPU the Gluon scan reads them in place
        # (kernels/triton_scan.py, CHANNEL_LAST_BY_DEFAULT); the Triton kernels copy them into aligned rows first.
        # in_proj as two GEMMs on its weight's halves: their input gradients come back from the conv and the
        # scan as two tensors, and one GEMM would need them side by side first (a copy of both a layer: 1.11 ms
        # a step at Mamba 135M, the fifteenth session's profile).
        hidden_weight, gate_weight = self.in_proj.weight.chunk(2, dim=0)
        hidden, gate = F.linear(x, hidden_weight), F.linear(x, gate_weight)
        # The conv and x_proj in one op, so the conv's backward adds x_proj's input gradient to the scan's as it
        # reads them (no pass of their own to sum them).
        hidden, dt_B_C = kernels.causal_conv1d_silu_proj(hidden, self.conv1d.weight[:, 0], self.conv1d.bias,
                                                         self.x_proj.weight, backend=self.backend)
        dt, B, C = dt_B_C.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_norms:
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        # The bias goes into the scan, fused.
        remake = self.remake_scan_inputs
        dt = recomputed_in_backward(F.linear, dt, self.dt_proj.weight, enabled=remake)
        # A = -exp(A_log) is formed inside the scan's GPU kernels (A_is_log), not by a kernel of its own.
        y = kernels.selective_scan(
            hidden.transpose(1, 2), dt.transpose(1, 2), self.A_log.float(), B.transpose(1, 2),
            C.transpose(1, 2), self.D.float(), z=gate.transpose(1, 2), delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, backend=self.backend, remake_inputs=remake, keep_states=self.keep_scan_states,
            A_is_log=True,
        )
        return self.out_proj(y.transpose(1, 2))

    def flops(self, seq_len: int | None = None) -> Flops:
        """Forward FLOPs per token; an SSM's cost does not depend on the sequence length."""
        conv = 2.0 * self.conv1d.kernel_size[0] * self.d_inner
        return Flops(matmul=linear_flops(self), scan=9.0 * self.d_inner * self.d_state + conv)


class Mamba2Mixer(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        head_dim: int = 64,
        n_groups: int = 1,
        chunk_size: int = 64,
        norm_eps: float = 1e-5,
        backend: str = "auto",
        recompute: bool = True,
    ):
        super().__init__()
        self.d_inner = expand * d_model
        if self.d_inner % head_dim:
            raise ValueError(f"model.ssm_head_dim: {head_dim} does not divide expand*d_model={self.d_inner}")
        self.n_heads = self.d_inner // head_dim
        self.head_dim, self.n_groups, self.d_state = head_dim, n_groups, d_state
        self.chunk_size, self.backend, self.recompute = chunk_size, backend, recompute
        conv_dim = self.d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.n_heads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        self.dt_bias = nn.Parameter(init_dt_bias(self.n_heads))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = RMSNorm(self.d_inner, norm_eps, groups=n_groups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor, positions=None, ctx=None) -> torch.Tensor:
        batch, length, _ = x.shape
        gate, xbc, dt = self.in_proj(x).split(
            [self.d_inner, self.d_inner + 2 * self.n_groups * self.d_state, self.n_heads], dim=-1
        )
        xbc = kernels.causal_conv1d_silu(xbc, self.conv1d.weight[:, 0], self.conv1d.bias, backend=self.backend)
        hidden, B, C = xbc.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        y = kernels.ssd(
            hidden.reshape(batch, length, self.n_heads, self.head_dim),
            F.softplus(dt.float() + self.dt_bias.float()),
            -torch.exp(self.A_log.float()),
            B.reshape(batch, length, self.n_groups, self.d_state),
            C.reshape(batch, length, self.n_groups, self.d_state),
            self.D.float(),
            chunk_size=self.chunk_size,
            backend=self.backend,
            recompute=self.recompute,
        ).reshape(batch, length, self.d_inner)
        return self.out_proj(self.norm(y.to(x.dtype), gate))

    def flops(self, seq_len: int | None = None) -> Flops:
        """Forward FLOPs per token; an SSM's cost does not depend on the sequence length."""
        conv = 2.0 * self.conv1d.kernel_size[0] * self.conv1d.in_channels
        return Flops(matmul=linear_flops(self), scan=6.0 * self.n_heads * self.head_dim * self.d_state + conv)
