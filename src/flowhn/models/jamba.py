"""Jamba: Mamba layers with one attention layer per ``attn_period`` (at ``attn_offset``), and a
mixture-of-experts MLP every ``expert_period`` layers (at ``expert_offset``): HF JambaConfig's
layers_block_type / layers_num_experts rules. ``num_experts=1`` makes every MLP dense."""

from flowhn.errors import require
from flowhn.models.lm import LayerSpec, build_lm


def layers(m) -> list[LayerSpec]:
    require(m.attn_period <= m.n_layers, "model.attn_period", f"{m.attn_period} is larger than n_layers={m.n_layers}: no attention layer")
    require(0 <= m.attn_offset < m.attn_period, "model.attn_offset", f"must lie in [0, attn_period={m.attn_period}), got {m.attn_offset}")
    require(0 <= m.expert_offset < m.expert_period, "model.expert_offset", f"must lie in [0, expert_period={m.expert_period}), got {m.expert_offset}")
    require(m.num_experts >= 1, "model.num_experts", f"must be at least 1, got {m.num_experts}")
    require(m.num_experts >= m.top_k >= 1, "model.top_k", f"must lie in [1, num_experts={m.num_experts}], got {m.top_k}")
    return [
        LayerSpec(
            "attention" if i % m.attn_period == m.attn_offset else m.ssm,
            mlp="moe" if m.num_experts > 1 and i % m.expert_period == m.expert_offset else "dense",
        )
        for i in range(m.n_layers)
    ]


def build(cfg):
    return build_lm(cfg, layers(cfg.model))
