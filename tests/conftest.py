import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ARCHS = ("flowhn", "llama", "mamba", "mamba2", "jamba", "shm", "hymba")
SPLITS = ("no_split", "ae_split", "fa_split", "fac_split")
FUSIONS = ("concat_proj", "mean", "norm_mean", "gated")
SCALES = ("tiny", "135m", "350m", "1b")


def compose_train(*overrides: str):
    """The train config exactly as ``python train.py <overrides>`` composes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=False)


def small_cfg(arch: str, *overrides: str, seq_len: int = 24):
    """A tiny config with a short sequence, small enough for exhaustive CPU tests."""
    if arch == "hymba" and not any(o.startswith("model.window=") for o in overrides):
        overrides = ("model.window=8", *overrides)  # the tiny default window exceeds these short sequences
    cfg = compose_train(f"model={arch}", "scale=tiny", f"data.seq_len={seq_len}", *overrides)
    with open_dict(cfg):
        cfg.model.ssm_backend = "torch"
    return cfg


def hf_jamba_moe_like(ours):
    """HF transformers' JambaSparseMoeBlock (eval) holding the router and expert weights of our ``MoE``:
    the reference our dispatches are compared with."""
    import transformers
    from transformers.models.jamba.modeling_jamba import JambaSparseMoeBlock

    d, f = ours.router.in_features, ours.experts[0].gate_proj.out_features
    config = transformers.JambaConfig(hidden_size=d, intermediate_size=f, num_experts=len(ours.experts),
                                      num_experts_per_tok=ours.top_k)
    hf = JambaSparseMoeBlock(config).eval()
    with torch.no_grad():
        hf.router.weight.copy_(ours.router.weight)
        for i, expert in enumerate(ours.experts):
            hf.experts.gate_up_proj[i].copy_(torch.cat([expert.gate_proj.weight, expert.up_proj.weight]))
            hf.experts.down_proj[i].copy_(expert.down_proj.weight)
    return hf


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
