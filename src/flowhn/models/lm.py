"""The causal LM shell and the one block factory that builds every architecture's layer stack.

An architecture is a list of ``LayerSpec``s (what mixer, what MLP, which window) plus its dims;
``build_lm`` turns that into embeddings → blocks → norm → LM head. Architectures differ only in
their layer lists, as in mamba-ssm's ``mixer_seq_simple.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from flowhn.errors import ConfigError, require
from flowhn.nn.attention import Attention, RotaryTables
from flowhn.nn.blocks import ParallelBlock, SequenceContext, SequentialBlock
from flowhn.nn.flops import Flops, linear_flops
from flowhn.nn.fusion import FUSIONS
from flowhn.nn.mlp import DISPATCHES as MOE_DISPATCHES
from flowhn.nn.mlp import MoE, SwiGLU
from flowhn.nn.norm import RMSNorm, autocast_dtype
from flowhn.nn.split import TokenSplit, flop_aware_ratio
from flowhn.nn.ssm import Mamba1Mixer, Mamba2Mixer

MIXERS = ("attention", "mamba1", "mamba2", "parallel")
# The residual stream's dtype (train.yaml's residual_dtype): fp32, as autocast leaves the embedding's output
# and every add on it, or the autocast dtype (bf16 under bf16-mixed), as Megatron-LM holds it by default.
RESIDUAL_DTYPES = ("fp32", "autocast")


def checked_residual_dtype(value) -> str:
    """``value`` when it is one of RESIDUAL_DTYPES, else a ConfigError naming the key."""
    require(value in RESIDUAL_DTYPES, "residual_dtype", f"must be one of {', '.join(RESIDUAL_DTYPES)}, got {value!r}")
    return value


def in_residual_dtype(x: torch.Tensor, residual_dtype: str) -> torch.Tensor:
    """The embedding's output x as the residual stream starts: cast to the autocast dtype when
    ``residual_dtype`` is "autocast" and autocast is on for x's device, else unchanged."""
    dtype = autocast_dtype(x)
    return x.to(dtype) if residual_dtype == "autocast" and dtype is not None else x


@dataclass(frozen=True)
class LayerSpec:
    mixer: str  # one of MIXERS; "parallel" is attention ∥ SSM (model.ssm picks the SSM)
    mlp: str | None = "dense"  # "dense", "moe" or None (pure Mamba stacks have no MLP)
    window: int | None = None  # sliding attention window; None = global
    kv_role: str | None = None  # cross-layer KV sharing: "produce", "consume" or None


