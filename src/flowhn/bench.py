"""Training-step throughput on the current GPU: ``python -m flowhn.bench scale=1b``.

Each entry is built, warmed up (compile and autotune happen there) and then timed over
``steps`` full training steps (forward, backward, fused AdamW) between two CUDA events, in bf16
autocast with fp32 master weights, in one process, so every row of the table shares the GPU's
state. The peers are timed the same way: HF transformers' Llama at our llama dims (eager and
compiled), HF's Mamba/Mamba-2 (their PyTorch paths here) and mamba-ssm's MambaLMHeadModel when it
is installed. MFU uses our FLOP convention (``flowhn.nn.flops``) for every row; a peer with our
architecture's dims is charged our model's FLOPs per token.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra import compose
from omegaconf import DictConfig, OmegaConf, open_dict

import flowhn
from flowhn.perf.hardware import device_peak_tflops

log = logging.getLogger(__name__)
CONF = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class Row:
    name: str
    status: str = "ok"
    tok_s: float | None = None
    mfu: float | None = None
    step_ms: float | None = None
    mem_gib: float | None = None
    params_m: float | None = None


class LogitsOnly(torch.nn.Module):
    """HF and mamba-ssm models return output objects; the timing loop wants the logits tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids).logits


def train_step_time(model, vocab: int, batch: int, seq_len: int, steps: int, warmup: int) -> tuple[float, float]:
    """(mean ms per step over ``steps`` after ``warmup``, peak GiB): one event pair around all
    timed steps, so no host sync sits inside the timed loop."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq_len + 1), device="cuda", generator=gen)
    inputs, labels = ids[:, :-1], ids[:, 1:]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps, torch.cuda.max_memory_allocated() / 2**30


def train_config(entry: dict, scale: str, seq_len: int) -> DictConfig:
    overrides = [f"model={entry['model']}", f"scale={scale}", f"data.seq_len={seq_len}"]
    overrides += [f"{k}={v}" for k, v in entry.items() if k != "model"]
    return compose("train", overrides=overrides)


def ours(entry: dict, bench: DictConfig):
    cfg = train_config(entry, bench.scale.name, bench.seq_len)
    with open_dict(cfg):
        cfg.model.ssm_backend = entry.get("ssm_backend", "auto")
    with torch.device("cuda"):
        model = flowhn.build_model(cfg)
    name = entry["model"] + (f"/{entry['split']}" if "split" in entry else "")
    return name, model, model.flops_per_token(bench.seq_len), cfg.scale.vocab_size


def hf_llama(bench: DictConfig, compiled: bool):
    import transformers

    cfg = train_config({"model": "llama"}, bench.scale.name, bench.seq_len)
    m = cfg.model
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.scale.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff, num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, rms_norm_eps=m.norm_eps,
        tie_word_embeddings=cfg.scale.tie_embeddings, max_position_embeddings=bench.seq_len, attn_implementation="sdpa",
    )
    with torch.device("cuda"):
        model = LogitsOnly(transformers.LlamaForCausalLM(hf_cfg))
    with torch.device("meta"):
        flops = flowhn.build_model(cfg).flops_per_token(bench.seq_len)
    if compiled:
        model = torch.compile(model)
    return ("hf_llama (compiled)" if compiled else "hf_llama (eager)"), model, flops, cfg.scale.vocab_size


def hf_mamba(bench: DictConfig, version: int):
    import transformers

    arch = "mamba" if version == 1 else "mamba2"
    cfg = train_config({"model": arch}, bench.scale.name, bench.seq_len)
    m = cfg.model
    if version == 1:
        hf_cfg = transformers.MambaConfig(vocab_size=cfg.scale.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                                          state_size=m.d_state, expand=m.expand, conv_kernel=m.d_conv, use_bias=False)
        cls = transformers.MambaForCausalLM
    else:
        hf_cfg = transformers.Mamba2Config(vocab_size=cfg.scale.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                                           state_size=m.d_state, expand=m.expand, head_dim=m.ssm_head_dim,
                                           num_heads=m.expand * m.d_model // m.ssm_head_dim, n_groups=m.ssm_groups,
                                           conv_kernel=m.d_conv, chunk_size=256)
        cls = transformers.Mamba2ForCausalLM
    with torch.device("cuda"):
        model = LogitsOnly(cls(hf_cfg))
    with torch.device("meta"):
        flops = flowhn.build_model(cfg).flops_per_token(bench.seq_len)
    return f"hf_{arch} (torch path)", model, flops, cfg.scale.vocab_size


def mamba_ssm_lm(bench: DictConfig):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    cfg = train_config({"model": "mamba"}, bench.scale.name, bench.seq_len)
    m = cfg.model
    with torch.device("cuda"):
        model = LogitsOnly(MambaLMHeadModel(MambaConfig(d_model=m.d_model, n_layer=m.n_layers, vocab_size=cfg.scale.vocab_size,
                                             ssm_cfg={"layer": "Mamba1"}, tie_embeddings=cfg.scale.tie_embeddings)))
    with torch.device("meta"):
        flops = flowhn.build_model(cfg).flops_per_token(bench.seq_len)
    return "mamba_ssm MambaLMHeadModel", model, flops, cfg.scale.vocab_size


PEERS = {
    "hf_llama": lambda b: hf_llama(b, compiled=False),
    "hf_llama_compiled": lambda b: hf_llama(b, compiled=True),
    "hf_mamba": lambda b: hf_mamba(b, 1),
    "hf_mamba2": lambda b: hf_mamba(b, 2),
    "mamba_ssm": mamba_ssm_lm,
}


def measure(make, bench: DictConfig, peak: float | None, compile_ours: bool) -> Row:
    name = "?"
    try:
        name, model, flops_per_token, vocab = make()
        if compile_ours:
            model = torch.compile(model)
        ms, mem = train_step_time(model, vocab, bench.batch_size, bench.seq_len, bench.steps, bench.warmup)
        tok_s = bench.batch_size * bench.seq_len / (ms / 1e3)
        params = sum(p.numel() for p in model.parameters())
        mfu = tok_s * flops_per_token / (peak * 1e12) if peak else None
        return Row(name, "ok", tok_s, mfu, ms, mem, params / 1e6)
    except torch.OutOfMemoryError:
        return Row(name, "OOM")
    except ImportError as exc:
        return Row(name, f"skipped: {exc}".splitlines()[0][:60])
    except Exception as exc:  # one broken row must not lose the others
        log.exception("%s failed", name)
        return Row(name, f"error: {type(exc).__name__}: {exc}".splitlines()[0][:80])
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def table(rows: list[Row], header: str) -> str:
    fmt = lambda v, f: "—" if v is None else format(v, f)
    lines = [header, "", "| model | tok/s | MFU % | step ms | peak GiB | params M | status |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {fmt(r.tok_s, ',.0f')} | {fmt(None if r.mfu is None else 100 * r.mfu, '.1f')} | "
                     f"{fmt(r.step_ms, '.1f')} | {fmt(r.mem_gib, '.1f')} | {fmt(r.params_m, '.1f')} | {r.status} |")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="bench")
def main(bench: DictConfig) -> None:
    if not torch.cuda.is_available():
        sys.exit("flowhn.bench needs a CUDA GPU")
    gpu = torch.cuda.get_device_name()
    peak = device_peak_tflops("cuda", "bf16-mixed", bench.hardware.peak_tflops)
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for entry in bench.entries:
        entry = OmegaConf.to_container(entry)
        rows.append(measure(lambda: ours(entry, bench), bench, peak, bench.compile))
        log.info("%s", rows[-1])
    for peer in bench.peers:
        rows.append(measure(lambda: PEERS[peer](bench), bench, peak, False))
        log.info("%s", rows[-1])
    header = (f"### {gpu}, scale {bench.scale.name}, batch {bench.batch_size} × seq {bench.seq_len}, bf16 autocast, "
              f"fused AdamW, torch {torch.__version__}, peak {peak} TFLOP/s\n\n"
              f"`python -m flowhn.bench {' '.join(sys.argv[1:])}`")
    text = table(rows, header)
    print(text)
    if bench.output:
        Path(bench.output).parent.mkdir(parents=True, exist_ok=True)
        with open(bench.output, "a") as f:
            f.write(text + "\n\n")
        Path(bench.output).with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
