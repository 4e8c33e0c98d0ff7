"""Token splits move tokens by slicing, not by index passes, and mean what the index path meant.

ParallelBlock gathers a branch's positions with slices (and one cat for FAC's two SSM pieces) and
writes the fused result as a cat in position order. Checked here: (1) against the index_select /
index_copy formulation the block used before, block by block for every split and fusion; (2) the
compiled forward and backward graphs (AOTAutograd, CPU) contain no index_select / index_copy /
index_add and no gather of a hidden-state tensor.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

import flowhn
from flowhn.nn import blocks
from tests.conftest import small_cfg


def _index_path(block, x, ctx):
    """The block as it was written with index tensors (the semantic reference for the slicing path)."""
    owned = block.split.indices(block.layer, x.shape[1], x.device)
    h_attn = block.attn_norm(x)
    if owned is None:
        return block(x, ctx)
    attn_pos, ssm_pos = owned.attention, owned.ssm
    a = block.attention(h_attn.index_select(1, attn_pos), attn_pos, ctx)
    h_ssm = h_attn if block.ssm_norm is None else block.ssm_norm(x)
    s = block.ssm(h_ssm.index_select(1, ssm_pos))
    mixed = torch.empty_like(x)
    mixed.index_copy_(1, attn_pos, block.fusion.attn_only(a).to(x.dtype))
    mixed.index_copy_(1, ssm_pos, block.fusion.ssm_only(s).to(x.dtype))
    x = x + mixed
    if block.mlp is not None:
        x = x + block.mlp(block.mlp_norm(x))
    return x


@pytest.mark.parametrize("split,fusion", [("fac_split", "concat_proj"), ("fac_split", "gated"),
                                          ("ae_split", "norm_mean"), ("fa_split", "mean")])
def test_slicing_path_equals_index_path(split, fusion):
    # seq 30 with ratio 0.3: a 9-token window at the end, in the middle, at the start (clamped) as the
    # FAC cycle moves back; every block is checked, with gradients.
    cfg = small_cfg("flowhn", f"split={split}", f"fusion={fusion}", "split.ratio=0.3", "model.n_layers=4",
                    seq_len=30)
    torch.manual_seed(0)
    model = flowhn.build_model(cfg)
    spans = set()
    for block in model.layers:
        spans.add(block.split.span(block.layer, 30))
        x = torch.randn(2, 30, cfg.model.d_model, requires_grad=True)
        ctx = blocks.SequenceContext(30, x.device)
        got = block(x, ctx)
        want = _index_path(block, x, blocks.SequenceContext(30, x.device))
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        params = [p for p in block.parameters() if p.requires_grad]
        grads = torch.autograd.grad(got.square().sum(), [x, *params], allow_unused=True)
        ref_grads = torch.autograd.grad(want.square().sum(), [x, *params], allow_unused=True)
        for g, r in zip(grads, ref_grads):
            assert (g is None) == (r is None)
            if g is not None:
                torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    if split == "fac_split":
        assert any(0 < start and end < 30 for start, end in spans)  # a window with SSM tokens on both sides


# Index passes; slice_scatter / select_scatter (the backward of a slice view, which inductor fuses) are fine.
FORBIDDEN = ("index_select", "index_copy", "index_add", "index_put", "scatter", "scatter_add", "gather")


def _aten_calls(graphs):
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op == "call_function":
                yield node


def test_compiled_split_has_no_index_passes():
    # FAC's 12-token window at the end of the sequence for block 0, in the middle for block 1 (the two-piece SSM
    # gather), at the start for block 2: each place a window can take, in three blocks (four at ratio 0.3 took
    # 40 % longer to trace).
    cfg = small_cfg("flowhn", "split=fac_split", "split.ratio=0.4", "model.n_layers=3", seq_len=30)
    torch.manual_seed(0)
    model = flowhn.build_model(cfg)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=capture, bw_compiler=capture), fullgraph=True)
    ids = torch.randint(0, cfg.scale.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1))
    compiled(ids).float().square().mean().backward()
    assert len(graphs) == 2  # forward and backward
    names = [str(node.target) for node in _aten_calls(graphs)]
    assert any("cat" in name for name in names)  # the fused result (and FAC's SSM pieces) are cats
    bad = [name for name in names if name.split(".")[:2] in (["aten", op] for op in FORBIDDEN)]
    assert not bad, bad
    # The only tensor indexing left reads RoPE tables (T, head_dim / 2) at attention's positions;
    # nothing indexes a (batch, tokens, features) activation.
    for node in _aten_calls(graphs):
        if "aten.index" in str(node.target):
            source = node.args[0].meta["val"]
            assert source.dim() <= 2, (node.target, tuple(source.shape))


@pytest.mark.parametrize("split,spans", [("fac_split", 4), ("ae_split", 2), ("fa_split", 1)])
def test_blocks_scope_compiles_once_per_distinct_span_not_per_block(split, spans):
    # compile_scope=blocks with FAC's window moving every block: the graph is specialised on the span
    # the block is handed, so 10 blocks cycling through 4 windows (ratio 0.25 of 32 tokens) are 4
    # graphs. Keyed on the block's index instead, they were 8 graphs and then dynamo's recompile limit,
    # past which the remaining blocks ran eagerly.
    cfg = small_cfg("flowhn", f"split={split}", "split.ratio=0.25", "model.n_layers=10", seq_len=32)
    torch.manual_seed(0)
    model = flowhn.build_model(cfg)
    ids = torch.randint(0, cfg.scale.vocab_size, (2, 32))
    want = model(ids)
    assert len({block.split.span(block.layer, 32) for block in model.layers}) == spans
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    model.compile_in_place("blocks", backend=counter)
    got = model(ids)
    model(ids)  # a second step reuses the graphs
    assert counter.frame_count == spans
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
