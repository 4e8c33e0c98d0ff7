"""SwiGLU MLP and a top-k mixture of SwiGLU experts (Jamba's MoE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowhn.nn.flops import Flops, linear_flops


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def flops(self) -> Flops:
        return Flops(matmul=linear_flops(self))


class MoE(nn.Module):
    """Softmax router over ``num_experts`` SwiGLU experts; each token goes to its ``top_k`` best.

    As in HF's Jamba, the top-k probabilities are used as they are (not renormalised to sum to 1);
    ``normalize_top_k=True`` gives Mixtral's variant.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, top_k: int, normalize_top_k: bool = False):
        super().__init__()
        self.num_experts, self.top_k, self.normalize_top_k = num_experts, top_k, normalize_top_k
        self.router = nn.Linear(d_model, num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, d_ff) for _ in range(num_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, d) -> (weights (N, k), expert indices (N, k))."""
        probs = F.softmax(self.router(x), dim=-1, dtype=torch.float32)
        weights, index = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize_top_k:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights.to(x.dtype), index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, index = self.route(flat)
        out = torch.zeros_like(flat)
        # Tokens are grouped by expert so each expert runs one dense matmul over its tokens.
        for expert_id, expert in enumerate(self.experts):
            token, slot = torch.where(index == expert_id)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None])
        return out.view_as(x)

    def flops(self) -> Flops:
        return Flops(matmul=linear_flops(self.router) + self.top_k * linear_flops(self.experts[0]))
