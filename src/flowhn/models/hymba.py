"""Hymba (NVlabs/hymba, arXiv 2411.13676): attention heads and SSM heads in parallel in every
layer on the same tokens, fused by the normalised mean with learned scales; learnable meta
tokens prepended to the sequence; sliding-window attention except in the first, middle and last
layers, which stay global; optional cross-layer KV sharing between consecutive window layers.

Followed from the paper and NVlabs/hymba's description: one input norm shared by both branches
(``shared_branch_norm``), meta tokens visible to every window (attention sinks). Left out: Hymba's
single fused input projection for both branches (ours has one per branch; same function class).
"""

from flowhn.errors import require
from flowhn.models.lm import LayerSpec, build_lm


def global_layers(n_layers: int) -> set[int]:
    return {0, n_layers // 2, n_layers - 1}


def layers(m, seq_len: int) -> list[LayerSpec]:
    n = m.n_layers
    require(m.window is None or m.window > 0, "model.window", f"must be positive, got {m.window}")
    require(m.window is None or m.window < seq_len, "model.window", f"{m.window} is not below data.seq_len={seq_len}: no layer would slide")
    require(m.meta_tokens >= 0, "model.meta_tokens", f"must be >= 0, got {m.meta_tokens}")
    specs = []
    for i in range(n):
        window = None if i in global_layers(n) else m.window
        specs.append(LayerSpec("parallel", window=window))
    if m.kv_share:
        # Pair consecutive window layers: the first computes K/V, the second reuses them.
        specs = list(specs)
        i = 0
        while i + 1 < n:
            if specs[i].window is not None and specs[i + 1].window == specs[i].window:
                specs[i] = LayerSpec("parallel", window=specs[i].window, kv_role="produce")
                specs[i + 1] = LayerSpec("parallel", window=specs[i].window, kv_role="consume")
                i += 2
            else:
                i += 1
    return specs


def build(cfg):
    m = cfg.model
    require(
        not (m.kv_share or m.meta_tokens) or cfg.split.name == "no_split",
        "split", f"{cfg.split.name} cannot combine with Hymba's meta tokens or KV sharing (set split=no_split)",
    )
    return build_lm(cfg, layers(m, cfg.data.seq_len))
