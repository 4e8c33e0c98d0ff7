"""Mamba-1: a pure stack of selective-scan mixers with no MLP, as state-spaces/mamba's
MambaLMHeadModel (d_intermediate=0)."""

from flowhn.models.lm import LayerSpec, build_lm


def layers(m) -> list[LayerSpec]:
    return [LayerSpec("mamba1", mlp=None) for _ in range(m.n_layers)]


def build(cfg):
    return build_lm(cfg, layers(cfg.model))
