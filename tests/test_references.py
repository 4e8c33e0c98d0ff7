"""Our blocks against HF transformers' reference implementations, given the same weights (fp32, CPU)."""

import pytest
import torch
from omegaconf import open_dict

import flowhn
from flowhn.models import jamba as jamba_arch
from flowhn.nn.mlp import MoE
from flowhn.nn.ssm import Mamba1Mixer, Mamba2Mixer
from conftest import hf_jamba_moe_like, small_cfg

transformers = pytest.importorskip("transformers")


def randomize_(module, seed=0):
    """Give every parameter random values, so unit norms or zero biases can't hide a mismatch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def hf_out(module, x):
    """A HF mixer's output through its own dispatch (the PyTorch path on CPU, in eval mode)."""
    out = module(x)
    return out[0] if isinstance(out, tuple) else out


def hf_llama_keys(ours: str) -> str:
    renames = {"mixer_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "mixer.": "self_attn."}
    if ours.startswith("lm_head"):
        return ours
    for a, b in renames.items():
        ours = ours.replace(a, b)
    return "model." + ours


@pytest.mark.parametrize("tie", [True, False])
def test_llama_logits_equal_hf_llama(tie):
    cfg = small_cfg("llama", f"scale.tie_embeddings={str(tie).lower()}", "model.n_layers=3", seq_len=32)
    ours = flowhn.build_model(cfg).eval()
    randomize_(ours)
    m = cfg.model
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.scale.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff, num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, rms_norm_eps=m.norm_eps,
        rope_theta=m.rope_theta, tie_word_embeddings=tie, max_position_embeddings=64, attention_bias=False,
        mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict({hf_llama_keys(k): v for k, v in ours.state_dict().items()}, strict=False)
    assert not unexpected and all("rotary" in k or (tie and k == "lm_head.weight") for k in missing)
    ids = torch.randint(0, cfg.scale.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_mamba1_mixer_equals_hf_mamba_mixer():
    from transformers.models.mamba.modeling_mamba import MambaMixer

    d, n = 32, 8
    ours = Mamba1Mixer(d, d_state=n, d_conv=4, expand=2, backend="torch").eval()
    randomize_(ours)
    with torch.no_grad():
        ours.A_log.copy_(torch.log(torch.rand_like(ours.A_log) * 2 + 0.1))
    hf_cfg = transformers.MambaConfig(hidden_size=d, state_size=n, conv_kernel=4, expand=2, time_step_rank=ours.dt_rank,
                                      use_bias=False, use_conv_bias=True)
    hf = MambaMixer(hf_cfg, layer_idx=0).eval()
    hf.load_state_dict(ours.state_dict())
    x = torch.randn(2, 40, d)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf_out(hf, x), rtol=1e-4, atol=1e-5)


def test_jamba_mamba_mixer_with_inner_norms_equals_hf():
    from transformers.models.jamba.modeling_jamba import JambaMambaMixer

    d, n = 32, 8
    ours = Mamba1Mixer(d, d_state=n, expand=2, inner_norms=True, norm_eps=1e-6, backend="torch").eval()
    randomize_(ours, seed=1)
    with torch.no_grad():
        ours.A_log.copy_(torch.log(torch.rand_like(ours.A_log) * 2 + 0.1))
    hf_cfg = transformers.JambaConfig(hidden_size=d, mamba_d_state=n, mamba_d_conv=4, mamba_expand=2,
                                      mamba_dt_rank=ours.dt_rank, mamba_conv_bias=True, mamba_proj_bias=False,
                                      rms_norm_eps=1e-6, num_hidden_layers=2)
    hf = JambaMambaMixer(hf_cfg, layer_idx=0).eval()
    hf.load_state_dict(ours.state_dict())
    x = torch.randn(2, 30, d)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf_out(hf, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_mamba2_mixer_equals_hf_mamba2_mixer(groups):
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

    d, n, p = 64, 16, 16
    ours = Mamba2Mixer(d, d_state=n, d_conv=4, expand=2, head_dim=p, n_groups=groups, chunk_size=8, backend="torch").eval()
    randomize_(ours, seed=2)
    with torch.no_grad():
        ours.A_log.copy_(torch.log(torch.rand_like(ours.A_log) + 0.5))
        ours.dt_bias.copy_(torch.randn_like(ours.dt_bias) * 0.5 - 2)
    hf_cfg = transformers.Mamba2Config(hidden_size=d, state_size=n, expand=2, head_dim=p, num_heads=2 * d // p,
                                       n_groups=groups, conv_kernel=4, chunk_size=8, use_bias=False, use_conv_bias=True,
                                       layer_norm_epsilon=ours.norm.eps)
    hf = HFMamba2Mixer(hf_cfg, layer_idx=0).eval()
    hf.load_state_dict(ours.state_dict())
    x = torch.randn(2, 37, d)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf_out(hf, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_layers,period,offset,e_period,e_offset", [(16, 8, 4, 2, 1), (12, 4, 1, 3, 0), (8, 8, 0, 2, 1)])
def test_jamba_layout_matches_hf_jamba_config(n_layers, period, offset, e_period, e_offset):
    cfg = small_cfg("jamba", f"model.n_layers={n_layers}", f"model.attn_period={period}", f"model.attn_offset={offset}",
                    f"model.expert_period={e_period}", f"model.expert_offset={e_offset}", "model.num_experts=4")
    specs = jamba_arch.layers(cfg.model)
    hf = transformers.JambaConfig(num_hidden_layers=n_layers, attn_layer_period=period, attn_layer_offset=offset,
                                  expert_layer_period=e_period, expert_layer_offset=e_offset, num_experts=4)
    assert ["attention" if s.mixer == "attention" else "mamba" for s in specs] == hf.layers_block_type
    assert [4 if s.mlp == "moe" else 1 for s in specs] == hf.layers_num_experts


def test_moe_routing_and_output_equal_hf_jamba_moe():
    d, f, e, k = 16, 24, 4, 2
    ours = MoE(d, f, e, k).eval()
    randomize_(ours, seed=3)
    hf = hf_jamba_moe_like(ours)
    x = torch.randn(3, 10, d)
    with torch.no_grad():
        _, hf_weights, hf_index = hf.router(x.view(-1, d))
        weights, index = ours.route(x.view(-1, d))
        assert torch.equal(index, hf_index)
        torch.testing.assert_close(weights, hf_weights)
        torch.testing.assert_close(ours(x), hf(x)[0] if isinstance(hf(x), tuple) else hf(x), rtol=1e-5, atol=1e-6)
