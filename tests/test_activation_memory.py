"""What the models keep for the backward under scale.lean_activations: the RMSNorm that keeps x̂ in the
autocast dtype instead of the fp32 residual, and SwiGLU's product recomputed in the backward. Values and
gradients against references, and what a compiled model saves (the partitioner decides that, so it is
checked compiled)."""

import functools

import pytest
import torch
import torch.nn.functional as F

import flowhn
from conftest import compose_train, small_cfg
from flowhn.kernels.testing import saved_tensor_bytes, saved_tensors
from flowhn.nn.mlp import SwiGLU
from flowhn.nn.norm import RMSNorm


def plain_rmsnorm(x, weight, eps, groups):
    """The textbook definition, differentiated by autograd (no rounding)."""
    grouped = x.unflatten(-1, (groups, -1))
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return weight * grouped.flatten(-2)


@pytest.mark.parametrize("groups", [1, 3])
def test_rmsnorm_gradients_match_float64_autograd(groups):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 12, requires_grad=True)
    norm = RMSNorm(12, eps=1e-5, groups=groups, keep_normalized=True)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12))
    dy = torch.randn(2, 7, 12)
    out = norm(x)
    dx, dw = torch.autograd.grad(out, [x, norm.weight], dy)
    x64, w64 = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    ref = plain_rmsnorm(x64, w64, 1e-5, groups)
    rdx, rdw = torch.autograd.grad(ref, [x64, w64], dy.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx.double(), rdx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dw.double(), rdw, rtol=1e-5, atol=1e-6)


def test_rmsnorm_under_bf16_autocast_keeps_xhat_in_bf16_and_rounds_it_in_every_mode():
    """fp32 input under bf16 autocast: the output is weight · x̂ with x̂ rounded to bf16, with gradients and
    without (bit for bit), within bf16 rounding of the plain path's; the gradients are within bf16 rounding
    of the exact ones; what the backward keeps is x̂ in bf16 (and the per-row inverse RMS, and the weight),
    not x. (The rounded x̂ is what lets a compiled backward remake the next matmul's input from it.)"""
    torch.manual_seed(0)
    x = torch.randn(4, 9, 64, requires_grad=True)
    norm = RMSNorm(64, keep_normalized=True)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64) + 0.5)
    plain = RMSNorm(64)
    plain.load_state_dict(norm.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, saved = saved_tensors(lambda: norm(x))
        out_plain = plain(x)
        with torch.no_grad():
            out_no_grad = norm(x)
    assert out.dtype == torch.float32
    xhat = x.detach() * torch.rsqrt(x.detach().pow(2).mean(-1, keepdim=True) + norm.eps)
    torch.testing.assert_close(out, norm.weight.detach() * xhat.bfloat16().float(), rtol=0, atol=0)
    torch.testing.assert_close(out, out_no_grad, rtol=0, atol=0)
    assert not torch.equal(out, out_plain)  # the plain path multiplies the unrounded x̂
    torch.testing.assert_close(out, out_plain, rtol=2.0 ** -8, atol=0)
    assert sorted(saved, key=str) == sorted([((4, 9, 64), torch.bfloat16), ((4, 9, 1, 1), torch.float32),
                                             ((64,), torch.float32)], key=str)
    dy = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, [x, norm.weight], dy)
    x64, w64 = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    rdx, rdw = torch.autograd.grad(plain_rmsnorm(x64, w64, norm.eps, 1), [x64, w64], dy.double())
    assert (dx.double() - rdx).norm() / rdx.norm() < 4e-3
    assert (dw.double() - rdw).norm() / rdw.norm() < 4e-3


# 48 tokens: no activation shares a shape with a tiny model's weights (d_model 64).
SEQ = 24


