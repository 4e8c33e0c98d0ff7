"""The one FLOP convention used for every architecture (README: "FLOP accounting").

Forward FLOPs per token are split into three terms, and training FLOPs are 3× forward (backward
costs two forward passes):

* ``matmul``: 2 × (weights of every ``nn.Linear`` the token goes through), the LM head included,
  the embedding lookup excluded. This is the "6N" of the scaling-law literature.
* ``attention``: scores and values, 4 × d_attn × keys per query, where *keys* is what the query
  could attend to when counted densely (the branch's own token count under a split, the window
  for sliding-window layers). Causal masking is not halved, as in PaLM's 6N + 12·L·H·Q·T and as
  ``torch.utils.flop_counter`` counts SDPA.
* ``scan``: the state-space recurrence's arithmetic (not matmuls): Mamba-1 9·D·N (mamba-ssm's own
  count), Mamba-2 6·H·P·N (decay, input outer product, output contraction), plus the depthwise
  causal conv 2·k·channels.

Norms, activations, RoPE and residual adds are left out: they are a few percent at most and no
other MFU convention counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Flops:
    matmul: float = 0.0
    attention: float = 0.0
    scan: float = 0.0

    @property
    def total(self) -> float:
        return self.matmul + self.attention + self.scan

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.matmul + other.matmul, self.attention + other.attention, self.scan + other.scan)

    def __mul__(self, k: float) -> "Flops":
        return Flops(self.matmul * k, self.attention * k, self.scan * k)

    __rmul__ = __mul__


def linear_flops(module: nn.Module) -> float:
    """Forward matmul FLOPs per token of every Linear inside ``module``."""
    return 2.0 * sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
