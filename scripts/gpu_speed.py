"""Issue 14 on one GPU: the fused LM head + cross-entropy candidates and Jamba's MoE dispatch.

    source .whl/install-wheels.sh && python scripts/gpu_speed.py            # ~5 min on one H200
    python scripts/gpu_speed.py --quick                                       # smaller sweep, ~2 min

1. Fused loss, bf16 autocast with fp32 hidden states and weight (as in training), forward + backward
   (the gradients of both), at 16×1024 tokens × (576, 768 → 49,152) and (2048 → 32,000):
   today's path (bf16 logits from the LM head, compiled fp32 cross-entropy), the same eager, liger-kernel's
   fused linear cross-entropy, cut-cross-entropy (exact: filter_eps=None; and its default gradient
   filter, which is not exact), ours chunked (eager; compiled at several chunk sizes). Each against
   a float64 reference: relative error of the loss and of both gradients (norm of the difference over
   the norm). Median ms and the peak memory the step allocates above its inputs.
2. MoE dispatch at Jamba 135M (576 → 1024) and 1B (2048 → 2304), 4 experts, top-2, 16×1024 tokens,
   bf16 autocast, forward + backward: the per-expert loop (today's; eager and compiled with its graph
   breaks), grouped GEMM (eager, compiled fullgraph), dense masked (compiled); error against the loop.

Writes $OUT/gpu_speed.json and $OUT/gpu_speed.log (OUT defaults to ./gpu_speed_out) and prints
the table last. The GPU tests are separate:
    python -m pytest -q -m gpu tests/test_fused_loss.py tests/test_moe.py tests/test_cuda_graphs.py
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowhn.kernels import cross_entropy as ce  # noqa: E402
from flowhn.nn.mlp import MoE  # noqa: E402

OUT = Path(os.environ.get("OUT", "gpu_speed_out"))
DEVICE = "cuda"  # --cpu-smoke: "cpu", tiny shapes, to check this script's flow without a GPU
COMPILE = {}  # --cpu-smoke: the aot_eager backend (no code generation)
ROWS: list[dict] = []
LOG = None


def say(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.write(line + "\n")
    LOG.flush()


def timed(step, iters: int, warmup: int) -> tuple[float, float | None]:
    """(median ms, peak GiB allocated above what was allocated before the timed steps)."""
    for _ in range(warmup):
        step()
    if DEVICE == "cpu":
        times = []
        for _ in range(iters):
            started = time.perf_counter()
            step()
            times.append((time.perf_counter() - started) * 1e3)
        return statistics.median(times), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**30


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------ fused loss

def loss_candidates(chunk_sweep: list[int]) -> dict:
    compiled_ce = torch.compile(lambda logits, y: F.cross_entropy(logits.float(), y, ignore_index=-100), **COMPILE)
    cands = {
        # today's training path: the LM head inside the model graph writes bf16 logits, the loss is
        # its own compiled graph (compile_scope=model)
        "full logits, compiled CE (today)": lambda h, w, y: compiled_ce(F.linear(h, w), y),
        "full logits, eager CE": ce.linear_cross_entropy_reference,
        "ours chunked eager (2^27)": ce.linear_cross_entropy_chunked,
    }
    for elements in chunk_sweep:
        fn = functools.partial(ce.linear_cross_entropy_chunked, chunk_elements=elements)
        cands[f"ours chunked compiled (2^{elements.bit_length() - 1})"] = torch.compile(fn, **COMPILE)
    for impl, label in (("liger", "liger-kernel FLCE"), ("cce", "cut-cross-entropy (filter_eps=None)")):
        problem = ce.import_problem(impl)
        if problem:
            say(f"  {label}: not available ({problem})")
            continue
        cands[label] = getattr(ce, f"linear_cross_entropy_{impl}")
        if impl == "liger":  # its default chunk is small (256 tokens at 135M); a larger one
            cands["liger-kernel FLCE (chunk_mem_const=8)"] = functools.partial(ce.linear_cross_entropy_liger,
                                                                               chunk_mem_const=8)
    if ce.import_problem("cce") is None:
        from cut_cross_entropy import linear_cross_entropy as cce

        cands["cut-cross-entropy (default filter, inexact)"] = (
            lambda h, w, y: cce(h.bfloat16(), w.bfloat16(), y, ignore_index=-100, impl="cce"))
    return cands


def fused_loss_section(shapes, chunk_sweep_first, chunk_sweep_rest, iters, deadline):
    for index, (n, d, vocab) in enumerate(shapes):
        shape = f"{n}x{d}->{vocab}"
        gen = torch.Generator(device=DEVICE).manual_seed(index)
        hidden = torch.randn(n, d, device=DEVICE, generator=gen)
        weight = torch.randn(vocab, d, device=DEVICE, generator=gen) * 0.05
        labels = torch.randint(0, vocab, (n,), device=DEVICE, generator=gen)
        labels[torch.rand(n, device=DEVICE, generator=gen) < 0.05] = -100
        # float64 reference: full logits and autograd
        h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
        ref_loss = F.cross_entropy(h64 @ w64.T, labels, ignore_index=-100)
        ref_gh, ref_gw = torch.autograd.grad(ref_loss, (h64, w64))
        ref_loss = ref_loss.detach()
        del h64, w64
        torch.cuda.empty_cache()
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        torch._dynamo.reset()  # each shape compiles afresh (static shapes, see main)
        cands = loss_candidates(chunk_sweep_first if index == 0 else chunk_sweep_rest)
        for name, fn in cands.items():
            if time.time() > deadline:
                say(f"  {shape} {name}: skipped (time budget)")
                ROWS.append({"section": "fused loss", "shape": shape, "impl": name, "status": "skipped: time budget"})
                continue
            row = {"section": "fused loss", "shape": shape, "impl": name}

            def step():
                with torch.autocast(DEVICE, dtype=torch.bfloat16):
                    loss = fn(h, w, labels)
                return (loss, *torch.autograd.grad(loss, (h, w)))

            try:
                started = time.time()
                loss, gh, gw = step()
                row["first_call_s"] = round(time.time() - started, 1)
                row.update(err_loss=abs(loss.double() - ref_loss).item() / ref_loss.item(),
                           err_grad_hidden=rel(gh, ref_gh), err_grad_weight=rel(gw, ref_gw))
                del loss, gh, gw
                row["ms"], row["peak_gib"] = timed(step, iters, warmup=2)
                row["status"] = "ok"
            except Exception as exc:  # a candidate that fails is a row, not the end of the run
                row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                LOG.write(traceback.format_exc())
            ROWS.append(row)
            say("  " + json.dumps(row))
            torch.cuda.empty_cache()
        del ref_gh, ref_gw, h, w, hidden, weight
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ MoE

def moe_section(shapes, tokens, iters, deadline):
    for name_shape, d, f in shapes:
        shape = f"{name_shape}: {tokens}x{d}, ff {f}, 4 experts top-2"
        torch.manual_seed(0)
        moe = MoE(d, f, 4, 2).to(DEVICE)
        with torch.no_grad():
            for p in moe.parameters():
                p.normal_(0, 0.02)
        x = torch.randn(tokens, d, device=DEVICE, requires_grad=True)
        grad_out = torch.randn(tokens, d, device=DEVICE)

        def run(dispatch, module=moe):
            moe.dispatch = dispatch
            moe.zero_grad(set_to_none=True)
            x.grad = None
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                out = module(x)
            out.backward(grad_out)
            return out.detach(), x.grad

        ref_out, ref_gx = (t.clone() for t in run("loop"))
        compiled = torch.compile(moe, **COMPILE)
        compiled_full = torch.compile(moe, fullgraph=True, **COMPILE)
        cands = {
            "loop eager (today's dispatch)": ("loop", moe),
            "loop compiled (graph breaks)": ("loop", compiled),
            "grouped GEMM eager": ("grouped", moe),
            "grouped GEMM compiled fullgraph": ("grouped", compiled_full),
            "dense masked compiled fullgraph": ("dense", compiled_full),
        }
        for name, (dispatch, module) in cands.items():
            row = {"section": "MoE", "shape": shape, "impl": name}
            if time.time() > deadline:
                row["status"] = "skipped: time budget"
                ROWS.append(row)
                continue
            try:
                started = time.time()
                out, gx = run(dispatch, module)
                row["first_call_s"] = round(time.time() - started, 1)
                row.update(err_out=rel(out, ref_out.double()), err_grad_x=rel(gx, ref_gx.double()))
                row["ms"], row["peak_gib"] = timed(lambda: run(dispatch, module), iters, warmup=2)
                row["status"] = "ok"
            except Exception as exc:
                row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                LOG.write(traceback.format_exc())
            ROWS.append(row)
            say("  " + json.dumps(row))
        del moe, compiled, compiled_full, x, grad_out
        torch._dynamo.reset()
        torch.cuda.empty_cache()


def table() -> str:
    head = "| section | shape | impl | ms | peak GiB | err loss/out | err grad h/x | err grad w | status |"
    lines = [head, "|" + "---|" * 9]
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for r in ROWS:
        lines.append(
            f"| {r['section']} | {r['shape']} | {r['impl']} | {fmt(r.get('ms'), '.2f')} | {fmt(r.get('peak_gib'), '.2f')} "
            f"| {fmt(r.get('err_loss', r.get('err_out')), '.1e')} | {fmt(r.get('err_grad_hidden', r.get('err_grad_x')), '.1e')} "
            f"| {fmt(r.get('err_grad_weight'), '.1e')} | {r.get('status', '')} |")
    return "\n".join(lines)


def main() -> None:
    global LOG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one chunk size, fewer iterations")
    parser.add_argument("--budget-s", type=float, default=330, help="skip what is left after this many seconds")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: loss,moe")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    args = parser.parse_args()
    global DEVICE
    if args.cpu_smoke:
        DEVICE = "cpu"
        COMPILE["backend"] = "aot_eager"
    OUT.mkdir(parents=True, exist_ok=True)
    LOG = open(OUT / "gpu_speed.log", "w")
    started = time.time()
    deadline = started + args.budget_s
    device_name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (smoke run)"
    say(f"{device_name}, torch {torch.__version__}")
    try:
        import triton

        say(f"triton {triton.__version__}")
    except ImportError:
        pass
    # Static shapes as in training (the shapes change between rows here, which would otherwise make
    # dynamo recompile with symbolic sizes), and room for the recompiles of the chunk-size sweep.
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = 64
    iters = 5 if args.quick else 10
    skip = set(filter(None, args.skip.split(",")))
    tokens = 16 * 1024
    loss_shapes = [(tokens, 576, 49152), (tokens, 768, 49152), (tokens, 2048, 32000)]
    sweep = [2**27] if args.quick else [2**26, 2**27, 2**28]
    moe_shapes = [("jamba 135m", 576, 1024), ("jamba 1b", 2048, 2304)]
    if args.cpu_smoke:
        tokens, iters, loss_shapes, sweep, moe_shapes = 96, 1, [(96, 32, 500)], [2**12, 2**14], [("tiny", 32, 64)]
    if "loss" not in skip:
        say("== fused LM head + cross-entropy, bf16 autocast, forward + backward")
        fused_loss_section(loss_shapes, sweep, [2**27], iters, deadline - (0 if "moe" in skip else 90))
    if "moe" not in skip:
        say("== MoE dispatch, bf16 autocast, forward + backward")
        moe_section(moe_shapes, tokens, iters, deadline)
    (OUT / "gpu_speed.json").write_text(json.dumps(
        {"device": device_name, "torch": torch.__version__, "wall_s": time.time() - started, "rows": ROWS}, indent=1))
    say(f"\nwall {time.time() - started:.0f} s; rows in {OUT / 'gpu_speed.json'}\n")
    say(table())


if __name__ == "__main__":
    main()
