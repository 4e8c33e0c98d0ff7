"""How a parallel block merges its attention and SSM branch outputs.

Each fusion answers two questions: ``both(a, s)`` for a token that both branches saw, and
``attn_only(a)`` / ``ssm_only(s)`` for a token that one branch owns under a token split. The rule
for the second is the same everywhere: the branch that did not see the token contributes a zero
vector. For ``concat_proj`` that makes a split token's output the matching half of the paper's
2H→H projection (a per-token H→H map, as the paper's code uses in split modes). ``mean`` is the
exception: it averages over the branches present, so a split token keeps its scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowhn.nn.flops import Flops
from flowhn.nn.norm import RMSNorm


class ConcatProj(nn.Module):
    """Paper's token fusion: concatenate the branches' features, then Linear 2H→H."""

    def __init__(self, d_model: int, norm_eps: float = 1e-5):
        super().__init__()
        self.d_model = d_model
        self.proj = nn.Linear(2 * d_model, d_model, bias=False)

    def both(self, a, s):
        return self.proj(torch.cat([a, s], dim=-1))

    def attn_only(self, a):
        return F.linear(a, self.proj.weight[:, : self.d_model])

    def ssm_only(self, s):
        return F.linear(s, self.proj.weight[:, self.d_model :])

    def flops(self, both: bool) -> Flops:
        return Flops(matmul=2.0 * self.d_model * self.d_model * (2 if both else 1))


class Mean(nn.Module):
    def __init__(self, d_model: int, norm_eps: float = 1e-5):
        super().__init__()

    def both(self, a, s):
        return 0.5 * (a + s)

    def attn_only(self, a):
        return a

    def ssm_only(self, s):
        return s

    def flops(self, both: bool) -> Flops:
        return Flops()


class NormMean(nn.Module):
    """Hymba's fusion: RMSNorm each branch (the norms' weights are the learned per-channel scales
    β1, β2), then average."""

    def __init__(self, d_model: int, norm_eps: float = 1e-5):
        super().__init__()
        self.attn_norm = RMSNorm(d_model, norm_eps)
        self.ssm_norm = RMSNorm(d_model, norm_eps)

    def both(self, a, s):
        return 0.5 * (self.attn_norm(a) + self.ssm_norm(s))

    def attn_only(self, a):
        return 0.5 * self.attn_norm(a)

    def ssm_only(self, s):
        return 0.5 * self.ssm_norm(s)

    def flops(self, both: bool) -> Flops:
        return Flops()


class Gated(nn.Module):
    """out = g·a + (1−g)·s with a per-channel gate g = σ(W [a; s] + b) learned from both branches."""

    def __init__(self, d_model: int, norm_eps: float = 1e-5):
        super().__init__()
        self.d_model = d_model
        self.gate = nn.Linear(2 * d_model, d_model, bias=True)

    def both(self, a, s):
        g = torch.sigmoid(self.gate(torch.cat([a, s], dim=-1)))
        return g * a + (1 - g) * s

    def attn_only(self, a):
        return torch.sigmoid(F.linear(a, self.gate.weight[:, : self.d_model], self.gate.bias)) * a

    def ssm_only(self, s):
        return (1 - torch.sigmoid(F.linear(s, self.gate.weight[:, self.d_model :], self.gate.bias))) * s

    def flops(self, both: bool) -> Flops:
        return Flops(matmul=2.0 * self.d_model * self.d_model * (2 if both else 1))


FUSIONS = {"concat_proj": ConcatProj, "mean": Mean, "norm_mean": NormMean, "gated": Gated}
