"""Training-step throughput on the current GPU: ``python -m flowhn.bench scale=1b``.

Each entry is built, warmed up (compile and autotune happen there) and then timed over
``steps`` full training steps (forward, backward, AdamW) between two CUDA events, in bf16
autocast with fp32 master weights, in one process, so every row of the table shares the GPU's
state. As train.py on a GPU (``optim.master_weights``), the Linear weights are stored in bf16 with their
fp32 masters in the optimizer (``flowhn.training.optimizer``) for every row, ours and the peers
(``master_weights=false``: fp32 weights that autocast casts, and torch's fused AdamW). ``isolate=true``
runs each row in a fresh process instead, so that no row inherits what the rows before it compiled
and allocated (at 135M a step is bound by the host, and a row's place in the order has moved its tok/s
by ±10 %). The peers are timed the same way: HF transformers' Llama at our llama dims (eager and
compiled), HF's Mamba/Mamba-2 (their PyTorch paths here) and mamba-ssm's MambaLMHeadModel when it
is installed. MFU uses our FLOP convention (``flowhn.nn.flops``) for every row; a peer with our
architecture's dims is charged our model's FLOPs per token.

``seqlen_ladder=[1024,2048,...]`` times every entry at each length with ``batch_size =
tokens_per_step / seq_len`` (the same tokens per step everywhere) and writes one CSV row per
(model, length) with the FA ratio the model's split used there; see :func:`run_ladder`.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import flowhn
from flowhn.errors import ConfigError
from flowhn.kernels.cross_entropy import fused_loss_impl, linear_cross_entropy
from flowhn.models.lm import checked_residual_dtype, in_residual_dtype
from flowhn.perf.hardware import device_peak_tflops
from flowhn.perf.profile import profile_steps
from flowhn.training.optimizer import MasterWeightAdamW, linear_weights_to_bf16

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
    # ms of the profiled step with any kernel running / step ms: below 1 the GPU idles (the host, syncs)
    gpu_busy: float | None = None
    split_ratio: float | None = None  # attention's share of the tokens (FA ratio; FAC's window width / T)


class LogitsOnly(torch.nn.Module):
    """HF and mamba-ssm models return output objects; the timing loop wants the logits tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids).logits


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def make_train_step(model, vocab: int, batch: int, seq_len: int, compiled, device: str = "cuda",
                    fused: str | None = None, optimizer_in_graph: bool = False, master_weights: bool = False):
    """One training step (forward, loss, backward, fused AdamW) on fixed random tokens. A compiled
    row (``compiled``: True, or its torch.compile mode) compiles its loss too: the fp32 log-softmax
    over the vocabulary is then fused, not eager. ``fused``: our models' fused LM head + loss, as
    train.py runs it on GPU, by implementation (``fused_loss_impl``: ``auto``, ``triton``, ``liger``,
    ``chunked``, ``cce``); None keeps the full logits. ``optimizer_in_graph``: AdamW's step compiled in the row's mode
    too (under reduce-overhead: one more CUDA graph, recorded after the backward's) instead of the fused
    CUDA AdamW launched eagerly. ``master_weights``: the Linear weights stored in bf16 (before the model's first,
    compiling call) and MasterWeightAdamW updating their fp32 masters, as train.py on a GPU. On CPU (tests,
    the ladder's format) the step runs in fp32 without autocast."""
    on_gpu = torch.device(device).type == "cuda"
    mode = compiled if isinstance(compiled, str) else None
    adamw = dict(betas=(0.9, 0.95), weight_decay=0.1)
    if master_weights:
        if not on_gpu or optimizer_in_graph:
            raise ValueError("master_weights: needs a CUDA device (bf16 autocast) and no optimizer_in_graph")
        optimizer = MasterWeightAdamW(model.parameters(), lr=1e-4, masters=linear_weights_to_bf16(model), **adamw)
        optimizer_step = optimizer.step
    elif optimizer_in_graph:
        if not compiled:
            raise ValueError("optimizer_in_graph needs a compiled row (compile: true or blocks)")
        # On the GPU a tensor learning rate and capturable state: the compiled step reads both from device
        # memory, so a graph replay needs no host value and a scheduler would not recompile it.
        lr = torch.tensor(1e-4, device=device) if on_gpu else 1e-4
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, capturable=on_gpu, foreach=True, **adamw)
        optimizer_step = torch.compile(optimizer.step, mode=mode)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=on_gpu, **adamw)
        optimizer_step = optimizer.step
    if fused:
        head_and_loss = torch.compile(linear_cross_entropy, mode=mode) if compiled else linear_cross_entropy

        def forward_loss(inputs, labels):
            return head_and_loss(model(inputs, return_hidden=True), model.lm_head.weight, labels, impl=fused)
    else:
        loss_fn = torch.compile(cross_entropy, mode=mode) if compiled else cross_entropy

        def forward_loss(inputs, labels):
            return loss_fn(model(inputs), labels)
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq_len + 1), device=device, generator=gen)
    inputs, labels = ids[:, :-1], ids[:, 1:]

    def step():
        if mode == "reduce-overhead":  # CUDA graph trees: a new step may reuse the last one's buffers
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=on_gpu):
            loss = forward_loss(inputs, labels)
        loss.backward()
        optimizer_step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step, steps: int, warmup: int, device: str = "cuda") -> tuple[float, float | None]:
    """(mean ms per step over ``steps`` after ``warmup``, peak GiB): one event pair around all
    timed steps, so no host sync sits inside the timed loop. On CPU: wall time, no memory figure.
    The peak is over the warm-up too: a CUDA-graph row allocates its graphs' memory pool while it
    records them in the warm-up, and replays allocate nothing (the peak of the timed steps alone
    missed that pool: 2.0 against 7.4 GiB for fac_split at 135M, train.py's peak)."""
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    if not on_gpu:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) * 1e3 / steps, None
    torch.cuda.synchronize()
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


