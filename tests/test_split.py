"""Split schedules: the paper's figure, FAC coverage, and the FLOP-aware ratio."""

import math

import pytest
import torch
from omegaconf import open_dict

import flowhn
from flowhn.errors import ConfigError
from flowhn.nn.split import TokenSplit, attention_span, attention_tokens, fac_window
from conftest import compose_train, small_cfg


def owned(strategy, layer, seq_len, ratio):
    span = attention_span(strategy, layer, seq_len, ratio)
    attn = set(range(*span))
    return attn, set(range(seq_len)) - attn


def test_paper_figure_six_tokens_three_blocks():
    # Paper's figure, 1-based there, 0-based here.
    assert [owned("ae_split", b, 6, 0.5) for b in range(3)] == [
        ({3, 4, 5}, {0, 1, 2}), ({0, 1, 2}, {3, 4, 5}), ({3, 4, 5}, {0, 1, 2})]
    assert [owned("fa_split", b, 6, 1 / 3) for b in range(3)] == [({4, 5}, {0, 1, 2, 3})] * 3
    assert [owned("fac_split", b, 6, 1 / 3) for b in range(3)] == [
        ({4, 5}, {0, 1, 2, 3}), ({2, 3}, {0, 1, 4, 5}), ({0, 1}, {2, 3, 4, 5})]


@pytest.mark.parametrize("seq_len", [7, 64, 100, 1024, 4096])
@pytest.mark.parametrize("ratio", [0.05, 0.2, 1 / 3, 0.55, 0.9])
def test_fac_windows_cover_every_position_within_ceil_t_over_w_blocks(seq_len, ratio):
    width = attention_tokens(seq_len, ratio)
    blocks = math.ceil(seq_len / width)
    covered = set()
    for layer in range(blocks):
        start, stop = fac_window(layer, seq_len, ratio)
        assert stop - start == width and 0 <= start and stop <= seq_len
        covered |= set(range(start, stop))
    assert covered == set(range(seq_len))
    # A pure function of (block, seq_len, ratio): the cycle repeats exactly.
    assert fac_window(blocks, seq_len, ratio) == fac_window(0, seq_len, ratio)


def test_split_indices_partition_positions_in_order():
    split = TokenSplit("fac_split", 0.3)
    for layer in range(5):
        attn, ssm, _ = split.indices(layer, 50, "cpu")
        assert torch.equal(torch.sort(torch.cat([attn, ssm])).values, torch.arange(50))
        assert torch.all(attn[1:] > attn[:-1]) and torch.all(ssm[1:] > ssm[:-1])


def ratio_of(*overrides):
    with torch.device("meta"):
        return flowhn.build_model(compose_train("model=flowhn", "split=fa_split", *overrides)).split_ratio


def test_fa_ratio_follows_branch_flops():
    # Attention's per-token cost grows with seq_len, so it must get a smaller share...
    assert ratio_of("scale=135m", "data.seq_len=4096") < ratio_of("scale=135m", "data.seq_len=1024") < ratio_of(
        "scale=135m", "data.seq_len=256")
    # ...and its T·d score term matters less as the width grows against the d² projections.
    assert ratio_of("scale=135m", "model.d_model=2048", "model.n_heads=32", "model.n_kv_heads=8") > ratio_of("scale=135m")
    # A bigger SSM state makes the SSM heavier, so attention gets more tokens.
    assert ratio_of("scale=135m", "model.d_state=64") > ratio_of("scale=135m")


def test_fa_ratio_is_the_paper_rule_on_the_branch_flops():
    cfg = compose_train("model=flowhn", "scale=135m", "split=fa_split")
    with torch.device("meta"):
        model = flowhn.build_model(cfg)
        block = model.layers[0]
        f_attn = block.attention.flops(cfg.data.seq_len).total
        f_ssm = block.ssm.flops(cfg.data.seq_len).total
    assert model.split_ratio == pytest.approx(f_ssm / (f_attn + f_ssm))


def test_explicit_ratio_overrides_and_is_used():
    cfg = small_cfg("flowhn", "split=fa_split", "split.ratio=0.25", seq_len=40)
    model = flowhn.build_model(cfg)
    assert model.split_ratio == 0.25
    attn = model.layers[0].split.indices(0, 40, "cpu").attention
    assert attn.numel() == 10


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match="split.ratio"):
        flowhn.build_model(small_cfg("flowhn", "split=fa_split", f"split.ratio={ratio}"))


def test_fac_needs_enough_blocks_to_cover():
    with pytest.raises(ConfigError, match="model.n_layers"):
        flowhn.build_model(small_cfg("flowhn", "split=fac_split", "split.ratio=0.1", "model.n_layers=4", seq_len=100))


def test_split_on_an_architecture_without_parallel_branches_is_refused():
    with pytest.raises(ConfigError, match="split"):
        flowhn.build_model(small_cfg("llama", "split=fac_split"))
