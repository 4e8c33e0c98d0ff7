"""The two residual blocks every architecture is made of, and the per-forward context they share.

Every add keeps the residual stream x in its own dtype (train.yaml's residual_dtype): a branch's output is
cast to it first, which for an fp32 stream is the promotion the add makes anyway.

* ``SequentialBlock``: x + mixer(norm(x)), then x + mlp(norm(x)). The mixer is attention or an
  SSM: this is a Llama layer, a Mamba layer, and each layer of Jamba and SHM.
* ``ParallelBlock``: attention and an SSM side by side on their own norms (or one shared norm, as
  Hymba), a token split deciding which positions each branch sees, a fusion merging them, then
  the MLP: FlowHN's block, and Hymba's with no split and norm_mean fusion.
"""

from __future__ import annotations

import torch
from torch import nn

from flowhn.nn.attention import RotaryTables, rope_tables
from flowhn.nn.flops import Flops
from flowhn.nn.norm import RMSNorm
from flowhn.nn.split import TokenSplit, cached_when_eager


class SequenceContext:
    """What the blocks of one forward pass share: positions, cached RoPE tables and masks, and
    the K/V that a producing attention layer hands to the next one (cross-layer KV sharing)."""

    def __init__(self, seq_len: int, device, n_prefix: int = 0, rotary: RotaryTables | None = None):
        self.seq_len, self.n_prefix, self.rotary = seq_len, n_prefix, rotary
        self.positions = torch.arange(seq_len, device=device)
        self.shared_kv: list = []
        self._cache: dict = {}

    def cached(self, key, make, per: torch.Tensor | None = None):
        """``make()`` once per forward for ``key`` (and per tensor object ``per``, e.g. a block's
        positions). Under torch.compile the tables are traced and the compiler dedupes them; the
        tensor's id is only read in eager, as dynamo would guard on it (a new one every call)."""
        if per is not None and not torch.compiler.is_compiling():
            key = (*key, id(per))
        return cached_when_eager(self._cache, key, make)

    def rope(self, positions: torch.Tensor, head_dim: int, theta: float):
        """cos/sin at ``positions``: from the model's precomputed tables where they cover the sequence."""
        full = self.rotary.get(head_dim, theta, self.seq_len) if self.rotary is not None else None
        if full is None:
            full = self.cached(("rope", head_dim, theta), lambda: rope_tables(self.positions, head_dim, theta))
        if positions is self.positions:
            return full
        return full[0][positions], full[1][positions]


_side_streams: dict[int, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream of a CUDA device, made on first use (blocks may be built on meta/CPU)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _side_streams:
        _side_streams[index] = torch.cuda.Stream(device=index)
    return _side_streams[index]


class SequentialBlock(nn.Module):
    def __init__(self, d_model: int, mixer: nn.Module, mlp: nn.Module | None, norm_eps: float):
        super().__init__()
        self.mixer_norm = RMSNorm(d_model, norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model, norm_eps) if mlp is not None else None
        self.mlp = mlp

    def forward(self, x: torch.Tensor, ctx: SequenceContext) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x), ctx.positions, ctx).to(x.dtype)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x)).to(x.dtype)
        return x

    def flops(self, seq_len: int) -> Flops:
        return self.mixer.flops(seq_len) + (self.mlp.flops() if self.mlp is not None else Flops())


