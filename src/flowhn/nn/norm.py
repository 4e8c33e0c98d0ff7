import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in fp32 (as Llama and Mamba do) so
    bf16 activations don't lose the variance.

    ``groups`` normalises each of that many equal slices of the features on its own, and ``gate``
    multiplies by silu(gate) first: together they are Mamba-2's gated norm (norm_before_gate=False).
    """

    def __init__(self, dim: int, eps: float = 1e-5, groups: int = 1):
        super().__init__()
        self.eps, self.groups = eps, groups
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        if gate is not None:
            x = x * F.silu(gate.float())
        grouped = x.unflatten(-1, (self.groups, -1))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * grouped.flatten(-2).to(dtype)
