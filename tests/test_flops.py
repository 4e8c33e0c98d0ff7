"""Analytic FLOPs vs torch's FlopCounterMode, for every architecture and split strategy.

FlopCounterMode counts matmuls and SDPA (and convolutions, which we leave out of the comparison);
the SSM scans run through the elementwise reference backend so they add no matmuls. Sliding
windows are counted densely by the counter (the mask does not shrink SDPA), so Hymba is compared
with global attention; the windowed count is checked on its own below.
"""

import pytest
import torch
from omegaconf import open_dict
from torch.utils.flop_counter import FlopCounterMode

import flowhn
from conftest import ARCHS, SPLITS, compose_train

CONV_OPS = ("convolution", "convolution_backward")
ATTENTION_FREE = ("mamba", "mamba2")


def counted_flops(model, vocab, seq_len, device):
    ids = torch.randint(0, vocab, (1, seq_len), device=device)
    with FlopCounterMode(display=False) as counter:
        model(ids).float().sum().backward()
    return sum(n for op, n in counter.get_flop_counts()["Global"].items() if not any(c in str(op) for c in CONV_OPS))


def cases():
    for arch in ARCHS:
        for scale in ("tiny", "135m"):
            for split in SPLITS if arch == "flowhn" else ("no_split",):
                yield arch, scale, split


@pytest.mark.parametrize("arch,scale,split", list(cases()))
def test_analytic_flops_match_flop_counter(arch, scale, split):
    # At 135M widths attention is under 2% of the FLOPs at 64 tokens (well under 1% at 8): below the 5% tolerance
    # either way, so what the 135M cases check is the per-token projections, at any length. 8 tokens (as many
    # steps of the reference scan's loop, most of the counter's time: mamba2 took 36 s at 24) check them as 64
    # did. The tiny models with attention, where it is up to 7% of the FLOPs at 64 tokens, keep 64; Mamba and
    # Mamba-2 have none, so theirs are per-token projections at any scale and take 8 too (4.5 -> 0.7 s each).
    seq_len = 64 if scale == "tiny" and arch not in ATTENTION_FREE else 8
    overrides = [f"model={arch}", f"scale={scale}", f"data.seq_len={seq_len}"]
    if arch == "flowhn":
        overrides.append(f"split={split}")
    if arch == "hymba":
        overrides += ["model.window=null", "model.meta_tokens=8"]
    cfg = compose_train(*overrides)
    with open_dict(cfg):
        cfg.model.ssm_backend = "reference"
    # MoE routing is data dependent, so Jamba runs on real (CPU) tensors; the rest on meta.
    device = "cpu" if arch == "jamba" else "meta"
    torch.manual_seed(0)
    with torch.device(device):
        model = flowhn.build_model(cfg)
    expected = 3 * seq_len * (lambda f: f.matmul + f.attention)(model.flops_breakdown(seq_len))
    assert counted_flops(model, cfg.scale.vocab_size, seq_len, device) == pytest.approx(expected, rel=0.05)


def test_window_caps_attention_term():
    cfg = compose_train("model=hymba", "scale=tiny", "data.seq_len=256", "model.window=64")
    with torch.device("meta"):
        model = flowhn.build_model(cfg)
    global_block, window_block = model.layers[0], model.layers[1]
    assert window_block.attention.window == 64 and global_block.attention.window is None
    internal = 256 + cfg.model.meta_tokens
    assert window_block.attention.flops(internal).attention * internal / 64 == pytest.approx(
        global_block.attention.flops(internal).attention)


def test_split_attention_term_uses_the_branch_token_count():
    cfg = compose_train("model=flowhn", "scale=135m", "split=fa_split", "split.ratio=0.25")
    with torch.device("meta"):
        model = flowhn.build_model(cfg)
    block = model.layers[0]
    full = block.attention.flops(1024).attention
    # A quarter of the tokens attend, each over a quarter of the keys: 1/16 of the dense term.
    assert block.flops(1024).attention == pytest.approx(full / 16)
