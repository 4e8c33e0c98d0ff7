"""SHM, the sequential hybrid the paper compares against: attention and SSM layers alternating in
one stack, each with its own MLP. ``layout`` is a pattern repeated over the depth: "M" an SSM
layer (``model.ssm``), "A" an attention layer; the paper's code uses "MA"."""

from flowhn.errors import require
from flowhn.models.lm import LayerSpec, build_lm


def layers(m) -> list[LayerSpec]:
    pattern = str(m.layout)
    require(len(pattern) > 0 and set(pattern) <= {"A", "M"}, "model.layout", f"must be a non-empty string of 'A' and 'M', got {pattern!r}")
    require(len(pattern) <= m.n_layers, "model.layout", f"pattern {pattern!r} is longer than n_layers={m.n_layers}")
    return [LayerSpec("attention" if pattern[i % len(pattern)] == "A" else m.ssm) for i in range(m.n_layers)]


def build(cfg):
    return build_lm(cfg, layers(cfg.model))
