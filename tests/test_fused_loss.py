"""The fused LM head + cross-entropy (flowhn.kernels.cross_entropy) against F.cross_entropy on the full
logits: the loss and the gradients of the hidden states and the head's weight, ignored labels included;
its use as the training loss; and the config keys that steer it (fused_loss, compile_mode)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict

from flowhn.errors import ConfigError
from flowhn.kernels import cross_entropy as ce
from flowhn.kernels.cross_entropy import IGNORE_INDEX, linear_cross_entropy, linear_cross_entropy_chunked
from tests.conftest import ROOT, assert_errors_below, compose_train, run_in_triton_interpreter, small_cfg


def make_inputs(n=37, d=24, vocab=101, dtype=torch.float64, device="cpu", ignored_every=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64).to(device, dtype)
    weight = (torch.randn(vocab, d, generator=gen, dtype=torch.float64) * d ** -0.5).to(device, dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[::ignored_every] = IGNORE_INDEX
    return hidden, weight, labels.to(device)


def loss_and_grads(fn, hidden, weight, labels, upstream=1.0):
    """fn's loss and d(upstream · loss)/d(hidden, weight), from fresh leaves."""
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    loss = fn(hidden, weight, labels)
    grad_hidden, grad_weight = torch.autograd.grad(loss * upstream, (hidden, weight))
    return loss.detach(), grad_hidden, grad_weight


def full_logits(hidden, weight, labels):
    return F.cross_entropy(hidden @ weight.T, labels, ignore_index=IGNORE_INDEX)


def assert_all_close(result, reference, **tol):
    for name, a, b in zip(("loss", "grad_hidden", "grad_weight"), result, reference):
        torch.testing.assert_close(a, b, msg=name, **tol)


# chunk_elements: one chunk, chunks that do not divide the 37 tokens, one token per chunk
@pytest.mark.parametrize("chunk_elements", [2**27, 7 * 101, 101])
def test_chunked_equals_full_logits_in_float64(chunk_elements):
    hidden, weight, labels = make_inputs()
    fused = lambda h, w, y: linear_cross_entropy_chunked(h, w, y, chunk_elements=chunk_elements)  # noqa: E731
    assert_all_close(loss_and_grads(fused, hidden, weight, labels, upstream=2.5),
                     loss_and_grads(full_logits, hidden, weight, labels, upstream=2.5), rtol=1e-12, atol=1e-14)


def test_chunked_equals_full_logits_in_float32_with_batch_dims():
    hidden, weight, labels = make_inputs(n=2 * 19, dtype=torch.float32, ignored_every=3)
    fused = lambda h, w, y: linear_cross_entropy(h.view(2, 19, -1), w, y.view(2, 19))  # noqa: E731
    result = loss_and_grads(fused, hidden, weight, labels)
    assert result[0].dtype == torch.float32
    assert_all_close(result, loss_and_grads(full_logits, hidden, weight, labels), rtol=1e-5, atol=1e-6)


def test_ignored_labels_contribute_nothing_and_all_ignored_is_nan_like_f_cross_entropy():
    hidden, weight, labels = make_inputs()
    grad_hidden = loss_and_grads(linear_cross_entropy, hidden, weight, labels)[1]
    assert not grad_hidden[labels == IGNORE_INDEX].any() and grad_hidden[labels != IGNORE_INDEX].abs().sum() > 0
    none_valid = torch.full_like(labels, IGNORE_INDEX)
    result = loss_and_grads(linear_cross_entropy, hidden, weight, none_valid)
    reference = loss_and_grads(full_logits, hidden, weight, none_valid)
    assert result[0].isnan() and reference[0].isnan()
    torch.testing.assert_close(result[1:], reference[1:])


def test_frozen_weight_and_no_grad():
    hidden, weight, labels = make_inputs()
    h = hidden.clone().requires_grad_()
    loss = linear_cross_entropy(h, weight, labels)  # weight is not a leaf that wants a gradient
    (grad,) = torch.autograd.grad(loss, h)
    h_ref = hidden.clone().requires_grad_()
    torch.testing.assert_close(grad, torch.autograd.grad(full_logits(h_ref, weight, labels), h_ref)[0])
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, labels), full_logits(hidden, weight, labels))