def bench_master_weights(bench: DictConfig) -> bool:
    """The bench's ``master_weights`` (auto: on for device=cuda), for the rows that set none."""
    setting = bench.get("master_weights", "auto")
    if setting == "auto":
        return bench.get("device", "cuda") == "cuda"
    if not isinstance(setting, bool):
        raise ConfigError(f"master_weights: must be auto, true or false, got {setting!r}")
    if setting and bench.get("device", "cuda") != "cuda":
        raise ConfigError("master_weights: true needs device=cuda (the CPU rows run in fp32, without autocast)")
    return setting


def bench_residual_dtype(bench: DictConfig) -> str:
    """The bench's ``residual_dtype`` (train.yaml's), for our rows that set none and for HF Llama's."""
    return checked_residual_dtype(bench.get("residual_dtype", "fp32"))


def training_label(bench: DictConfig) -> str:
    """How the table's steps train, for its header."""
    label = "bf16 autocast"
    if bench_residual_dtype(bench) == "autocast":
        label += ", bf16 residual stream"
    if bench_master_weights(bench):
        return label + ", bf16 weights with fp32 masters (MasterWeightAdamW)"
    return label + ", fused AdamW"


def compile_mode(entry: dict, bench: DictConfig) -> str | None:
    """The torch.compile mode of an entry (or of a compiled peer: ``{}``): its own, else the bench's
    (auto: the scale's for a whole-model compile on a GPU, as train.py on one GPU; else torch's default)."""
    mode = entry.get("compile_mode", bench.get("compile_mode"))
    if mode == "auto":
        whole = entry.get("compile", bench.compile) is True and bench.get("device", "cuda") == "cuda"
        return bench.scale.get("compile_mode") if whole else None
    return mode


def entry_label(entry: dict, bench: DictConfig) -> str:
    """The row name of an entry: its model, split and other overrides (known before it is built, so
    the ladder can skip rows it measured before), and its compile mode when it is not torch's default."""
    entry = dict(entry)
    mode = compile_mode(entry, bench)
    compiled = entry.pop("compile", bench.compile)
    mode = mode if compiled else None
    entry.pop("compile_mode", None)
    cudnn = bool(entry.pop("cudnn_attention", True))
    extras = [f"{k}={v}" for k, v in entry.items() if k not in ("model", "split")] + ([] if cudnn else ["no cuDNN SDPA"])
    extras += [mode] if mode else []
    name = "/".join([entry["model"]] + ([entry["split"]] if "split" in entry else []) + extras)
    if compiled == "blocks":
        name += " (blocks compiled)"
    elif bench.compile and not compiled:
        name += " (eager)"
    return name


