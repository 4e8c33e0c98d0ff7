"""torch.compile sees each model as one graph: no graph break and no recompile across calls.

A graph break splits the compiled model into frames with Python and eager kernels between them;
on the H100 that host time was what held the split strategies back (experiments/bench/H100.md,
"GPU busy"). The dynamo-level check runs on CPU with the ``eager`` backend (no code generation), on
the PyTorch scan path; the Triton scan is its own opaque call on GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import flowhn
from tests.conftest import small_cfg

CASES = [("llama", None), ("mamba", None), ("mamba2", None), ("shm", None), ("hymba", None)] + [
    ("flowhn", split) for split in ("no_split", "ae_split", "fa_split", "fac_split")]


def _model(arch, split):
    cfg = small_cfg(arch, *([f"split={split}"] if split else []), seq_len=32)
    torch.manual_seed(0)
    return flowhn.build_model(cfg), cfg.scale.vocab_size


@pytest.mark.parametrize(("arch", "split"), CASES, ids=lambda v: v or "")
def test_compiles_to_one_graph_without_recompiles(arch, split):
    model, vocab = _model(arch, split)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a break raises
    with torch._dynamo.config.patch(error_on_recompile=False):
        ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(1))
        compiled(ids).sum().backward()
    with torch._dynamo.config.patch(error_on_recompile=True):  # the split/RoPE caches are filled now
        for seed in (2, 3):
            ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(compiled(ids), model(ids), rtol=1e-5, atol=1e-5)


def test_jamba_breaks_only_at_expert_routing():
    """Jamba's MoE dispatch gathers each expert's tokens (a data-dependent count), as HF's does."""
    model, vocab = _model("jamba", None)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randint(0, vocab, (2, 32)))
    assert explanation.graph_break_count > 0
    assert all("nonzero" in str(reason.reason) or "Dynamic shape" in str(reason.reason)
               for reason in explanation.break_reasons), explanation.break_reasons


@pytest.mark.parametrize(("arch", "split"), [("hymba", None), ("flowhn", "fac_split")], ids=lambda v: v or "")
def test_a_graph_break_at_the_scan_causes_no_recompiles(arch, split, monkeypatch):
    """On GPU the Triton scan is a graph break. The frames after it receive the per-forward context;
    they must not guard on its RoPE/mask cache, whose contents differ from block to block (that
    guard made Hymba hit dynamo's recompile limit on the H100)."""
    from flowhn import kernels

    scan = kernels.selective_scan

    def breaking_scan(*args, **kwargs):
        torch._dynamo.graph_break()
        return scan(*args, **kwargs)

    monkeypatch.setattr(kernels, "selective_scan", breaking_scan)
    model, vocab = _model(arch, split)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    compiled(torch.randint(0, vocab, (2, 32))).sum().backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (2, 3):
            ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(compiled(ids), model(ids), rtol=1e-5, atol=1e-5)