@functools.lru_cache(maxsize=None)
def run_once(arch, *overrides, compile_model=True):
    """One training forward and backward of a 2-layer model under bf16 autocast (compiled by inductor on
    the CPU, or eager): (its model config, the (shape, dtype) of every tensor kept for the backward, the
    parameters' gradients). The partitioner decides what a compiled model keeps, so that is checked compiled."""
    cfg = small_cfg(arch, "model.n_layers=2", *overrides, seq_len=SEQ)
    torch.manual_seed(0)
    model = flowhn.build_model(cfg)
    if compile_model:
        model.compile_in_place("model")
    ids = torch.randint(0, cfg.scale.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, saved = saved_tensors(lambda: model(ids))
    F.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
    return cfg.model, saved, {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_compiled_llama_keeps_neither_the_fp32_residual_nor_the_swiglu_product():
    """Before: each norm kept its fp32 input (the residual stream) and each MLP its silu(gate)·up, besides
    gate and up; now the norms keep x̂ in bf16 and the product is recomputed. Per layer: two bf16
    (tokens, d_ff) tensors (gate and up) and no fp32 (…, d_model) activation. The gradients are the eager
    model's (which keeps everything) within bf16 autocast's noise."""
    m, saved, grads = run_once("llama")
    tokens = 2 * SEQ
    fp32_acts = [s for s, dt in saved if dt == torch.float32 and torch.Size(s).numel() >= tokens * m.d_model]
    ff_acts = [s for s, dt in saved if s[-1] == m.d_ff and torch.Size(s).numel() == tokens * m.d_ff]
    assert fp32_acts == [], fp32_acts
    assert len(ff_acts) == 2 * m.n_layers, ff_acts
    _, _, eager = run_once("llama", compile_model=False)
    for name, g in grads.items():
        assert (g - eager[name]).norm() <= 2e-2 * eager[name].norm() + 1e-6, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_llama_on_the_gpu_keeps_two_bytes_less_a_norm_feature_and_no_swiglu_product():
    """What inductor's partitioner keeps differs between CPU and CUDA (on the CPU it keeps each norm's x̂
    and the next matmul's input in both forms of the lean norm), so the saving is read on the GPU: a
    compiled llama under bf16 autocast, lean against not, keeps at least 2 bytes less per feature of each
    norm in the layers (x̂ in bf16, not the fp32 residual) plus SwiGLU's product (2 bytes per d_ff feature
    a layer). Of the 2·layers + 1 norms, one saves nothing: the model without lean activations keeps one
    fp32 residual fewer than it has norms (4 for 5 on the CPU; on the H200 the saving was 4 norms' exactly).
    A lean norm whose output was weight · x̂ in fp32 kept x̂ and the matmul's bf16 input (H200.md, twelfth
    session): its norms saved nothing, and this test fails on it."""
    saved_bytes = {}
    for lean in (False, True):
        cfg = compose_train("model=llama", "scale=tiny", "model.n_layers=2", f"data.seq_len={SEQ}",
                            f"scale.lean_activations={lean}")
        torch.manual_seed(0)
        model = flowhn.build_model(cfg).cuda()
        model.compile_in_place("model")
        ids = torch.randint(0, cfg.scale.vocab_size, (2, SEQ), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            saved_bytes[lean] = saved_tensor_bytes(lambda: model(ids))
    m, tokens = cfg.model, 2 * SEQ
    saving_norms = 2 * m.n_layers
    expected = tokens * (saving_norms * m.d_model * 2 + m.n_layers * m.d_ff * 2)
    assert saved_bytes[False] - saved_bytes[True] >= expected, (saved_bytes, expected)


@pytest.mark.parametrize("scale,lean", [("tiny", True), ("135m", True), ("1b", False)])
def test_lean_activations_follow_the_scale_and_can_be_set(scale, lean):
    """On by default where it measured free (135M), off at 1B (~1 % slower there); an override wins."""
    for overrides, want in (((), lean), ((f"scale.lean_activations={not lean}",), not lean)):
        cfg = compose_train("model=hymba", f"scale={scale}", "data.seq_len=64", "model.window=32", *overrides)
        with torch.device("meta"):
            model = flowhn.build_model(cfg)
        norms = [m.keep_normalized for m in model.modules() if isinstance(m, RMSNorm)]
        mlps = [m.recompute_product for m in model.modules() if isinstance(m, SwiGLU)]
        assert norms and mlps and set(norms) == set(mlps) == {want}, (scale, overrides)


@pytest.mark.parametrize("scale,lean", [("135m", True), ("1b", False)])
def test_mamba_remakes_its_scan_inputs_where_the_scale_is_lean(scale, lean):
    """Mamba-1 remakes its scan inputs where the scale is lean, in mamba only (the H200 A/B in
    conf/model/mamba.yaml); hymba, which has the same mixer, keeps them."""
    from flowhn.nn.ssm import Mamba1Mixer

    for model_name, overrides in (("mamba", ()), ("hymba", ("data.seq_len=64", "model.window=32"))):
        cfg = compose_train(f"model={model_name}", f"scale={scale}", *overrides)
        with torch.device("meta"):
            mixers = [m for m in flowhn.build_model(cfg).modules() if isinstance(m, Mamba1Mixer)]
        assert mixers and {m.remake_scan_inputs for m in mixers} == {lean and model_name == "mamba"}, model_name


def test_a_run_from_before_the_memory_switches_resumes_with_them():
    """scale.lean_activations and model.ssm_remake_scan_inputs change what the backward keeps, not the model
    trained: a checkpoint written before they existed (or with other values) resumes; a real change does not."""
    import copy

    from omegaconf import OmegaConf

    from flowhn.training.checks import RESUME_MAY_CHANGE, UNHASHED_KEYS, config_differences

    cfg = compose_train("model=mamba", "scale=135m")
    new = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "scale", "data", "trainer")}
    old = copy.deepcopy(new)
    del old["scale"]["lean_activations"], old["model"]["ssm_remake_scan_inputs"]
    ignore = UNHASHED_KEYS + RESUME_MAY_CHANGE
    assert config_differences(old, new, ignore) == []
    old["model"]["d_state"] += 1
    assert config_differences(old, new, ignore) == [f"model.d_state: {new['model']['d_state'] + 1} -> {new['model']['d_state']}"]


def test_a_run_from_before_residual_dtype_resumes_and_hashes_with_fp32_and_not_with_a_bf16_stream():
    """residual_dtype changes the function trained: a checkpoint or completed run from before the key existed
    ran with an fp32 stream, so it resumes (and counts as completed) with residual_dtype=fp32 and not otherwise."""
    from omegaconf import OmegaConf

    from flowhn.training.checks import RESUME_MAY_CHANGE, UNHASHED_KEYS, config_differences, config_hash

    def config(*overrides: str) -> dict:  # what shapes training (paths need Hydra's runtime to resolve)
        cfg = compose_train(*overrides)
        keys = ("model", "scale", "data", "trainer", "optim", "residual_dtype")
        return {key: cfg[key] if key == "residual_dtype" else OmegaConf.to_container(cfg[key], resolve=True)
                for key in keys}

    fp32, low = config("residual_dtype=fp32"), config("residual_dtype=autocast")
    before = {key: value for key, value in fp32.items() if key != "residual_dtype"}
    ignore = UNHASHED_KEYS + RESUME_MAY_CHANGE
    assert config_differences(before, fp32, ignore) == []
    assert config_differences(before, low, ignore) == ["residual_dtype: 'fp32' -> 'autocast'"]
    hashed = lambda c: config_hash(OmegaConf.create(c))
    assert hashed(before) == hashed(fp32) != hashed(low)