def ours(entry: dict, bench: DictConfig):
    """Our model for one entry: {model, split?, compile?, any other train-config override}."""
    name = entry_label(entry, bench)
    entry = dict(entry)
    mode = compile_mode(entry, bench)  # torch.compile mode, e.g. reduce-overhead (CUDA graphs)
    compiled = entry.pop("compile", bench.compile)  # True (whole model), "blocks", False
    entry.pop("compile_mode", None)
    optimizer_in_graph = bool(entry.pop("optimizer_in_graph", False))  # make_train_step's
    master_weights = entry.pop("master_weights", None)  # make_train_step's; None: the bench's setting
    # cuDNN's fused attention is one of SDPA's backends (PyTorch picks it first on Hopper); an entry
    # can switch it off to compare with the flash kernel. The switch is global: set it per row.
    cudnn = bool(entry.pop("cudnn_attention", True))
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    cfg = train_config({"residual_dtype": bench_residual_dtype(bench), **entry}, bench.scale.name, bench.seq_len)
    with open_dict(cfg):
        cfg.model.ssm_backend = entry.get("ssm_backend", "auto")
    with torch.device(bench.device):
        model = flowhn.build_model(cfg)
    flops = model.flops_per_token(bench.seq_len)
    if compiled:
        model.compile_in_place("blocks" if compiled == "blocks" else "model", mode=mode)
    fused = fused_loss_impl(entry.get("fused_loss", bench.fused_loss), torch.device(bench.device).type)
    options = {"fused": fused, "optimizer_in_graph": optimizer_in_graph}
    if master_weights is not None:
        options["master_weights"] = master_weights
    return name, model, flops, cfg.scale.vocab_size, (mode or True) if compiled else False, options


def hf_llama(bench: DictConfig, compiled: bool):
    import transformers

    cfg = train_config({"model": "llama"}, bench.scale.name, bench.seq_len)
    m = cfg.model
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.scale.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff, num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, rms_norm_eps=m.norm_eps,
        tie_word_embeddings=cfg.scale.tie_embeddings, max_position_embeddings=bench.seq_len, attn_implementation="sdpa",
    )
    with torch.device(bench.device):
        hf_model = transformers.LlamaForCausalLM(hf_cfg)
    residual_dtype = bench_residual_dtype(bench)
    # HF's residual stream is its embedding's output dtype: cast as ours (CausalLM.hidden_states) is.
    hf_model.get_input_embeddings().register_forward_hook(lambda module, args, out: in_residual_dtype(out, residual_dtype))
    model = LogitsOnly(hf_model)
    with torch.device("meta"):
        flops = flowhn.build_model(cfg).flops_per_token(bench.seq_len)
    if not compiled:
        return "hf_llama (eager)", model, flops, cfg.scale.vocab_size, False
    # The same compile mode as our rows (CUDA graphs at 135M), so the ratio compares models, not modes.
    mode = compile_mode({}, bench)
    name = f"hf_llama (compiled{', ' + mode if mode else ''})"
    return name, torch.compile(model, mode=mode), flops, cfg.scale.vocab_size, mode or True


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
    with torch.device(bench.device):
        model = LogitsOnly(cls(hf_cfg))
    with torch.device("meta"):
        flops = flowhn.build_model(cfg).flops_per_token(bench.seq_len)
    return f"hf_{arch} (torch path)", model, flops, cfg.scale.vocab_size, False


def mamba_ssm_lm(bench: DictConfig):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    cfg = train_config({"model": "mamba"}, bench.scale.name, bench.seq_len)
    m = cfg.model
    with torch.device(bench.device):
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


