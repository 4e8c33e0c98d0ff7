"""LLaMA: pre-norm RMSNorm, RoPE, grouped-query attention and a SwiGLU MLP in every layer."""

from flowhn.models.lm import LayerSpec, build_lm


def layers(m) -> list[LayerSpec]:
    return [LayerSpec("attention") for _ in range(m.n_layers)]


def build(cfg):
    return build_lm(cfg, layers(cfg.model))
