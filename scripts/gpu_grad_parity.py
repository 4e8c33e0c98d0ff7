#!/usr/bin/env python
"""A model's loss and every parameter gradient, one batch, by SSM path, against the PyTorch path in float64.

  PYTHONPATH=src python scripts/gpu_grad_parity.py [--batch 4] [--checkpoint RUN.ckpt] [OVERRIDE ...]

The training-parity runs (experiment=kernel_parity) compare whole loss curves, where one wrong gradient is
hidden among seeds' noise; this compares one step's gradients directly, on the model the runs train
(default overrides: ``experiment=kernel_parity split=fac_split``, random tokens at the config's sequence
length). Variants: the PyTorch path in fp32 (how far fp32 rounding alone takes the gradients), the Triton
path with the scan's sub-chunk states kept and not, each in fp32 and under bf16 autocast as training runs it.
``--checkpoint``: the model and weights a training run saved (its config, not the overrides), fed token ids
below its tokenizer's vocabulary: the gradients where training has taken the weights, not at initialisation.
For each: the loss, the largest relative gradient error over the parameters (||g - g64|| / ||g64||) and the
parameters it is worst at. A path whose errors stand far above the fp32 PyTorch row's (in fp32) or above the
other Triton variant's (in bf16) computes some gradient wrongly.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from flowhn import build_model
from flowhn.bench import CONF
from flowhn.evaluate import load_checkpoint_model
from flowhn.nn.ssm import Mamba1Mixer

VARIANTS = [  # name, backend, keep the scan's states, autocast bf16
    ("torch fp32", "torch", False, False),
    ("triton keep fp32", "triton", True, False),
    ("triton keep-off fp32", "triton", False, False),
    ("torch bf16", "torch", False, True),
    ("triton keep bf16", "triton", True, True),
    ("triton keep-off bf16", "triton", False, True),
]


def set_path(model: torch.nn.Module, backend: str, keep: bool) -> int:
    mixers = [m for m in model.modules() if isinstance(m, Mamba1Mixer)]
    for m in mixers:
        m.backend, m.keep_scan_states = backend, keep
    return len(mixers)


def loss_and_grads(model, ids, autocast: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.item(), {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", default=["experiment=kernel_parity", "split=fac_split"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="a Lightning checkpoint of train.py: its model, weights and config")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model, cfg = load_checkpoint_model(Path(args.checkpoint))
        model, vocab, args.overrides = model.cuda(), cfg.data.vocab_size, [args.checkpoint]
    else:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=args.overrides)
        model, vocab = build_model(cfg).cuda(), cfg.scale.vocab_size
    reference = copy.deepcopy(model).double()
    n_mixers = set_path(reference, "torch", False)
    ids = torch.randint(0, vocab, (args.batch, cfg.data.seq_len + 1), device="cuda")
    ref_loss, ref_grads = loss_and_grads(reference, ids, autocast=False)
    del reference
    print(f"{' '.join(args.overrides)}: {n_mixers} Mamba-1 mixers, batch {args.batch} x {cfg.data.seq_len}, "
          f"float64 PyTorch loss {ref_loss:.6f}")
    rows = []
    for name, backend, keep, autocast in VARIANTS:
        set_path(model, backend, keep)
        loss, grads = loss_and_grads(model, ids, autocast)
        errors = {n: ((g - ref_grads[n]).norm() / ref_grads[n].norm().clamp_min(1e-30)).item()
                  for n, g in grads.items()}
        worst = sorted(errors, key=errors.get, reverse=True)[:4]
        rows.append((name, loss, max(errors.values()), sorted(errors.values())[len(errors) // 2], worst, errors))
        print(f"\n{name}: loss {loss:.6f}; worst: " + ", ".join(f"{n} {errors[n]:.2e}" for n in worst))
    print("\n| path | loss - float64 loss | largest relative gradient error | median | worst parameter |")
    print("|---|---:|---:|---:|---|")
    for name, loss, largest, median, worst, _ in rows:
        print(f"| {name} | {loss - ref_loss:+.2e} | {largest:.2e} | {median:.2e} | `{worst[0]}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
