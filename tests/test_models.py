"""Every architecture: shapes, causality (all split × fusion combinations), parameter counts."""

import itertools

import pytest
import torch
from omegaconf import open_dict

import flowhn
from conftest import ARCHS, FUSIONS, SCALES, SPLITS, compose_train, small_cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return flowhn.build_model(cfg).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_shape(arch):
    cfg = small_cfg(arch)
    model = build(cfg)
    ids = torch.randint(0, cfg.scale.vocab_size, (2, 24))
    logits = model(ids)
    assert logits.shape == (2, 24, cfg.scale.vocab_size)
    assert torch.isfinite(logits).all()


def assert_causal(model, vocab, seq_len=24):
    """Changing tokens after position t never changes the logits at positions <= t."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, seq_len), generator=gen)
    with torch.no_grad():
        base = model(ids)
        for t in (0, seq_len // 3, seq_len - 2):
            changed = ids.clone()
            changed[:, t + 1 :] = torch.randint(0, vocab, (2, seq_len - t - 1), generator=gen)
            out = model(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :]), "future tokens had no effect at all"


@pytest.mark.parametrize("split,fusion", list(itertools.product(SPLITS, FUSIONS)))
def test_flowhn_causal_every_split_and_fusion(split, fusion):
    cfg = small_cfg("flowhn", f"split={split}", f"fusion={fusion}", "model.n_layers=4")
    assert_causal(build(cfg), cfg.scale.vocab_size)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "flowhn"])
def test_baselines_causal(arch):
    extra = ["model.window=6", "model.meta_tokens=4"] if arch == "hymba" else []
    cfg = small_cfg(arch, *extra)
    assert_causal(build(cfg), cfg.scale.vocab_size)


def test_hymba_causal_with_kv_sharing_and_mamba2_branch():
    cfg = small_cfg("hymba", "model.window=6", "model.meta_tokens=3", "model.kv_share=true", "model.n_layers=6",
                    "model.ssm=mamba2", "model.d_state=16", "model.ssm_head_dim=32")
    assert_causal(build(cfg), cfg.scale.vocab_size)


@pytest.mark.parametrize("arch", ["flowhn", "shm", "jamba"])
def test_mamba2_branch_causal(arch):
    cfg = small_cfg(arch, "model.ssm=mamba2", "model.d_state=16", "model.ssm_head_dim=32")
    assert_causal(build(cfg), cfg.scale.vocab_size)


@pytest.mark.parametrize("arch,scale", [(a, s) for a in ARCHS for s in SCALES if s != "tiny"])
def test_parameter_count_within_ten_percent_of_nominal(arch, scale):
    cfg = compose_train(f"model={arch}", f"scale={scale}")
    with torch.device("meta"):
        model = flowhn.build_model(cfg)
    nominal = cfg.scale.nominal_params
    assert abs(model.num_params() / nominal - 1) <= 0.10, f"{model.num_params():,} vs {nominal:,}"


def test_tied_embeddings_share_storage():
    model = build(small_cfg("llama"))
    assert model.lm_head.weight is model.embed_tokens.weight


def test_same_seed_same_model_and_logits():
    cfg = small_cfg("flowhn")
    ids = torch.randint(0, cfg.scale.vocab_size, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(build(cfg, seed=3)(ids), build(cfg, seed=3)(ids), rtol=0, atol=0)
