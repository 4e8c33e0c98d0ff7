"""torch.compile sees each model as one graph: no graph break and no recompile across calls.

A graph break splits the compiled model into frames with Python and eager kernels between them;
on the H100 that host time was what held the split strategies back (experiments/bench/H100.md,
"GPU busy"). The dynamo-level check runs on CPU with the ``eager`` backend (no code generation), on
the PyTorch scan path; the Triton scan is a torch.library op, checked in test_kernels.py.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch._dynamo

import flowhn
from flowhn.nn.mlp import MoE
from tests.conftest import small_cfg

CASES = [("llama", None), ("mamba", None), ("mamba2", None), ("shm", None), ("hymba", None), ("jamba", None)] + [
    ("flowhn", split) for split in ("no_split", "ae_split", "fa_split", "fac_split")]


# Dynamo's tracing time grows with the depth. Where blocks repeat every two layers (llama, mamba, mamba2
# alike; SHM's "MA"; FlowHN's ae/fac spans alternate, fa's is the same in every block), two layers hold every
# distinct block and every span the tiny model's four do, and still hand the per-forward context (RoPE,
# split indices) from one block to a different next one. Jamba's three kinds of block take three layers (below);
# Hymba keeps its four: its sliding-window layers are neither the first, the middle nor the last.
TWO_LAYERS_SUFFICE = ("llama", "mamba", "mamba2", "shm", "flowhn")


def _model(arch, split):
    overrides = [f"split={split}"] if split else []
    if arch in TWO_LAYERS_SUFFICE:
        overrides.append("model.n_layers=2")
    if arch == "jamba":  # 3 layers, not 8: attention + MoE, Mamba + MLP, Mamba + MoE (each kind of block once)
        overrides += ["model.n_layers=3", "model.attn_period=3", "model.attn_offset=0", "model.expert_period=2",
                      "model.expert_offset=0"]
        # The GPU default (grouped, bf16) keeps one graph too (tests/test_moe.py); in fp32 on CPU torch's
        # grouped GEMM does not compile and auto takes the loop, so the static-shape dense dispatch stands in.
        overrides += ["model.moe_dispatch=dense"]
    cfg = small_cfg(arch, *overrides, seq_len=32)
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


def test_jamba_reference_moe_dispatch_breaks_only_at_expert_routing():
    """The loop dispatch (the MoE reference) gathers each expert's tokens, a data-dependent count, as
    HF's does: that, and only that, breaks the graph. The default dispatch is in CASES above."""
    model, vocab = _model("jamba", None)
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    assert moes
    for moe in moes:
        moe.dispatch = "loop"
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randint(0, vocab, (2, 32)))
    assert explanation.graph_break_count > 0
    assert all("nonzero" in str(reason.reason) or "Dynamic shape" in str(reason.reason)
               for reason in explanation.break_reasons), explanation.break_reasons


@pytest.mark.parametrize(("arch", "split"), [("hymba", None), ("flowhn", "fac_split")], ids=lambda v: v or "")
def test_a_graph_break_at_the_scan_causes_no_recompiles(arch, split, monkeypatch):
    """A graph break at the scan (the Triton scan was one before it became a torch.library op; a
    mamba-ssm build may still be one) leaves frames after it. The frames after it receive the per-forward context;
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


def test_training_module_compiles_whole_model_and_loss_in_place():
    """train.py's compile_scope=model: one graph for the model, the loss compiled too, and the same
    parameter names (checkpoints stay loadable without the compiled wrapper), loss and gradients."""
    import copy

    from omegaconf import OmegaConf

    from flowhn.training.module import CausalLMModule

    from tests.conftest import ROOT

    cfg = small_cfg("flowhn", "split=fac_split", "model.n_layers=2", f"paths.root_dir={ROOT}",
                    "paths.output_dir=unused", seq_len=32)  # two layers: TWO_LAYERS_SUFFICE says why
    torch.manual_seed(0)
    module = CausalLMModule(OmegaConf.to_container(cfg, resolve=True))
    eager = copy.deepcopy(module)
    torch._dynamo.reset()
    module.compile_for_training("model", backend="eager", fullgraph=True)
    assert list(module.state_dict()) == list(eager.state_dict())
    batch = torch.randint(0, cfg.scale.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    losses = []
    for m in (module, eager):
        loss = m.loss(m(batch[:, :-1]), batch[:, 1:])
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(module.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert module.model._compiled_call_impl is not None


def test_rope_tables_are_loaded_not_recomputed_in_the_compiled_code(monkeypatch):
    """The model's precomputed RoPE tables (``RotaryTables``) give the logits the in-forward tables
    give, stay out of checkpoints, and take cos/sin out of the generated code: traced in the graph,
    inductor recomputed them in every kernel that applied RoPE (~10 ms a step of llama 1B on an H200).
    A sequence longer than the tables computes its own."""
    from torch._inductor.utils import run_and_get_code

    cfg = small_cfg("llama", "model.n_layers=1", seq_len=32)
    torch.manual_seed(0)
    model = flowhn.build_model(cfg).eval()
    assert model.rotary is not None and model.rotary.length == 32
    monkeypatch.setenv("FLOWHN_ROPE_TABLES", "0")  # the earlier path, for timing both
    assert flowhn.build_model(cfg).rotary is None
    assert not any(k.startswith("rotary.") for k in model.state_dict())
    ids = torch.randint(0, cfg.scale.vocab_size, (2, 32))
    longer = torch.randint(0, cfg.scale.vocab_size, (2, 40))
    tables = model.rotary
    with torch.no_grad():
        with_tables, longer_with = model(ids), model(longer)
        model.rotary = None
        torch.testing.assert_close(with_tables, model(ids), rtol=0, atol=0)
        torch.testing.assert_close(longer_with, model(longer), rtol=0, atol=0)
        code = {}
        for label, model.rotary in (("tables", tables), ("in the graph", None)):
            torch._dynamo.reset()
            out, generated = run_and_get_code(torch.compile(model), ids)
            torch.testing.assert_close(out, with_tables, rtol=1e-5, atol=1e-5)
            code[label] = "\n".join(generated)
    computes_cos = re.compile(r"[.:\s(]cos\(")  # std::cos(, tmp.cos( (C++), libdevice.cos( (Triton)
    assert not computes_cos.search(code["tables"]) and computes_cos.search(code["in the graph"])
