"""Activations recomputed in the backward instead of kept from the forward."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def recomputed_in_backward(fn, *args: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """``fn(*args)``, whose output the backward recomputes from ``args`` rather than keeping it.

    For a cheap op whose inputs the backward keeps anyway and whose output an op after it would keep:
    SwiGLU's silu(gate)·up before down_proj, Mamba's Δ (dt_proj's low-rank matmul) and the Triton scan's
    padded copies of u and Δ. Under torch.compile the region is tagged for recomputation and the
    partitioner re-emits it in the backward graph (untagged, it keeps any value a matmul's or a custom op's
    backward reads). In eager it is just ``fn(*args)``: a checkpoint there keeps the region's inputs, but
    the ops after it still keep its output. ``enabled=False`` (the switch that asks for it is off): ``fn(*args)``.
    """
    if enabled and torch.compiler.is_compiling() and torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
    return fn(*args)