class CausalLM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        blocks: list[nn.Module],
        *,
        tie_embeddings: bool,
        norm_eps: float,
        n_meta_tokens: int = 0,
        init_std: float = 0.02,
        split_ratio: float | None = None,
        config: dict | None = None,
        rope_positions: int | None = None,
        residual_dtype: str = "fp32",
    ):
        """``residual_dtype``: one of RESIDUAL_DTYPES (``in_residual_dtype``). ``rope_positions``: the
        sequence length (meta tokens included) to precompute the attention layers' RoPE tables for
        (``RotaryTables``); longer sequences compute theirs in the forward, and so does every sequence with None (``build_lm`` under FLOWHN_ROPE_TABLES=0: the earlier path, kept
        to time both in one GPU call)."""
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        # Hymba's meta tokens: learned vectors prepended to every sequence, visible to all tokens.
        self.meta_tokens = nn.Parameter(torch.randn(n_meta_tokens, d_model) * init_std) if n_meta_tokens else None
        self.layers = nn.ModuleList(blocks)
        self.norm = RMSNorm(d_model, norm_eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.split_ratio, self.residual_dtype = split_ratio, residual_dtype
        self.config = dict(config or {})
        self.compile_scope: str | None = None  # set by compile_in_place; readers pick static shapes then
        self._init_weights(init_std)
        keys = {(m.head_dim, m.rope_theta) for m in self.modules() if isinstance(m, Attention)}
        self.rotary = RotaryTables(keys, rope_positions) if keys and rope_positions else None
        if tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _init_weights(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear) and not getattr(module, "keep_init", False):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)

    @property
    def n_meta_tokens(self) -> int:
        return 0 if self.meta_tokens is None else self.meta_tokens.shape[0]

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (B, T, d) for the input positions (meta tokens dropped)."""
        x = in_residual_dtype(self.embed_tokens(input_ids), self.residual_dtype)
        prefix = self.n_meta_tokens
        if prefix:
            x = torch.cat([self.meta_tokens.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        ctx = SequenceContext(x.shape[1], x.device, n_prefix=prefix, rotary=self.rotary)
        for block in self.layers:
            x = block(x, ctx)
        return self.norm(x[:, prefix:])

    def forward(self, input_ids: torch.Tensor, return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab); with ``return_hidden`` the final-norm hidden states (B, T, d) instead,
        for a fused LM head + loss (``flowhn.kernels.cross_entropy``) that applies ``lm_head.weight``
        itself. Through ``forward`` rather than ``hidden_states`` so that compile_in_place covers it."""
        hidden = self.hidden_states(input_ids)
        return hidden if return_hidden else self.lm_head(hidden)

    def compile_in_place(self, scope: str = "model", **options) -> None:
        """torch.compile without a wrapper module, so parameter names and checkpoints are unchanged.
        ``model``: the whole model as one graph; ``blocks``: each block on its own (shorter compiles,
        but Python runs between the blocks). ``options`` go to ``torch.compile``."""
        if scope == "blocks":
            # A block whose graph depends on its index (FAC's window) compiles once per distinct span
            # (ParallelBlock.compile_region); up to one per block must stay under dynamo's limit.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(self.layers))
        for module in self.layers if scope == "blocks" else [self]:
            getattr(module, "compile_region", module.compile)(**options)
        self.compile_scope = scope

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_breakdown(self, seq_len: int) -> Flops:
        """Forward FLOPs per token by term (see ``flowhn.nn.flops``)."""
        internal = seq_len + self.n_meta_tokens
        blocks = sum((b.flops(internal) for b in self.layers), Flops())
        # Meta tokens are computed but not predicted: their block work is spread over real tokens.
        blocks = blocks * (internal / seq_len)
        return blocks + Flops(matmul=linear_flops(self.lm_head))

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward = 3× forward) per token at ``seq_len``."""
        return 3.0 * self.flops_breakdown(seq_len).total


def make_ssm(m: DictConfig, d_model: int, kind: str | None = None) -> nn.Module:
    kind = kind or m.ssm
    if kind == "mamba1":
        return Mamba1Mixer(
            d_model, d_state=m.d_state, d_conv=m.d_conv, expand=m.expand, dt_rank=m.get("dt_rank"),
            inner_norms=m.get("ssm_inner_norms", False), norm_eps=m.norm_eps, backend=m.ssm_backend,
            remake_scan_inputs=m.get("ssm_remake_scan_inputs", False),
            keep_scan_states=m.get("ssm_keep_scan_states", False),
        )
    if kind == "mamba2":
        return Mamba2Mixer(
            d_model, d_state=m.d_state, d_conv=m.d_conv, expand=m.expand, head_dim=m.ssm_head_dim,
            n_groups=m.ssm_groups, chunk_size=m.ssm_chunk_size, norm_eps=m.norm_eps, backend=m.ssm_backend,
            recompute=m.ssd_recompute,
        )
    raise ConfigError(f"model.ssm: unknown SSM {kind!r}; choose mamba1 or mamba2")


def make_attention(m: DictConfig, d_model: int, spec: LayerSpec) -> Attention:
    return Attention(
        d_model, m.n_heads, m.n_kv_heads, head_dim=m.get("head_dim"), rope_theta=m.rope_theta,
        window=spec.window, kv_role=spec.kv_role,
    )


def make_mlp(m: DictConfig, d_model: int, kind: str | None) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "dense":
        return SwiGLU(d_model, m.d_ff)
    dispatch = m.get("moe_dispatch", "auto")
    require(dispatch in MOE_DISPATCHES, "model.moe_dispatch", f"must be one of {', '.join(MOE_DISPATCHES)}, got {dispatch!r}")
    return MoE(d_model, m.d_ff, m.num_experts, m.top_k, normalize_top_k=m.get("normalize_top_k", False), dispatch=dispatch)


def check_dims(m: DictConfig) -> None:
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "d_state", "d_conv", "expand"):
        value = m.get(key)
        if value is not None:
            require(isinstance(value, int) and value > 0, f"model.{key}", f"must be a positive integer, got {value!r}")
    if m.get("n_heads") is None:
        return
    if m.get("head_dim") is None:
        require(m.d_model % m.n_heads == 0, "model.n_heads", f"{m.n_heads} heads do not divide d_model={m.d_model}")
    require(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads", f"{m.n_kv_heads} KV heads do not divide n_heads={m.n_heads}")


def resolve_split(cfg: DictConfig, m: DictConfig, parallel: bool) -> TokenSplit:
    """The split strategy with its ratio: the explicit ``split.ratio``, or FLOP-aware."""
    strategy, ratio = cfg.split.name, cfg.split.get("ratio")
    if not parallel:
        require(strategy == "no_split", "split", f"{strategy} needs parallel branches; model={m.name} has none (use split=no_split)")
        return TokenSplit("no_split")
    if strategy in ("fa_split", "fac_split") and ratio is None:
        # Per-token branch FLOPs at this run's width, state size and seq_len, measured on meta
        # modules so nothing is allocated.
        with torch.device("meta"):
            attn = make_attention(m, m.d_model, LayerSpec("attention")).flops(cfg.data.seq_len).total
            ssm = make_ssm(m, m.d_model).flops(cfg.data.seq_len).total
        ratio = flop_aware_ratio(attn, ssm)
    elif strategy == "ae_split":
        ratio = 0.5
    split = TokenSplit(strategy, ratio)
    split.check(m.n_layers, cfg.data.seq_len + m.get("meta_tokens", 0))
    return split


def build_lm(cfg: DictConfig, specs: list[LayerSpec]) -> CausalLM:
    """Turn an architecture's layer list into a model, validating every dim first."""
    m = cfg.model
    check_dims(m)
    require(cfg.data.seq_len > 0, "data.seq_len", f"must be positive, got {cfg.data.seq_len}")
    vocab = cfg.scale.vocab_size
    require(isinstance(vocab, int) and vocab > 0, "scale.vocab_size", f"must be a positive integer, got {vocab!r}")
    residual_dtype = checked_residual_dtype(cfg.get("residual_dtype", "fp32"))
    for spec in specs:
        require(spec.mixer in MIXERS, "model", f"unknown mixer {spec.mixer!r}")
    parallel = any(s.mixer == "parallel" for s in specs)
    split = resolve_split(cfg, m, parallel)
    fusion_name = cfg.fusion.name
    if parallel:
        require(fusion_name in FUSIONS, "fusion.name", f"unknown fusion {fusion_name!r}; choose one of {', '.join(FUSIONS)}")
    d = m.d_model
    blocks: list[nn.Module] = []
    for layer, spec in enumerate(specs):
        mlp = make_mlp(m, d, spec.mlp)
        if spec.mixer == "parallel":
            blocks.append(
                ParallelBlock(
                    d, make_attention(m, d, spec), make_ssm(m, d), FUSIONS[fusion_name](d, m.norm_eps), mlp,
                    split, layer, m.norm_eps, shared_norm=m.get("shared_branch_norm", False),
                    branch_streams=m.get("branch_streams", False),
                )
            )
        elif spec.mixer == "attention":
            blocks.append(SequentialBlock(d, make_attention(m, d, spec), mlp, m.norm_eps))
        else:
            blocks.append(SequentialBlock(d, make_ssm(m, d, spec.mixer), mlp, m.norm_eps))
    config = {
        "arch": m.name, "scale": cfg.scale.name, "vocab_size": vocab, "seq_len": cfg.data.seq_len,
        "split": split.strategy if parallel else None, "fusion": fusion_name if parallel else None,
        "layout": [s.mixer for s in specs], "mlp": [s.mlp for s in specs],
    }
    tables = os.environ.get("FLOWHN_ROPE_TABLES") != "0"  # "0": RoPE tables in the forward, as before
    model = CausalLM(
        vocab, d, blocks, tie_embeddings=cfg.scale.tie_embeddings, norm_eps=m.norm_eps,
        n_meta_tokens=m.get("meta_tokens", 0), init_std=m.get("init_std", 0.02),
        split_ratio=split.ratio if parallel and split.strategy != "no_split" else None, config=config,
        rope_positions=cfg.data.seq_len + m.get("meta_tokens", 0) if tables else None, residual_dtype=residual_dtype,
    )
    set_lean_activations(model, cfg.scale.get("lean_activations", False))
    return model


def set_lean_activations(model: nn.Module, lean: bool) -> None:
    """scale.lean_activations: every RMSNorm without a gate rounds x̂ to the autocast dtype before its weight
    and keeps that for its backward (not its fp32 input), and every SwiGLU recomputes silu(gate)·up in the
    backward; see conf/scale/*.yaml for what it saves and costs. (Mamba's remade scan inputs follow the same
    key through conf/model/mamba.yaml.)"""
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.keep_normalized = bool(lean)
        elif isinstance(module, SwiGLU):
            module.recompute_product = bool(lean)
