"""Mamba-2: a pure stack of SSD mixers with no MLP, as state-spaces/mamba's Mamba-2 LM."""

from flowhn.models.lm import LayerSpec, build_lm


def layers(m) -> list[LayerSpec]:
    return [LayerSpec("mamba2", mlp=None) for _ in range(m.n_layers)]


def build(cfg):
    return build_lm(cfg, layers(cfg.model))