class ParallelBlock(nn.Module):
    def __init__(
        self,
        d_model: int,
        attention: nn.Module,
        ssm: nn.Module,
        fusion: nn.Module,
        mlp: nn.Module | None,
        split: TokenSplit,
        layer: int,
        norm_eps: float,
        shared_norm: bool = False,
        branch_streams: bool = False,
    ):
        super().__init__()
        self.layer, self.split = layer, split
        self.attn_norm = RMSNorm(d_model, norm_eps)
        self.ssm_norm = None if shared_norm else RMSNorm(d_model, norm_eps)
        self.attention, self.ssm, self.fusion = attention, ssm, fusion
        self.mlp_norm = RMSNorm(d_model, norm_eps) if mlp is not None else None
        self.mlp = mlp
        # Run the SSM branch on a side CUDA stream, concurrent with attention (eager CUDA only).
        self.branch_streams = branch_streams

    def forward(self, x: torch.Tensor, ctx: SequenceContext) -> torch.Tensor:
        return self.split_forward(x, ctx, self.split.span(self.layer, x.shape[1]))

    def compile_region(self, **options) -> None:
        """compile_scope=blocks: compile ``split_forward``, not ``forward``. The span is worked out
        outside the graph and handed in, so dynamo guards on the span rather than on ``self.layer``:
        one graph per distinct span (two for ae_split, ceil(1/r) for fac_split), not one per block,
        which ran every block past dynamo's recompile limit (8) eagerly. dynamic=False keeps the
        span's ints static (automatic dynamic would otherwise make them symbolic on the second span)."""
        self.split_forward = torch.compile(self.split_forward, **{"dynamic": False, **options})

    def split_forward(self, x: torch.Tensor, ctx: SequenceContext, span: tuple[int, int] | None) -> torch.Tensor:
        owned = self.split.owned(span, x.shape[1], x.device)
        if self.branch_streams and x.is_cuda and not torch.compiler.is_compiling():
            a, s = self._branches_on_two_streams(x, ctx, owned)
        else:
            h_attn = self._attention_input(x, owned)
            a = self._attention_branch(h_attn, ctx, owned)
            s = self._ssm_branch(x, h_attn, owned)
        x = x + self._fuse(x, a, s, owned).to(x.dtype)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x)).to(x.dtype)
        return x

    # A split never gathers or scatters through index tensors: attention owns one contiguous span
    # [start, end) of positions (split.span), so its tokens are a slice, the SSM's are the slices
    # before and after it (joined by a cat for FAC, whose window can sit in the middle), and the fused
    # result is the cat of the pieces in position order. Under torch.compile the slices are views and
    # inductor folds each cat into the kernel next to it (the branch norm that reads x, the residual add
    # that reads the fusion outputs), so no pass of its own moves the tokens. The index tensors from
    # split.owned are only the positions attention's RoPE and masks need.

    def _ssm_rows(self, h: torch.Tensor, owned) -> torch.Tensor:
        """The SSM's positions of h (B, T, ·), in order, as one compacted sequence."""
        start, end = owned.span
        pieces = [piece for piece in (h[:, :start], h[:, end:]) if piece.shape[1]]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

    def _attention_input(self, x: torch.Tensor, owned) -> torch.Tensor:
        """attn_norm of x: at attention's positions only when the split gives it a span and the SSM has
        a norm of its own (the norm then reads the slice: its gather), else at every position."""
        if owned is None or self.ssm_norm is None:
            return self.attn_norm(x)
        start, end = owned.span
        return self.attn_norm(x[:, start:end])

    def _attention_branch(self, h_attn: torch.Tensor, ctx: SequenceContext, owned) -> torch.Tensor:
        """h_attn: the normed input at attention's positions, or at every position (then sliced)."""
        if owned is None:
            return self.attention(h_attn, ctx.positions, ctx)
        attn_pos = owned[0]
        if h_attn.shape[1] != attn_pos.shape[0]:
            start, end = owned.span
            h_attn = h_attn[:, start:end]
        return self.attention(h_attn, attn_pos, ctx)

    def _ssm_branch(self, x: torch.Tensor, h_attn: torch.Tensor, owned) -> torch.Tensor:
        if owned is None:
            return self.ssm(h_attn if self.ssm_norm is None else self.ssm_norm(x))
        if self.ssm_norm is None:  # shared norm (Hymba): h_attn covers every position
            return self.ssm(self._ssm_rows(h_attn, owned))
        return self.ssm(self.ssm_norm(self._ssm_rows(x, owned)))

    def _fuse(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, owned) -> torch.Tensor:
        if owned is None:
            return self.fusion.both(a, s)
        start, _ = owned.span
        fused_ssm = self.fusion.ssm_only(s).to(x.dtype)
        # SSM rows before the span, attention's rows, SSM rows after it: position order.
        pieces = (fused_ssm[:, :start], self.fusion.attn_only(a).to(x.dtype), fused_ssm[:, start:])
        return torch.cat([piece for piece in pieces if piece.shape[1]], dim=1)

    def _branches_on_two_streams(self, x: torch.Tensor, ctx: SequenceContext, owned):
        """Attention on the current stream, the SSM (its norm and gather included) on a side stream.
        Autograd runs each backward op on its forward op's stream and syncs between them, so the
        backward pass overlaps the same way."""
        main, side = torch.cuda.current_stream(x.device), side_stream(x.device)
        side.wait_stream(main)  # x and the split's index tensors are ready
        h_attn = self._attention_input(x, owned)
        if self.ssm_norm is None:
            side.wait_stream(main)  # shared norm (Hymba): the SSM reads attention's normed input
            h_attn.record_stream(side)
        x.record_stream(side)  # made on main, read on side (forward and backward): no early reuse
        with torch.cuda.stream(side):
            s = self._ssm_branch(x, h_attn, owned)
        a = self._attention_branch(h_attn, ctx, owned)
        main.wait_stream(side)
        s.record_stream(main)  # made on side, read by the fusion on main
        return a, s

    def flops(self, seq_len: int) -> Flops:
        share = self.split.attention_share(self.layer, seq_len)
        if self.split.span(self.layer, seq_len) is None:
            branches = self.attention.flops(seq_len) + self.ssm.flops(seq_len) + self.fusion.flops(both=True)
        else:
            attn_tokens = round(share * seq_len)
            branches = (
                share * (self.attention.flops(attn_tokens) + self.fusion.flops(both=False))
                + (1 - share) * (self.ssm.flops(seq_len) + self.fusion.flops(both=False))
            )
        return branches + (self.mlp.flops() if self.mlp is not None else Flops())