def measure(make, bench: DictConfig, peak: float | None, name: str = "?") -> tuple[Row, str | None]:
    """The row for one model, and its kernel-time breakdown (Markdown) when ``bench.profile``;
    ``name`` labels the row when building the model fails. Whatever the row allocated is freed before
    this returns, so the next row's peak starts from what the process holds without it."""
    try:
        return _timed_row(make, bench, peak, name)
    finally:
        # Here, after _timed_row has returned, nothing references its model, optimizer and step any
        # more; but a compiled model sits in reference cycles that only a collection frees (on CPU a
        # tiny compiled llama stays alive after the row until gc.collect()). Collected inside the row,
        # they lived on until Python's collector next ran, in the middle of the next row: on an H200 a
        # 1B row started with the last one's 3.88 GiB of fp32 weights still allocated, and subtracting
        # them made its peak read low (mamba 51.4 against 55.25 GiB as a process's first row).
        torch.backends.cuda.enable_cudnn_sdp(True)
        # Every row is a new model: drop the compiled code of the last ones, so no row runs into
        # dynamo's recompile limit on CausalLM.forward (the on-disk inductor cache stays).
        torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _timed_row(make, bench: DictConfig, peak: float | None, name: str) -> tuple[Row, str | None]:
    # Memory still allocated before the row (a peer's caches, anything not freed above) is not this
    # row's: subtracted from its peak, and logged.
    carried = torch.cuda.memory_allocated() / 2**30 if torch.device(bench.device).type == "cuda" else 0.0
    try:
        name, model, flops_per_token, vocab, compiled, *options = make()  # peers: no step options
        options = options[0] if options else {}
        # The bench's master weights for rows that set none; a compiled optimizer (optimizer_in_graph) is
        # torch's AdamW on fp32 weights.
        options = {"master_weights": bench_master_weights(bench) and not options.get("optimizer_in_graph")} | options
        step = make_train_step(model, vocab, bench.batch_size, bench.seq_len, compiled, bench.device, **options)
        ms, mem = time_steps(step, bench.steps, bench.warmup, bench.device)
        if mem is not None:
            mem -= carried
            if carried > 0.25:
                log.warning("%s: %.2f GiB was still allocated before the row started; left out of its peak",
                            name, carried)
        tok_s = bench.batch_size * bench.seq_len / (ms / 1e3)
        params = sum(p.numel() for p in model.parameters())
        mfu = tok_s * flops_per_token / (peak * 1e12) if peak else None
        row = Row(name, "ok", tok_s, mfu, ms, mem, params / 1e6, split_ratio=getattr(model, "split_ratio", None))
        if not bench.profile:
            return row, None
        breakdown = profile_steps(step, bench.profile_steps)
        row.gpu_busy = (breakdown.busy_ms if breakdown.busy_ms is not None else breakdown.total_ms) / ms
        return row, breakdown.markdown(name, top=bench.get("profile_top", 8))
    except torch.OutOfMemoryError:
        return Row(name, "OOM"), None
    except ImportError as exc:
        return Row(name, f"skipped: {exc}".splitlines()[0][:60]), None
    except Exception as exc:  # one broken row must not lose the others
        log.exception("%s failed", name)
        return Row(name, f"error: {type(exc).__name__}: {exc}".splitlines()[0][:80]), None


def entry_override(entry: dict) -> str:
    """An entry as a Hydra override value, ``{model: flowhn, split: 'fa_split'}`` (strings quoted)."""
    def value(v):
        if isinstance(v, bool):
            return str(v).lower()
        return "null" if v is None else repr(v) if isinstance(v, str) else str(v)
    return "{" + ", ".join(f"{k}: {value(v)}" for k, v in entry.items()) + "}"


def spec_label(kind: str, spec, bench: DictConfig) -> str:
    """A row's name before its model is built: an entry's label, or the peer's name."""
    return entry_label(spec, bench) if kind == "entry" else spec


# The parent's overrides that a row's own process sets itself.
ISOLATED_KEYS = ("entries", "peers", "isolate", "row_json", "output", "hydra.run.dir")


