"""Token split strategies: which positions each branch of a parallel block owns.

Every schedule here is a pure function of (block index, seq_len, ratio). A branch gets its
positions in their original order, so it stays causal; its outputs go back to those positions
before fusion.

How a branch treats the positions it does not own (the same for all strategies): it never sees
them. Attention attends only among its own tokens, with RoPE at their true positions. The SSM
runs over its own tokens as one compacted sequence: its state (and its depthwise conv window) is
carried straight across a gap, as if the skipped tokens were not there. Nothing from the other
branch's tokens leaks in except through the residual stream, which every block shares.

* ``no_split``: both branches see all tokens.
* ``ae_split``: halves. Even blocks give the SSM the first half and attention the second; odd
  blocks swap (the paper's figure: SSM {1,2,3}, attention {4,5,6}; then swapped).
* ``fa_split``: attention gets a fraction r of the tokens, the last ``round(r·T)``; the SSM the
  rest. r = F_ssm / (F_attn + F_ssm) from the two branches' per-token FLOPs at this width, state
  size and seq_len, so the heavier branch gets fewer tokens. ``split.ratio`` overrides it.
* ``fac_split``: as fa_split, but the attention window of w = round(r·T) tokens moves back by w
  each block, starting at the end of the sequence ({5,6} → {3,4} → {1,2} in the paper's figure)
  and wrapping after ceil(T/w) blocks; the first window of the cycle is clamped at position 0 so
  every block does the same work. Every position is covered by attention once the depth reaches
  ceil(T/w) blocks, which the config check requires.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from flowhn.errors import ConfigError

STRATEGIES = ("no_split", "ae_split", "fa_split", "fac_split")


def flop_aware_ratio(attn_flops_per_token: float, ssm_flops_per_token: float) -> float:
    """Fraction of tokens for attention that equalises the two branches' work (paper's rule)."""
    return ssm_flops_per_token / (attn_flops_per_token + ssm_flops_per_token)


def attention_tokens(seq_len: int, ratio: float) -> int:
    """Size of the attention share: round(r·T), kept inside [1, T-1] so both branches work."""
    return min(max(round(ratio * seq_len), 1), seq_len - 1)


def fac_window(layer: int, seq_len: int, ratio: float) -> tuple[int, int]:
    """[start, stop) of the attention window of block ``layer`` under fac_split."""
    width = attention_tokens(seq_len, ratio)
    cycle = math.ceil(seq_len / width)
    start = max(0, seq_len - (layer % cycle + 1) * width)
    return start, start + width


def attention_span(strategy: str, layer: int, seq_len: int, ratio: float | None) -> tuple[int, int] | None:
    """[start, stop) of the positions attention owns in block ``layer``; the SSM owns the rest.
    None means no split: both branches see every position."""
    if strategy == "no_split":
        return None
    if strategy == "ae_split":
        half = seq_len // 2
        return (half, seq_len) if layer % 2 == 0 else (0, half)
    if strategy == "fa_split":
        return seq_len - attention_tokens(seq_len, ratio), seq_len
    if strategy == "fac_split":
        return fac_window(layer, seq_len, ratio)
    raise ConfigError(f"split.name: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def cached_when_eager(cache: dict, key, make):
    """``cache[key]``, made by ``make()`` on first use; under torch.compile, ``make()`` is traced
    instead. Reading the dict there would make dynamo guard on its contents, which fill up over
    calls and differ from block to block once a graph break splits the model: a recompile each."""
    if torch.compiler.is_compiling():
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


class Owned(NamedTuple):
    """The positions of one split block: attention's and the SSM's (sorted index tensors), and
    attention's span [start, end) they come from."""

    attention: torch.Tensor
    ssm: torch.Tensor
    span: tuple[int, int]


class TokenSplit:
    """A strategy bound to its ratio; hands blocks cached index tensors for their positions."""

    def __init__(self, strategy: str, ratio: float | None = None):
        if strategy not in STRATEGIES:
            raise ConfigError(f"split.name: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if ratio is not None and not 0.0 < ratio < 1.0:
            raise ConfigError(f"split.ratio: must lie in (0, 1), got {ratio}")
        self.strategy, self.ratio = strategy, ratio
        self._cache: dict = {}

    def span(self, layer: int, seq_len: int) -> tuple[int, int] | None:
        return attention_span(self.strategy, layer, seq_len, self.ratio)

    def indices(self, layer: int, seq_len: int, device) -> Owned | None:
        """Block ``layer``'s positions (``owned``), or None for no split."""
        return self.owned(self.span(layer, seq_len), seq_len, device)

    def owned(self, span: tuple[int, int] | None, seq_len: int, device) -> Owned | None:
        """(attention positions, SSM positions, span) for attention's span, or None for no split.
        Built once per (span, device) so the forward pass never syncs with the host."""
        if span is None:
            return None
        # Built from aranges, not a boolean mask: a mask's nonzero has a data-dependent size, which
        # breaks a torch.compile graph at every split block.
        start, end = span
        arange = lambda a, b: torch.arange(a, b, device=device)
        build = lambda: Owned(arange(start, end), torch.cat([arange(0, start), arange(end, seq_len)]), (start, end))
        return cached_when_eager(self._cache, (span, seq_len, str(device)), build)

    def attention_share(self, layer: int, seq_len: int) -> float:
        span = self.span(layer, seq_len)
        return 1.0 if span is None else (span[1] - span[0]) / seq_len

    def check(self, n_layers: int, seq_len: int) -> None:
        """Fail before training when the sequence or the depth cannot carry the split."""
        if self.strategy == "no_split":
            return
        if seq_len < 2:
            raise ConfigError(f"data.seq_len: {self.strategy} needs at least 2 tokens per sequence, got {seq_len}")
        if self.strategy == "fac_split":
            width = attention_tokens(seq_len, self.ratio)
            needed = math.ceil(seq_len / width)
            if n_layers < needed:
                raise ConfigError(
                    f"model.n_layers: fac_split with a {width}-token attention window over seq_len {seq_len} "
                    f"needs at least {needed} blocks for attention to cover every position, got {n_layers}"
                )
