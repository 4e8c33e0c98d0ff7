#!/usr/bin/env python
"""What bf16 autocast's weight casts cost a training step: the forward and backward with the Linear
weights kept in fp32 (autocast casts each to bf16 in the forward, again in the backward, and the bf16
weight gradient back up to fp32) against the same model with those weights stored in bf16.

  PYTHONPATH=src python scripts/gpu_weight_casts.py [--scale 1b] [SPEC ...]

A SPEC is ``model[/split][:compile_mode]`` as in gpu_host_profile.py (default: llama and flowhn/fac_split),
built and compiled as ``python -m flowhn.bench`` builds it (``ours``: whole-model compile, fused LM head +
loss). For each:

1. The bench's full training step (forward, loss, backward, fused AdamW), CUDA events over ``--steps``.
2. Forward + loss + backward only (gradients dropped, no optimizer), fp32 Linear weights.
3. The same with every nn.Linear weight but the tied embedding's converted to bf16 in place and the
   model traced again: the step without the casts, an upper bound on what a bf16 copy of the
   weights kept beside fp32 master weights in the optimizer could save.

2 and 3 are profiled for a step each (kernel time by category). The numbers in 3 are not a training
setting: nothing updates fp32 master weights here. Details to $OUT/weight_casts.log; a table last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from gpu_host_profile import parse_spec  # this folder, sys.path[0] when a script here runs

from flowhn.bench import CONF, make_train_step, ours, time_steps
from flowhn.kernels.cross_entropy import linear_cross_entropy
from flowhn.kernels.testing import ScriptLog
from flowhn.perf.profile import profile_steps

log = ScriptLog()


def forward_backward(model, vocab: int, batch: int, seq_len: int, fused: str, mode):
    """The bench step without its optimizer: forward and fused head + loss under bf16 autocast, backward,
    gradients dropped."""
    head_and_loss = torch.compile(linear_cross_entropy, mode=mode)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq_len + 1), device="cuda", generator=gen)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    params = list(model.parameters())

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = head_and_loss(model(inputs, return_hidden=True), model.lm_head.weight, labels, impl=fused)
        loss.backward()
        for p in params:
            p.grad = None

    return step


def linear_weights_to_bf16(model) -> int:
    """Every nn.Linear weight but the one tied to the embedding (which autocast leaves in fp32 for the
    lookup) converted to bf16 in place; returns how many parameters that covers."""
    tied = model.embed_tokens.weight if hasattr(model, "embed_tokens") else None
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not tied and module.weight.dtype == torch.float32:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            count += module.weight.numel()
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", default=["llama", "flowhn/fac_split"])
    parser.add_argument("--scale", default="1b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    out_dir = Path(os.environ.get("OUT", "."))
    log.open(out_dir / "weight_casts.log")
    bench = OmegaConf.create({"scale": {"name": args.scale}, "seq_len": 1024, "batch_size": 16,
                              "compile": True, "fused_loss": "auto", "device": "cuda"})
    log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  scale {args.scale}  16 x 1024")
    rows = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for spec in args.specs:
            started = time.time()
            name, model, _, vocab, compiled, options = ours(parse_spec(spec), bench)
            mode = compiled if isinstance(compiled, str) else None
            full_ms, _ = time_steps(make_train_step(model, vocab, 16, 1024, compiled, "cuda", **options),
                                    args.steps, args.warmup)
            fwd_bwd = forward_backward(model, vocab, 16, 1024, options["fused"], mode)
            fp32_ms, fp32_peak = time_steps(fwd_bwd, args.steps, args.warmup)
            fp32 = profile_steps(fwd_bwd, 1)
            log(f"{spec}: full step {full_ms:.1f} ms, forward+backward {fp32_ms:.1f} ms with fp32 Linear weights")
            converted = linear_weights_to_bf16(model)
            # Dynamo does not see a parameter's dtype change through .data (the compiled backward went on
            # casting them as fp32: an illegal access), so the model and the loss are traced again.
            torch._dynamo.reset()
            bf16_ms, bf16_peak = time_steps(fwd_bwd, args.steps, args.warmup)
            bf16 = profile_steps(fwd_bwd, 1)
            log(f"\n=== {spec} ({name}): full step {full_ms:.1f} ms; forward+backward {fp32_ms:.1f} ms fp32 weights, "
                f"{bf16_ms:.1f} ms with {converted / 1e6:.1f} M Linear weights in bf16; {time.time() - started:.0f} s")
            log(fp32.markdown(f"{spec}, fp32 Linear weights (forward + backward)", top=25))
            log(bf16.markdown(f"{spec}, bf16 Linear weights (forward + backward)", top=25))
            rows.append((spec, full_ms, fp32_ms, bf16_ms, fp32.by_category.get("copy/cast", 0.0),
                         bf16.by_category.get("copy/cast", 0.0), fp32.total_ms, bf16.total_ms, fp32_peak, bf16_peak))
            del model, fwd_bwd
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    log("\n| spec | full step ms | fwd+bwd ms, fp32 weights | fwd+bwd ms, bf16 weights | saved ms | copy/cast ms fp32 → bf16 "
        "| kernel ms fp32 → bf16 | peak GiB fp32 → bf16 |")
    log("|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec, full, a, b, ca, cb, ka, kb, pa, pb in rows:
        log(f"| {spec} | {full:.1f} | {a:.1f} | {b:.1f} | {a - b:.1f} | {ca:.2f} → {cb:.2f} | {ka:.1f} → {kb:.1f} "
            f"| {pa:.1f} → {pb:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
