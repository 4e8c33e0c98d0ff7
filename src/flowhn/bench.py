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
from flowhn.perf.profile import profile_steps

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
    gpu_busy: float | None = None  # profiled kernel time / step time: below 1 the host holds the GPU back


class LogitsOnly(torch.nn.Module):
    """HF and mamba-ssm models return output objects; the timing loop wants the logits tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids).logits


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def make_train_step(model, vocab: int, batch: int, seq_len: int, compiled):
    """One training step (forward, loss, backward, fused AdamW) on fixed random tokens. A compiled
    row (``compiled``: True, or its torch.compile mode) compiles its loss too: the fp32 log-softmax
    over the vocabulary is then fused, not eager."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    mode = compiled if isinstance(compiled, str) else None
    loss_fn = torch.compile(cross_entropy, mode=mode) if compiled else cross_entropy
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq_len + 1), device="cuda", generator=gen)
    inputs, labels = ids[:, :-1], ids[:, 1:]

    def step():
        if mode == "reduce-overhead":  # CUDA graph trees: a new step may reuse the last one's buffers
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(inputs)
        loss_fn(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step, steps: int, warmup: int) -> tuple[float, float]:
    """(mean ms per step over ``steps`` after ``warmup``, peak GiB): one event pair around all
    timed steps, so no host sync sits inside the timed loop."""
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
    """Our model for one entry: {model, split?, compile?, any other train-config override}."""
    entry = dict(entry)
    compiled = entry.pop("compile", bench.compile)  # True (whole model), "blocks", False
    mode = entry.pop("compile_mode", None)  # torch.compile mode, e.g. reduce-overhead (CUDA graphs)
    # cuDNN's fused attention is one of SDPA's backends (PyTorch picks it first on Hopper); an entry
    # can switch it off to compare with the flash kernel. The switch is global: set it per row.
    cudnn = bool(entry.pop("cudnn_attention", True))
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    cfg = train_config(entry, bench.scale.name, bench.seq_len)
    with open_dict(cfg):
        cfg.model.ssm_backend = entry.get("ssm_backend", "auto")
    with torch.device("cuda"):
        model = flowhn.build_model(cfg)
    extras = [f"{k}={v}" for k, v in entry.items() if k not in ("model", "split")] + ([] if cudnn else ["no cuDNN SDPA"])
    extras += [mode] if mode else []
    name = "/".join([entry["model"]] + ([entry["split"]] if "split" in entry else []) + extras)
    if compiled == "blocks":
        name += " (blocks compiled)"
    elif bench.compile and not compiled:
        name += " (eager)"
    flops = model.flops_per_token(bench.seq_len)
    if compiled:
        model.compile_in_place("blocks" if compiled == "blocks" else "model", mode=mode)
    return name, model, flops, cfg.scale.vocab_size, (mode or True) if compiled else False


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
    return ("hf_llama (compiled)" if compiled else "hf_llama (eager)"), model, flops, cfg.scale.vocab_size, compiled


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
    return f"hf_{arch} (torch path)", model, flops, cfg.scale.vocab_size, False


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
    return "mamba_ssm MambaLMHeadModel", model, flops, cfg.scale.vocab_size, False


PEERS = {
    "hf_llama": lambda b: hf_llama(b, compiled=False),
    "hf_llama_compiled": lambda b: hf_llama(b, compiled=True),
    "hf_mamba": lambda b: hf_mamba(b, 1),
    "hf_mamba2": lambda b: hf_mamba(b, 2),
    "mamba_ssm": mamba_ssm_lm,
}


def measure(make, bench: DictConfig, peak: float | None) -> tuple[Row, str | None]:
    """The row for one model, and its kernel-time breakdown (Markdown) when ``bench.profile``."""
    name = "?"
    try:
        name, model, flops_per_token, vocab, compiled = make()
        step = make_train_step(model, vocab, bench.batch_size, bench.seq_len, compiled)
        ms, mem = time_steps(step, bench.steps, bench.warmup)
        tok_s = bench.batch_size * bench.seq_len / (ms / 1e3)
        params = sum(p.numel() for p in model.parameters())
        mfu = tok_s * flops_per_token / (peak * 1e12) if peak else None
        row = Row(name, "ok", tok_s, mfu, ms, mem, params / 1e6)
        if not bench.profile:
            return row, None
        breakdown = profile_steps(step, bench.profile_steps)
        row.gpu_busy = breakdown.total_ms / ms
        return row, breakdown.markdown(name)
    except torch.OutOfMemoryError:
        return Row(name, "OOM"), None
    except ImportError as exc:
        return Row(name, f"skipped: {exc}".splitlines()[0][:60]), None
    except Exception as exc:  # one broken row must not lose the others
        log.exception("%s failed", name)
        return Row(name, f"error: {type(exc).__name__}: {exc}".splitlines()[0][:80]), None
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
        gc.collect()
        torch.cuda.empty_cache()


def table(rows: list[Row], header: str) -> str:
    fmt = lambda v, f: "—" if v is None else format(v, f)
    pct = lambda v: None if v is None else 100 * v
    lines = [header, "", "| model | tok/s | MFU % | step ms | GPU busy % | peak GiB | params M | status |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {fmt(r.tok_s, ',.0f')} | {fmt(pct(r.mfu), '.1f')} | {fmt(r.step_ms, '.1f')} | "
                     f"{fmt(pct(r.gpu_busy), '.0f')} | {fmt(r.mem_gib, '.1f')} | {fmt(r.params_m, '.1f')} | {r.status} |")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="bench")
def main(bench: DictConfig) -> None:
    if not torch.cuda.is_available():
        sys.exit("flowhn.bench needs a CUDA GPU")
    gpu = torch.cuda.get_device_name()
    peak = device_peak_tflops("cuda", "bf16-mixed", bench.hardware.peak_tflops)
    torch.backends.cuda.matmul.allow_tf32 = True
    rows, breakdowns = [], []
    makers = [lambda entry=OmegaConf.to_container(e): ours(entry, bench) for e in bench.entries]
    makers += [lambda peer=p: PEERS[peer](bench) for p in bench.peers]
    for make in makers:
        row, breakdown = measure(make, bench, peak)
        rows.append(row)
        breakdowns += [breakdown] if breakdown else []
        log.info("%s%s", row, f"\n{breakdown}" if breakdown else "")  # survives a run cut short
    header = (f"### {gpu}, scale {bench.scale.name}, batch {bench.batch_size} × seq {bench.seq_len}, bf16 autocast, "
              f"fused AdamW, torch {torch.__version__}, peak {peak} TFLOP/s\n\n"
              f"`python -m flowhn.bench {' '.join(sys.argv[1:])}`")
    text = table(rows, header)
    if breakdowns:
        text += "\n\n#### Where the time goes (torch.profiler, kernel time per step)\n\n" + "\n\n".join(breakdowns)
    print(text)
    if bench.output:
        Path(bench.output).parent.mkdir(parents=True, exist_ok=True)
        with open(bench.output, "a") as f:
            f.write(text + "\n\n")
        Path(bench.output).with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