def test_bf16_autocast_matches_the_unfused_autocast_path():
    """Under autocast the GEMMs run in bf16 as the model's LM head does; the rest is fp32."""
    hidden, weight, labels = make_inputs(n=50, d=32, vocab=300, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = loss_and_grads(linear_cross_entropy, hidden, weight, labels)
        reference = loss_and_grads(ce.linear_cross_entropy_reference, hidden, weight, labels)
    assert result[2].dtype == torch.float32  # the fp32 weight gets an fp32 gradient
    assert_all_close(result, reference, rtol=2e-2, atol=2e-4)


def test_compiles_to_one_graph():
    hidden, weight, labels = make_inputs(dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda h, w, y: linear_cross_entropy_chunked(h, w, y, chunk_elements=10 * 101),
                             backend="aot_eager", fullgraph=True)
    assert_all_close(loss_and_grads(compiled, hidden, weight, labels),
                     loss_and_grads(full_logits, hidden, weight, labels), rtol=1e-5, atol=1e-6)


def test_dispatch_errors_name_the_problem(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, labels = make_inputs()
    with pytest.raises(ValueError, match="fused loss 'triton' needs a CUDA device"):
        linear_cross_entropy(hidden, weight, labels, impl="triton")
    assert ce.resolve_impl("auto", "cuda") == "triton" and ce.resolve_impl("auto", "cpu") == "chunked"
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        linear_cross_entropy(hidden, weight, labels, impl="fast")
    with pytest.raises(ValueError, match="fused loss 'liger' is not available: it needs a CUDA device"):
        linear_cross_entropy(hidden, weight, labels, impl="liger")
    with pytest.raises(ValueError, match="do not fit"):
        linear_cross_entropy(hidden, weight[:, :-1], labels)


TRITON_INTERPRETED = """
import json, sys
import torch
sys.path.insert(0, "tests")
from test_fused_loss import full_logits, loss_and_grads, make_inputs
from flowhn.kernels import triton_cross_entropy as tce
from flowhn.kernels.cross_entropy import IGNORE_INDEX, linear_cross_entropy
# Small tiles, so the 53-word rows span 4 blocks (the last partial) and the 37 tokens 6 chunks (the
# last shorter): no tile divides the shape.
tce.CHUNK_ELEMENTS, tce.BLOCK_V = 7 * 53, 16
fused = lambda h, w, y: linear_cross_entropy(h, w, y, impl="triton")
errors = {}
for dtype in (torch.float64, torch.float32):
    hidden, weight, labels = make_inputs(n=37, d=11, vocab=53, dtype=dtype)
    result = loss_and_grads(fused, hidden, weight, labels, upstream=2.5)
    reference = loss_and_grads(full_logits, hidden.double(), weight.double(), labels, upstream=2.5)
    assert result[1].dtype == dtype and result[2].dtype == dtype
    for name, a, b in zip(("loss", "grad_hidden", "grad_weight"), result, reference):
        errors[f"{name} {dtype}"] = ((a.double() - b).norm() / b.norm()).item()
    # an ignored token's gradient is exactly 0
    assert not result[1][labels == IGNORE_INDEX].any()
hidden, weight, labels = make_inputs(n=5, d=11, vocab=53)
none_valid = torch.full_like(labels, IGNORE_INDEX)
result = loss_and_grads(fused, hidden, weight, none_valid)
assert result[0].isnan() and not result[1].any() and not result[2].any()
with torch.no_grad():
    errors["no_grad loss"] = abs(fused(hidden, weight, labels) - full_logits(hidden, weight, labels)).item()
torch._dynamo.reset()
compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
result = loss_and_grads(compiled, hidden.float(), weight.float(), labels)
reference = loss_and_grads(full_logits, hidden, weight, labels)
for name, a, b in zip(("loss", "grad_hidden", "grad_weight"), result, reference):
    errors[f"compiled {name}"] = ((a.double() - b).norm() / b.norm()).item()
print(json.dumps(errors))
"""


def test_triton_loss_equals_full_logits_on_the_interpreter():
    """The Triton rows kernel and its custom op on Triton's CPU interpreter against float64 full logits:
    loss and both gradients (upstream 2.5), ignored labels, none valid (nan, zero gradients), no_grad,
    and one graph under torch.compile (fullgraph: the op never breaks it)."""
    import json

    errors = json.loads(run_in_triton_interpreter(TRITON_INTERPRETED).strip().splitlines()[-1])
    assert_errors_below(errors, 1e-6)


def _module(*overrides):
    from flowhn.training.module import CausalLMModule

    cfg = small_cfg("llama", f"paths.root_dir={ROOT}", "paths.output_dir=unused", *overrides, seq_len=16)
    torch.manual_seed(0)
    return CausalLMModule(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize(("tie", "setting"), [("true", "true"), ("false", "true"), ("true", "chunked")])
def test_training_loss_fused_equals_unfused(tie, setting):
    """fused_loss=true (or an implementation by name) trains on the same loss and gradients as the
    full logits; the tied head's gradient reaches the embedding."""
    fused = _module(f"fused_loss={setting}", f"scale.tie_embeddings={tie}")
    plain = copy.deepcopy(fused)
    with open_dict(plain.cfg):
        plain.cfg.fused_loss = False
    assert fused.uses_fused_loss and not plain.uses_fused_loss
    ids = torch.randint(0, fused.cfg.scale.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    labels = ids[:, 1:].clone()
    labels[0, :3] = IGNORE_INDEX
    losses = []
    for module in (fused, plain):
        loss = module.training_loss(ids[:, :-1], labels)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)
    assert _module().uses_fused_loss is False  # auto: off on CPU


@pytest.mark.parametrize(("override", "key"), [
    ("fused_loss=sometimes", "fused_loss"), ("compile_mode=fastest", "compile_mode"),
    ("compile_mode=reduce-overhead", "compile_mode"),  # with compile=false
])
def test_bad_fused_loss_or_compile_mode_is_a_config_error(override, key):
    from flowhn.training.checks import resolve_trainer_settings

    cfg = small_cfg("llama", "compile=false", override)
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        resolve_trainer_settings(cfg)


@pytest.mark.parametrize(("overrides", "expected"), [
    (("scale=135m",), "reduce-overhead"),  # the one scale whose steps the host bound (conf/scale/135m.yaml)
    (("scale=1b",), None), ((), None),  # tiny, 350m and 1b set none
    (("scale=135m", "trainer.devices=2"), None),  # DDP: CUDA graphs not tested under it here
    (("scale=135m", "trainer.accumulate_grad_batches=2"), None),
    (("scale=135m", "compile=false"), None),
    (("scale=135m", "compile_scope=blocks"), None),
    (("scale=135m", "trainer.accelerator=cpu"), None),  # compile: auto is off on the CPU
    (("scale=135m", "compile_mode=max-autotune"), "max-autotune"),  # a mode set by hand stays
    (("scale=1b", "compile_mode=reduce-overhead"), "reduce-overhead"),
])
def test_compile_mode_auto_is_the_scales_mode_on_one_gpu(overrides, expected, monkeypatch):
    from flowhn.training.checks import resolve_trainer_settings

    # A config resolved as on a machine with two GPUs (nothing is built or run on them).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose_train("model=llama", "compile=auto", *overrides)
    resolve_trainer_settings(cfg)
    assert cfg.compile_mode == expected


@pytest.mark.parametrize("setting", ["auto", "true", "false", "triton", "liger", "chunked", "cce"])
def test_fused_loss_settings_that_are_accepted(setting):
    from flowhn.training.checks import resolve_trainer_settings

    resolve_trainer_settings(small_cfg("llama", "compile=false", f"fused_loss={setting}"))


# ---------------------------------------------------------------- GPU: every adoptable implementation

# cut-cross-entropy is not held to this: its bf16 gradient was 2.3e-2 off on an H200 (scripts/gpu_speed.py),
# so it is not exact here and not the default (kernels/cross_entropy.py).
GPU_IMPLS = ["triton", "triton-compiled", "chunked", "chunked-compiled", "liger"]


def _gpu_impl(name):
    if name == "chunked-compiled":
        return torch.compile(lambda h, w, y: linear_cross_entropy_chunked(h, w, y, chunk_elements=300 * 5003))
    if name == "triton-compiled":
        return torch.compile(lambda h, w, y: linear_cross_entropy(h, w, y, impl="triton"), fullgraph=True)
    impl = name
    if ce.import_problem(impl) is not None:
        pytest.skip(f"{impl}: {ce.import_problem(impl)}")
    return lambda h, w, y: linear_cross_entropy(h, w, y, impl=impl)


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_IMPLS)
@pytest.mark.parametrize(("n", "d", "vocab", "dtype"), [
    (1000, 96, 5003, torch.bfloat16), (2049, 576, 32003, torch.bfloat16), (777, 64, 5003, torch.float32)])
def test_gpu_implementation_against_float64(name, n, d, vocab, dtype, request):
    """Loss and both gradients against float64 full logits at shapes no tile divides. bf16 runs
    under autocast with fp32 hidden/weight, as in training."""
    if name == "chunked-compiled" and dtype == torch.bfloat16 and n == 2049:
        # Seen failing on an H200 (2026-11-29); the eager chunked passes at this shape, so the compiled
        # graph differs. Not the GPU default (liger is); open in experiments/bench/H200.md.
        request.applymarker(pytest.mark.xfail(reason="compiled chunked loss off at 2049x576x32003 bf16 on H200"))
    fn = _gpu_impl(name)
    hidden, weight, labels = make_inputs(n, d, vocab, dtype=torch.float32, device="cuda", ignored_every=7)
    hidden = hidden * 3  # logits of a few units: a softmax that is not nearly uniform
    reference = loss_and_grads(full_logits, hidden.double(), weight.double(), labels)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        result = loss_and_grads(fn, hidden, weight, labels)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert abs(result[0].double() - reference[0]).item() < tol * reference[0].item()
    for name_, a, b in zip(("grad_hidden", "grad_weight"), result[1:], reference[1:]):
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel < tol, f"{name_}: relative error {rel:.2e}"
