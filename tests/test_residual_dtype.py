"""residual_dtype (conf/train.yaml): with ``autocast`` (the default) the residual stream, every block's input and
output and the gradient flowing along it, is held in the autocast dtype; with ``fp32`` it stays fp32 as
autocast leaves it. Without autocast the setting changes nothing. HF Llama in the bench follows the same
setting, so the bench's ratio to it compares models."""

from __future__ import annotations

import pytest
import torch
from conftest import small_cfg
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import flowhn
from flowhn.bench import CONF
from flowhn.errors import ConfigError

# One of each kind of block output: attention and SwiGLU (llama), an SSM without MLP (mamba), an MoE layer
# (jamba: its output is fp32 under autocast), a split with the norm_mean fusion (fp32 outputs too), no_split
# with the concat projection, Hymba's meta tokens and shared norm.
ARCHS = [("llama", ()), ("mamba", ()), ("jamba", ()), ("flowhn", ("split=fac_split", "fusion=norm_mean")),
         ("flowhn", ("split=no_split",)), ("hymba", ())]


def model_for(arch: str, overrides: tuple[str, ...], residual_dtype: str):
    torch.manual_seed(0)
    return flowhn.build_model(small_cfg(arch, *overrides, f"residual_dtype={residual_dtype}"))


def block_dtypes(model, ids: torch.Tensor, autocast: bool) -> tuple[set, set]:
    """(the dtypes of the blocks' inputs and outputs, of the gradients at their outputs) in one
    forward and backward under CPU bf16 autocast (or none)."""
    seen, grads, hooks = set(), set(), []

    def forward_hook(module, args, out):
        seen.update({args[0].dtype, out.dtype})
        out.register_hook(lambda g: grads.add(g.dtype))

    for block in model.layers:
        hooks.append(block.register_forward_hook(forward_hook))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    for hook in hooks:
        hook.remove()
    return seen, grads


@pytest.mark.parametrize(("arch", "overrides"), ARCHS, ids=[f"{a}{'-' + o[0] if o else ''}" for a, o in ARCHS])
def test_the_residual_stream_is_held_in_the_dtype_asked_for(arch, overrides):
    ids = torch.randint(0, 64, (2, 24))
    fp32_model = model_for(arch, overrides, "fp32")
    low_model = model_for(arch, overrides, "autocast")
    assert block_dtypes(fp32_model, ids, autocast=True) == ({torch.float32}, {torch.float32})
    assert block_dtypes(low_model, ids, autocast=True) == ({torch.bfloat16}, {torch.bfloat16})


@pytest.mark.parametrize(("arch", "overrides"), ARCHS[:4], ids=[a for a, _ in ARCHS[:4]])
def test_without_autocast_the_setting_changes_nothing(arch, overrides):
    ids = torch.randint(0, 64, (2, 24))
    fp32_model = model_for(arch, overrides, "fp32")
    low_model = model_for(arch, overrides, "autocast")
    assert block_dtypes(low_model, ids, autocast=False)[0] == {torch.float32}
    torch.testing.assert_close(low_model(ids), fp32_model(ids), rtol=0, atol=0)


def stream_errors(device: str, compile: bool, arch: str = "flowhn", overrides=("split=fac_split",)) -> dict:
    """Relative distance of the loss and of all gradients (one L2 norm) from the same model's in float64
    without autocast, for an fp32 and a bf16 residual stream under bf16 autocast on ``device`` (its SSM
    kernels: Triton on a GPU)."""
    gen = torch.Generator().manual_seed(1)
    ids, labels = torch.randint(0, 64, (4, 37), generator=gen).to(device), torch.randint(0, 64, (4, 37), generator=gen).to(device)
    results = {}
    for setting in ("reference", "fp32", "autocast"):
        cfg = small_cfg(arch, *overrides, f"residual_dtype={'fp32' if setting == 'reference' else setting}", seq_len=37)
        if device == "cuda" and setting != "reference":
            with open_dict(cfg):
                cfg.model.ssm_backend = "auto"
        torch.manual_seed(0)
        model = flowhn.build_model(cfg).to(device)
        if setting == "reference":
            model = model.double()
        elif compile:
            model.compile_in_place("model")
        with torch.autocast(device, dtype=torch.bfloat16, enabled=setting != "reference"):
            logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.double().flatten(0, 1), labels.flatten())
        loss.backward()
        results[setting] = (loss.detach(), torch.cat([p.grad.double().flatten() for p in model.parameters()]))
    ref_loss, ref_grad = results.pop("reference")
    return {setting: (float(abs(loss - ref_loss) / ref_loss), float((grad - ref_grad).norm() / ref_grad.norm()))
            for setting, (loss, grad) in results.items()}


def assert_bf16_stream_within_rounding(errors: dict) -> None:
    """The bf16 stream's loss and gradients are as far from float64 as bf16 rounding puts them, and no
    further than a few times the fp32 stream's own distance."""
    (loss_fp32, grad_fp32), (loss_low, grad_low) = errors["fp32"], errors["autocast"]
    assert loss_fp32 < 5e-4 and loss_low < 5e-4, errors
    assert grad_low < 1.5e-2, errors  # flowhn fac_split on the CPU when written: 6.6e-3 (fp32 stream: 4.0e-3)
    assert grad_low < 3 * grad_fp32, errors


def test_a_bf16_stream_gives_the_fp32_streams_loss_and_gradients_to_bf16_rounding():
    assert_bf16_stream_within_rounding(stream_errors("cpu", compile=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("arch", "overrides"), [("flowhn", ("split=fac_split",)), ("llama", ())])
def test_a_bf16_stream_compiled_on_the_gpu_gives_the_fp32_streams_loss_and_gradients_to_bf16_rounding(arch, overrides):
    errors = stream_errors("cuda", compile=True, arch=arch, overrides=overrides)
    print(errors)
    assert_bf16_stream_within_rounding(errors)


def test_a_bad_residual_dtype_is_refused_naming_the_key():
    cfg = small_cfg("llama")
    with open_dict(cfg):
        cfg.residual_dtype = "bf16"
    with pytest.raises(ConfigError, match="residual_dtype.*fp32, autocast"):
        flowhn.build_model(cfg)


def test_the_bench_holds_hf_llamas_residual_stream_in_the_same_dtype_as_ours():
    pytest.importorskip("transformers")
    from flowhn.bench import hf_llama, ours

    for residual_dtype, dtype in (("fp32", torch.float32), ("autocast", torch.bfloat16)):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            bench = compose("bench", overrides=["scale=tiny", "device=cpu", f"residual_dtype={residual_dtype}"])
            _, theirs, *_ = hf_llama(bench, compiled=False)
            _, mine, *_ = ours({"model": "llama"}, bench)
        assert mine.residual_dtype == residual_dtype
        seen = set()
        theirs.model.model.layers[0].register_forward_hook(lambda module, args, out: seen.add(args[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs(torch.randint(0, 64, (1, 16)))
        assert seen == {dtype}, residual_dtype
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        bench = compose("bench", overrides=["scale=tiny", "device=cpu", "residual_dtype=bf16"])
        with pytest.raises(ConfigError, match="residual_dtype"):
            hf_llama(bench, compiled=False)
