"""Hymba's defining properties (reference followed: NVlabs/hymba and arXiv 2411.13676)."""

import pytest
import torch

import flowhn
from flowhn.errors import ConfigError
from flowhn.nn.attention import Attention, window_mask
from flowhn.nn.blocks import SequenceContext
from flowhn.nn.fusion import NormMean
from conftest import small_cfg


def test_window_mask_is_causal_local_and_keeps_meta_tokens_visible():
    positions = torch.arange(12)
    mask = window_mask(positions, window=3, n_prefix=2)
    for q in range(12):
        for k in range(12):
            assert mask[q, k] == (k <= q and (q - k < 3 or k < 2))


def test_windowed_attention_ignores_tokens_beyond_the_window():
    torch.manual_seed(0)
    attn = Attention(16, 4, 2, window=4).eval()
    ctx = SequenceContext(20, "cpu", n_prefix=0)
    x = torch.randn(1, 20, 16)
    far = x.clone()
    far[:, :10] = torch.randn(1, 10, 16)  # positions 0..9 are > 3 back from every query >= 13
    with torch.no_grad():
        torch.testing.assert_close(attn(x, ctx.positions, ctx)[:, 13:], attn(far, ctx.positions, SequenceContext(20, "cpu"))[:, 13:])
        assert not torch.allclose(attn(x, ctx.positions, ctx)[:, 10:13], attn(far, ctx.positions, SequenceContext(20, "cpu"))[:, 10:13])


def test_global_layers_are_first_middle_last():
    model = flowhn.build_model(small_cfg("hymba", "model.n_layers=7", "model.window=8"))
    windows = [block.attention.window for block in model.layers]
    assert windows == [None, 8, 8, None, 8, 8, None]


def test_meta_tokens_are_learned_prefix_and_not_in_the_output():
    cfg = small_cfg("hymba", "model.meta_tokens=5", "model.window=6")
    model = flowhn.build_model(cfg)
    ids = torch.randint(0, cfg.scale.vocab_size, (2, 24))
    logits = model(ids)
    assert logits.shape == (2, 24, cfg.scale.vocab_size)
    logits.float().pow(2).mean().backward()
    assert model.meta_tokens.shape == (5, cfg.model.d_model) and model.meta_tokens.grad.abs().sum() > 0
    with torch.no_grad():
        model.meta_tokens.add_(1.0)
        assert not torch.allclose(model(ids), logits)


def test_norm_mean_fusion_is_a_scaled_mean_of_normalised_branches():
    torch.manual_seed(0)
    fusion = NormMean(8)
    with torch.no_grad():
        fusion.attn_norm.weight.uniform_(0.5, 2)
        fusion.ssm_norm.weight.uniform_(0.5, 2)
    a, s = torch.randn(3, 8), torch.randn(3, 8)
    rms = lambda v: v / v.pow(2).mean(-1, keepdim=True).add(fusion.attn_norm.eps).sqrt()
    expected = 0.5 * (fusion.attn_norm.weight * rms(a) + fusion.ssm_norm.weight * rms(s))
    torch.testing.assert_close(fusion.both(a, s), expected)
    # Normalising first makes the fusion blind to either branch's overall scale.
    torch.testing.assert_close(fusion.both(7.0 * a, s), fusion.both(a, s), rtol=1e-4, atol=1e-5)


def test_cross_layer_kv_sharing_drops_the_consumers_kv_projections():
    plain = flowhn.build_model(small_cfg("hymba", "model.n_layers=6", "model.window=8"))
    shared = flowhn.build_model(small_cfg("hymba", "model.n_layers=6", "model.window=8", "model.kv_share=true"))
    roles = [b.attention.kv_role for b in shared.layers]
    assert roles == [None, "produce", "consume", None, None, None]
    for block in shared.layers:
        assert hasattr(block.attention, "k_proj") == (block.attention.kv_role != "consume")
    assert shared.num_params() < plain.num_params()


def test_window_not_below_seq_len_is_refused():
    with pytest.raises(ConfigError, match="model.window"):
        flowhn.build_model(small_cfg("hymba", "model.window=24", seq_len=24))
