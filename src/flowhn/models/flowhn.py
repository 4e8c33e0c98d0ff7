"""FlowHN (arXiv 2505.19472): every block runs attention and an SSM side by side, each on the
tokens the split strategy gives it, fuses them, then applies the MLP."""

from flowhn.models.lm import LayerSpec, build_lm


def layers(m) -> list[LayerSpec]:
    return [LayerSpec("parallel") for _ in range(m.n_layers)]


def build(cfg):
    return build_lm(cfg, layers(cfg.model))
