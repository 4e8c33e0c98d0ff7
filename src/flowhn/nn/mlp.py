"""SwiGLU MLP and a top-k mixture of SwiGLU experts (Jamba's MoE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowhn.nn.flops import Flops, linear_flops
from flowhn.nn.norm import autocast_dtype
from flowhn.recompute import recomputed_in_backward


def silu_product(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


class SwiGLU(nn.Module):
    """``recompute_product`` (scale.lean_activations): silu(gate)·up is recomputed in the backward from gate
    and up, which it keeps anyway: d_ff × 2 bytes a token less held per layer under bf16 autocast."""

    def __init__(self, d_model: int, d_ff: int, recompute_product: bool = False):
        super().__init__()
        self.recompute_product = recompute_product
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(recomputed_in_backward(silu_product, gate, up, enabled=self.recompute_product))

    def flops(self) -> Flops:
        return Flops(matmul=linear_flops(self))


# torch >= 2.10 names it F.grouped_mm; 2.8-2.9 only have the private op. None: the per-expert loop.
_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
DISPATCHES = ("auto", "grouped", "dense", "loop")


class MoE(nn.Module):
    """Softmax router over ``num_experts`` SwiGLU experts; each token goes to its ``top_k`` best.

    As in HF's Jamba, the top-k probabilities are used as they are (not renormalised to sum to 1);
    ``normalize_top_k=True`` gives Mixtral's variant.

    Dispatch (``model.moe_dispatch``); all give the reference's routing and outputs:

    * ``grouped``: no data-dependent shape, so ``torch.compile`` keeps the MoE in the model's graph.
      The N·k (token, expert) pairs are sorted by expert into one buffer of static size and each
      projection is one grouped GEMM over it (``F.grouped_mm``; per-expert row offsets from a
      cumulative count). Compiled, torch takes it only in bf16/fp16 (its shape check says so).
    * ``dense``: every expert on every token, weighted by the router's top-k weights (0 elsewhere).
      Static shapes in any dtype, at num_experts / top_k times the expert FLOPs (2× for Jamba's 4/2).
    * ``loop``: per expert, gather its tokens and run one GEMM (a data-dependent count: a graph
      break per MoE layer). The reference.
    * ``auto`` (default): ``grouped`` where the GEMMs run in bf16/fp16 (autocast on GPU), else ``loop``.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, top_k: int, normalize_top_k: bool = False,
                 dispatch: str = "auto"):
        super().__init__()
        if dispatch not in DISPATCHES:
            raise ValueError(f"model.moe_dispatch: must be one of {', '.join(DISPATCHES)}, got {dispatch!r}")
        self.num_experts, self.top_k, self.normalize_top_k = num_experts, top_k, normalize_top_k
        self.dispatch = dispatch
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
        dispatch = self.dispatch
        if dispatch == "auto":
            low_precision = self._gemm_dtype(flat) in (torch.bfloat16, torch.float16)
            # fp32 (CPU): the loop, which does only the top-k experts' FLOPs (dense does all of them);
            # torch's grouped GEMM compiles only in bf16.
            dispatch = "grouped" if low_precision and _GROUPED_MM is not None else "loop"
        if dispatch == "grouped" and _GROUPED_MM is not None:
            out = self.experts_grouped(flat, weights, index)
        elif dispatch == "loop":
            out = self.experts_loop(flat, weights, index)
        else:
            out = self.experts_dense(flat, weights, index)
        return out.view_as(x)

    @staticmethod
    def _gemm_dtype(x: torch.Tensor) -> torch.dtype:
        return autocast_dtype(x) or x.dtype

    def experts_loop(self, flat: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The reference dispatch: each expert gathers its tokens (a data-dependent count, so a graph
        break under torch.compile) and runs one dense SwiGLU over them."""
        out = torch.zeros_like(flat)
        for expert_id, expert in enumerate(self.experts):
            token, slot = torch.where(index == expert_id)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None])
        return out

    def experts_dense(self, flat: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, each weighted by its (N, E) router weight, 0 where not chosen;
        summed in expert order as the loop sums them."""
        combine = torch.zeros(index.shape[0], self.num_experts, dtype=weights.dtype, device=flat.device)
        combine = combine.scatter(1, index, weights)
        out = torch.zeros_like(flat)
        for expert_id, expert in enumerate(self.experts):
            out = out + expert(flat) * combine[:, expert_id, None]
        return out

    def experts_grouped(self, flat: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Static-shape dispatch: sort the N·k (token, slot) pairs by expert, two grouped GEMMs, unsort."""
        n_tokens, k = index.shape
        expert_of_pair = index.reshape(-1)  # pair p = token p // k, slot p % k
        # Stable: within an expert the pairs keep token order, as the loop's torch.where gives them.
        order = torch.argsort(expert_of_pair, stable=True)
        counts = (expert_of_pair[:, None] == torch.arange(self.num_experts, device=flat.device)).sum(0)
        group_ends = counts.cumsum(0).to(torch.int32)
        dtype = self._gemm_dtype(flat)
        tokens = flat[order // k].to(dtype)
        # (E, 2f, d) and (E, d, f), stacked per call: checkpoints and HF weight copies keep the
        # per-expert Linear layout; under autocast this is the same cast the Linears would make.
        gate_up = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in self.experts]).to(dtype)
        down = torch.stack([e.down_proj.weight for e in self.experts]).to(dtype)
        gate, up = _GROUPED_MM(tokens, gate_up.transpose(1, 2), offs=group_ends).chunk(2, dim=-1)
        # scale.lean_activations, as the dense experts (set_lean_activations sets it on each)
        product = recomputed_in_backward(silu_product, gate, up, enabled=self.experts[0].recompute_product)
        expert_out = _GROUPED_MM(product, down.transpose(1, 2), offs=group_ends)
        # Back to (token, slot) order: position order[j] of the pair list holds sorted row j.
        per_pair = torch.empty_like(expert_out).index_copy_(0, order, expert_out)
        # Sum over the k slots in the output's dtype (promoted with the weights', as the loop does).
        return (per_pair.view(n_tokens, k, -1) * weights[..., None]).sum(1).to(flat.dtype)

    def flops(self) -> Flops:
        return Flops(matmul=linear_flops(self.router) + self.top_k * linear_flops(self.experts[0]))
