"""Jamba's MoE dispatch: the static-shape paths (grouped GEMM, dense masked) against the per-expert loop
(the reference) and HF Jamba's MoE block, values and every gradient; one graph under torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import flowhn
from flowhn.errors import ConfigError
from flowhn.nn.mlp import MoE
from tests.conftest import hf_jamba_moe_like, small_cfg

STATIC = ("grouped", "dense")


def make_moe(d=16, f=24, e=4, k=2, seed=3, **kwargs) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(d, f, e, k, **kwargs)
    with torch.no_grad():
        for p in moe.parameters():  # large enough that the routing is far from ties
            p.normal_(0, 0.3)
    return moe


def run(moe: MoE, dispatch: str, x: torch.Tensor, grad_out: torch.Tensor):
    """Output and the gradients of x and of every parameter, for one dispatch."""
    moe.dispatch = dispatch
    moe.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = moe(x)
    (out.float() * grad_out).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in moe.named_parameters()}


def assert_same(result, reference, rtol=1e-5, atol=1e-6):
    out, gx, grads = result
    ref_out, ref_gx, ref_grads = reference
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx, ref_gx, rtol=rtol, atol=atol)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        if ref_grads[name] is None:  # an expert no token chose
            assert grads[name] is None or not grads[name].any(), name
        else:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("dispatch", STATIC)
@pytest.mark.parametrize(("e", "k", "normalize"), [(4, 2, False), (4, 1, False), (5, 3, True)])
def test_static_dispatch_equals_the_loop_in_value_and_gradients(dispatch, e, k, normalize):
    moe = make_moe(e=e, k=k, normalize_top_k=normalize)
    x = torch.randn(3, 11, 16)  # 33 tokens: no multiple of anything
    grad_out = torch.randn(3, 11, 16)
    reference = run(moe, "loop", x, grad_out)
    assert_same(run(moe, dispatch, x, grad_out), reference)


@pytest.mark.parametrize("dispatch", STATIC)
def test_an_expert_no_token_chose(dispatch, monkeypatch):
    """Empty groups: with routing that never picks expert 2, its rows in the grouped buffer are empty
    and its weights get no gradient, as in the loop."""
    moe = make_moe()
    x, grad_out = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    original = moe.route

    def route_without_expert_2(flat):
        weights, index = original(flat)
        return weights, torch.where(index == 2, torch.where(index.roll(1, -1) == 3, 0, 3), index)

    monkeypatch.setattr(moe, "route", route_without_expert_2)
    reference = run(moe, "loop", x, grad_out)
    assert reference[2]["experts.2.up_proj.weight"] is None
    assert_same(run(moe, dispatch, x, grad_out), reference)


def test_bf16_autocast_dispatches_agree_and_auto_picks_grouped(monkeypatch):
    moe = make_moe()
    x, grad_out = torch.randn(2, 13, 16), torch.randn(2, 13, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = run(moe, "loop", x, grad_out)
        for dispatch in STATIC:
            assert_same(run(moe, dispatch, x, grad_out), reference, rtol=2e-2, atol=2e-2)
        calls = []
        monkeypatch.setattr(moe, "experts_grouped", lambda *a: calls.append(1) or MoE.experts_grouped(moe, *a))
        moe.dispatch = "auto"
        moe(x)
    assert calls, "auto must take the grouped GEMM when the GEMMs run in bf16"


@pytest.mark.parametrize(("dispatch", "autocast"), [("dense", False), ("grouped", True)])  # auto in fp32 is the loop
def test_static_dispatch_is_one_graph(dispatch, autocast):
    """fullgraph=True raises at a graph break; the loop dispatch has one (test_compile.py)."""
    moe = make_moe()
    x, grad_out = torch.randn(2, 13, 16), torch.randn(2, 13, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        eager = run(moe, dispatch, x, grad_out)
        torch._dynamo.reset()
        compiled = torch.compile(moe, backend="aot_eager", fullgraph=True)
        moe.dispatch = dispatch
        moe.zero_grad(set_to_none=True)
        xc = x.clone().requires_grad_()
        out = compiled(xc)
        (out.float() * grad_out).sum().backward()
    assert_same((out.detach(), xc.grad, {n: p.grad for n, p in moe.named_parameters()}), eager)


@pytest.mark.parametrize("dispatch", ("loop",) + STATIC)
def test_every_dispatch_equals_hf_jamba_moe(dispatch):
    pytest.importorskip("transformers")
    d, f, e, k = 16, 24, 4, 2
    ours = make_moe(d, f, e, k, dispatch=dispatch).eval()
    hf = hf_jamba_moe_like(ours)
    with torch.no_grad():
        x = torch.randn(3, 10, d)
        hf_y = hf(x)
        hf_y = hf_y[0] if isinstance(hf_y, tuple) else hf_y
        torch.testing.assert_close(ours(x), hf_y, rtol=1e-5, atol=1e-6)


def test_jamba_model_logits_and_gradients_do_not_depend_on_the_dispatch():
    # two layers: attention + dense MLP, then Mamba + MoE
    cfg = small_cfg("jamba", "model.n_layers=2", "model.attn_period=2", "model.attn_offset=0", seq_len=12)
    torch.manual_seed(0)
    model = flowhn.build_model(cfg)
    ids = torch.randint(0, cfg.scale.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    assert any(isinstance(m, MoE) for m in model.modules())
    results = {}
    for dispatch in ("loop",) + STATIC:
        for moe in (m for m in model.modules() if isinstance(m, MoE)):
            moe.dispatch = dispatch
        model.zero_grad(set_to_none=True)
        logits = model(ids)
        logits.square().mean().backward()
        results[dispatch] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    for dispatch in STATIC:
        torch.testing.assert_close(results[dispatch][0], results["loop"][0], rtol=1e-5, atol=1e-5)
        for name, grad in results[dispatch][1].items():
            torch.testing.assert_close(grad, results["loop"][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_unknown_dispatch_is_a_config_error():
    cfg = small_cfg("jamba", "model.moe_dispatch=sorted")
    with pytest.raises(ConfigError, match=r"^model\.moe_dispatch: must be one of auto, grouped, dense, loop"):
        flowhn.build_model(cfg)


@pytest.mark.gpu
@pytest.mark.parametrize(("tokens", "d", "f"), [(1000, 96, 176), (4099, 576, 1024)])
def test_grouped_gemm_on_gpu_against_float64(tokens, d, f, monkeypatch):
    """The CUDA grouped GEMM (bf16, under autocast) against the loop in float64 on the same weights:
    output and every gradient, at token counts that fill no tile evenly. The float64 reference takes
    the bf16 run's expert choice (bf16 router logits may order near-ties differently) with its own
    float64 weights for them, so the router's gradient is compared too."""
    moe = make_moe(d, f, 4, 2).cuda()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, d ** -0.5)
    moe64 = make_moe(d, f, 4, 2).cuda().double()
    moe64.load_state_dict(moe.state_dict())
    x = torch.randn(tokens, d, device="cuda")
    grad_out = torch.randn(tokens, d, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, chosen = moe.route(x)
        result = run(moe, "grouped", x, grad_out)

    def route_as_bf16(flat):
        probs = torch.softmax(moe64.router(flat), dim=-1)
        return probs.gather(1, chosen), chosen

    monkeypatch.setattr(moe64, "route", route_as_bf16)
    reference = run(moe64, "loop", x.double(), grad_out.double())
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(result[0], reference[0]) < 1e-2
    assert rel(result[1], reference[1]) < 1e-2
    for name, grad in result[2].items():  # sums over every token of bf16 products
        assert rel(grad, reference[2][name]) < 2e-2, name