def measure_in_process(index: int, kind: str, spec, bench: DictConfig, overrides: list[str],
                       rows_dir: Path) -> tuple[Row, str | None]:
    """One row timed in a fresh ``python -m flowhn.bench`` (``isolate=true``) with the parent's
    ``overrides``: nothing compiled, allocated or imported for the rows before it is in the process.
    Its log and row JSON go to ``rows_dir``."""
    rows_dir.mkdir(parents=True, exist_ok=True)
    result, log_file = rows_dir / f"row_{index}.json", rows_dir / f"row_{index}.log"
    result.unlink(missing_ok=True)
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ISOLATED_KEYS]
    cmd = [sys.executable, "-m", "flowhn.bench", *keep, "isolate=false", f"row_json={result}",
           f"hydra.run.dir={rows_dir / f'row_{index}'}",
           f"entries=[{entry_override(spec)}]" if kind == "entry" else "entries=[]",
           f"peers=[{spec}]" if kind == "peer" else "peers=[]"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log_file.write_text(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
    data = json.loads(result.read_text()) if result.exists() else None
    if proc.returncode != 0 or not data or not data["rows"]:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Row(spec_label(kind, spec, bench), f"error: its process exited {proc.returncode}: {last}"[:80]), None
    return Row(**data["rows"][0]), (data["breakdowns"] or [None])[0]


def table(rows: list[Row], header: str) -> str:
    fmt = lambda v, f: "—" if v is None else format(v, f)
    pct = lambda v: None if v is None else 100 * v
    lines = [header, "", "| model | tok/s | MFU % | step ms | GPU busy % | peak GiB | params M | status |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {fmt(r.tok_s, ',.0f')} | {fmt(pct(r.mfu), '.1f')} | {fmt(r.step_ms, '.1f')} | "
                     f"{fmt(pct(r.gpu_busy), '.0f')} | {fmt(r.mem_gib, '.1f')} | {fmt(r.params_m, '.1f')} | {r.status} |")
    return "\n".join(lines)


LADDER_COLUMNS = ("model", "seq_len", "batch_size", "tok_s", "mfu", "fa_ratio", "status")
# Rows a later call does not measure again; any other status (an error) is tried again.
LADDER_DONE = ("ok", "OOM")


def read_ladder_csv(path: Path) -> dict[tuple[str, int], dict]:
    """The rows of a ladder CSV by (model, seq_len); {} when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != LADDER_COLUMNS:
            raise ValueError(f"csv: {path} has columns {reader.fieldnames}, expected {list(LADDER_COLUMNS)}")
        return {(r["model"], int(r["seq_len"])): r for r in reader}


def write_ladder_csv(path: Path, rows: dict[tuple[str, int], dict]) -> None:
    """All rows, sorted by model then length, written to a temporary file and renamed over ``path``,
    so a run killed mid-write leaves the previous file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LADDER_COLUMNS)
        writer.writeheader()
        for key in sorted(rows):
            writer.writerow({c: rows[key].get(c) for c in LADDER_COLUMNS})
    os.replace(tmp, path)


def merge_ladder_csvs(paths: list[Path], out: Path) -> dict[tuple[str, int], dict]:
    """One CSV from several (one per GPU, or an earlier call's): a measured row ("ok"/"OOM") wins
    over a failed one; missing files are skipped."""
    merged: dict[tuple[str, int], dict] = {}
    for path in paths:
        for key, row in read_ladder_csv(path).items():
            if key not in merged or row["status"] in LADDER_DONE:
                merged[key] = row
    write_ladder_csv(out, merged)
    return merged


def ladder_row(row: Row, seq_len: int, batch_size: int) -> dict:
    fmt = lambda v, digits: "" if v is None else f"{v:.{digits}f}"
    return {"model": row.name, "seq_len": seq_len, "batch_size": batch_size, "tok_s": fmt(row.tok_s, 1),
            "mfu": fmt(row.mfu, 4), "fa_ratio": fmt(row.split_ratio, 4), "status": row.status}


def ladder_markdown(rows: dict[tuple[str, int], dict], header: str) -> str:
    """tok/s (MFU %) per model and length, then the FA ratio each split model used per length."""
    lengths = sorted({t for _, t in rows})
    models = list(dict.fromkeys(m for m, _ in sorted(rows)))
    head = "| model | " + " | ".join(f"{t:,}" for t in lengths) + " |"
    rule = "|---|" + "---:|" * len(lengths)

    def cell(r: dict | None) -> str:
        if r is None:
            return "—"
        if r["status"] != "ok":
            return r["status"].split(":")[0]
        mfu = f" ({100 * float(r['mfu']):.1f} %)" if r["mfu"] else ""
        return f"{float(r['tok_s']):,.0f}{mfu}"

    lines = [header, "", "tok/s (MFU %), the same tokens per step at every length:", "", head, rule]
    lines += [f"| {m} | " + " | ".join(cell(rows.get((m, t))) for t in lengths) + " |" for m in models]
    split_models = [m for m in models if any(r["fa_ratio"] for (name, _), r in rows.items() if name == m)]
    if split_models:
        lines += ["", "Attention's share of the tokens (the split's FA ratio) at each length:", "", head, rule]
        lines += [f"| {m} | " + " | ".join((rows.get((m, t)) or {}).get("fa_ratio") or "—" for t in lengths) + " |"
                  for m in split_models]
    return "\n".join(lines)


def run_ladder(bench: DictConfig, peak: float | None, csv_path: Path, started: float | None = None) -> dict:
    """Every entry (and peer) at every ``seqlen_ladder`` length with ``tokens_per_step`` tokens per
    step. Rows already measured in ``csv_path`` are kept and skipped, so a later call fills what is
    missing; the CSV is rewritten after each row, so a call cut short keeps every finished row.
    Lengths run in the ladder's order (every model at its first length, then the next), so a
    ``time_budget_s`` or a kill leaves whole lengths done. Returns the CSV's rows."""
    started = time.monotonic() if started is None else started
    ladder = [int(t) for t in bench.seqlen_ladder]
    per_step = int(bench.tokens_per_step)
    for t in ladder:
        if t <= 0 or per_step % t:
            raise ConfigError(f"tokens_per_step: {per_step} is not a multiple of seq_len {t} of seqlen_ladder")
    rows = read_ladder_csv(csv_path)
    entries = [OmegaConf.to_container(e) for e in bench.entries]
    for seq_len in ladder:
        at_length = bench.copy()
        with open_dict(at_length):
            at_length.seq_len, at_length.batch_size = seq_len, per_step // seq_len
        makers = [(entry_label(e, bench), lambda entry=e, b=at_length: ours(entry, b)) for e in entries]
        makers += [(None, lambda peer=p, b=at_length: PEERS[peer](b)) for p in bench.peers]
        for label, make in makers:
            if label is not None and rows.get((label, seq_len), {}).get("status") in LADDER_DONE:
                log.info("ladder: %s at %d is in %s already", label, seq_len, csv_path)
                continue
            if bench.time_budget_s is not None and time.monotonic() - started > bench.time_budget_s:
                log.warning("ladder: time_budget_s=%s spent; a later call measures the rows left", bench.time_budget_s)
                return rows
            row, _ = measure(make, at_length, peak)
            if row.name == "?" and label is not None:
                row.name = label  # failed before it was named
            rows[(row.name, seq_len)] = ladder_row(row, seq_len, at_length.batch_size)
            write_ladder_csv(csv_path, rows)
            log.info("ladder: %s", rows[(row.name, seq_len)])
    return rows


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="bench")
def main(bench: DictConfig) -> None:
    on_gpu = torch.device(bench.device).type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("flowhn.bench needs a CUDA GPU (device=cpu runs it on the CPU: a check of the output, not a benchmark)")
    bench_residual_dtype(bench)  # a bad value stops here, before any row is built
    started = time.monotonic()
    gpu = torch.cuda.get_device_name() if on_gpu else "CPU"
    peak = device_peak_tflops(bench.device, "bf16-mixed", bench.hardware.peak_tflops)
    torch.backends.cuda.matmul.allow_tf32 = True
    if bench.seqlen_ladder:
        if bench.isolate:
            raise ConfigError("isolate: the seq_len ladder runs its rows in one process; drop isolate=true or seqlen_ladder")
        csv_path = Path(bench.csv) if bench.csv else Path(HydraConfig.get().runtime.output_dir) / "seqlen_ladder.csv"
        rows = run_ladder(bench, peak, csv_path, started)
        header = (f"### {gpu}, scale {bench.scale.name}, {bench.tokens_per_step:,} tokens per step "
                  f"(batch = tokens / seq_len), {training_label(bench)}, torch {torch.__version__}, "
                  f"peak {peak} TFLOP/s\n\n`python -m flowhn.bench {' '.join(sys.argv[1:])}`; CSV: `{csv_path}`")
        text = ladder_markdown(rows, header)
        print(text)
        if bench.output:
            Path(bench.output).parent.mkdir(parents=True, exist_ok=True)
            Path(bench.output).write_text(text + "\n")
        return
    rows, breakdowns = [], []
    specs = [("entry", OmegaConf.to_container(e)) for e in bench.entries] + [("peer", p) for p in bench.peers]
    hydra_cfg = HydraConfig.get()
    for index, (kind, spec) in enumerate(specs):
        if bench.isolate:
            row, breakdown = measure_in_process(index, kind, spec, bench, list(hydra_cfg.overrides.task),
                                                Path(hydra_cfg.runtime.output_dir) / "rows")
        else:
            make = (lambda entry=spec: ours(entry, bench)) if kind == "entry" else (lambda peer=spec: PEERS[peer](bench))
            row, breakdown = measure(make, bench, peak, spec_label(kind, spec, bench))
        rows.append(row)
        breakdowns += [breakdown] if breakdown else []
        log.info("%s%s", row, f"\n{breakdown}" if breakdown else "")  # survives a run cut short
    if bench.row_json:  # a row's own process (isolate=true) hands its row back
        Path(bench.row_json).write_text(json.dumps({"rows": [asdict(r) for r in rows], "breakdowns": breakdowns}))
    header = (f"### {gpu}, scale {bench.scale.name}, batch {bench.batch_size} × seq {bench.seq_len}, "
              f"{training_label(bench)}, torch {torch.__version__}, peak {peak} TFLOP/s"
              f"{', each row in its own process' if bench.isolate else ''}\n\n"
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
    from flowhn.startup import freeze_at_exit

    freeze_at_exit()  # the interpreter's exit without a collection over torch's objects (flowhn/startup.py)
    main()
