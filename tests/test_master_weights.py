"""bf16 weights with fp32 master copies in the optimizer (optim.master_weights; flowhn.training.optimizer and
flowhn.kernels.adamw): the update is torch's AdamW, the bf16 weights are the masters' rounding, training takes
the steps autocast's casts of fp32 weights take, checkpoints hold fp32 weights and resume exactly either way,
and DDP averages the bf16 gradients in fp32."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import compose_train, run_in_triton_interpreter
from test_reliability import MAX_STEPS, metric, train_cfg

from flowhn.errors import ConfigError
from flowhn.training.checks import resolve_trainer_settings
from flowhn.training.optimizer import MasterWeightAdamW, linear_weights_to_bf16
from flowhn.training.run import run

ADAMW = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)


def two_layer_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(37, 53), torch.nn.LayerNorm(53), torch.nn.Linear(53, 11, bias=False))


def groups(model: torch.nn.Module) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim == 2]
    return [{"params": decay, "weight_decay": 0.1}, {"params": [p for p in model.parameters() if p.ndim < 2],
                                                       "weight_decay": 0.0}]


def bf16_gradients(model: torch.nn.Module, step: int) -> list[torch.Tensor]:
    """Gradients with bf16 values, as a bf16 weight's (and autocast's fp32 weight's) are."""
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen).bfloat16() for p in model.parameters()]


def test_fp32_parameters_take_torch_adamws_steps():
    ours, theirs = two_layer_model(), two_layer_model()
    optimizer = MasterWeightAdamW(groups(ours), **ADAMW)
    reference = torch.optim.AdamW(groups(theirs), **ADAMW, foreach=False)
    for step in range(5):
        for p, q, g in zip(ours.parameters(), theirs.parameters(), bf16_gradients(ours, step)):
            p.grad, q.grad = g.float() * 0.1, g.float() * 0.1
        optimizer.step()
        reference.step()
    assert not any("master" in s for s in optimizer.state.values())
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    state, their_state = optimizer.state[ours[0].weight], reference.state[theirs[0].weight]
    torch.testing.assert_close(state["exp_avg_sq"], their_state["exp_avg_sq"], rtol=1e-6, atol=0)
    assert state["step"].item() == their_state["step"].item() == 5


def test_bf16_weights_are_their_masters_rounding_and_the_masters_take_the_fp32_weights_steps():
    fp32, bf16 = two_layer_model(), two_layer_model()
    masters = linear_weights_to_bf16(bf16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16, torch.float32}
    assert all(m.dtype == torch.float32 for m in masters.values()) and len(masters) == 2
    torch.testing.assert_close(masters[bf16[0].weight], fp32[0].weight.detach(), rtol=0, atol=0)  # the fp32 start
    optimizer = MasterWeightAdamW(groups(bf16), **ADAMW, masters=masters)
    reference = torch.optim.AdamW(groups(fp32), **ADAMW, fused=True)
    for step in range(6):
        for p, q, g in zip(bf16.parameters(), fp32.parameters(), bf16_gradients(bf16, step)):
            p.grad, q.grad = g.to(p.dtype), g.float()
        optimizer.step()
        reference.step()
        for p, q in zip(bf16.parameters(), fp32.parameters()):
            master = optimizer.state[p].get("master", p)
            torch.testing.assert_close(master, q.detach(), rtol=1e-6, atol=1e-7)
            if p.dtype == torch.bfloat16:
                assert torch.equal(p, master.bfloat16()), "a bf16 weight is its master rounded to nearest"


@pytest.mark.parametrize("tied", [True, False])
def test_the_lm_head_the_embedding_and_every_non_linear_weight_stay_fp32(tied):
    from conftest import small_cfg

    from flowhn import build_model

    model = build_model(small_cfg("llama", f"scale.tie_embeddings={str(tied).lower()}"))
    masters = linear_weights_to_bf16(model)
    assert (model.lm_head.weight is model.embed_tokens.weight) == tied
    assert model.lm_head.weight.dtype == model.embed_tokens.weight.dtype == torch.float32
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert linears and all(w.dtype == torch.bfloat16 for w in linears) and len(masters) == len(linears)
    others = [p for p in model.parameters() if all(p is not w for w in linears)]
    assert others and all(p.dtype == torch.float32 for p in others)


def test_a_step_with_found_inf_changes_nothing_and_the_multiplier_scales_the_gradients():
    model = two_layer_model()
    masters = linear_weights_to_bf16(model)
    optimizer = MasterWeightAdamW(groups(model), **ADAMW, masters=masters)
    for p, g in zip(model.parameters(), bf16_gradients(model, 0)):
        p.grad = g.to(p.dtype)
    before = copy.deepcopy(optimizer.state_dict()), [p.detach().clone() for p in model.parameters()]
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.step()
    assert optimizer.found_inf is None  # set for one step only
    for p, q in zip(model.parameters(), before[1]):
        assert torch.equal(p, q)
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, before[0]["state"][i][key]), key  # the step count too

    halved = copy.deepcopy(model)
    other = MasterWeightAdamW(groups(halved), **ADAMW, masters={q: optimizer.state[p]["master"].clone()
                                                                 for p, q in zip(model.parameters(), halved.parameters())
                                                                 if "master" in optimizer.state[p]})
    for p, q in zip(model.parameters(), halved.parameters()):
        q.grad = (p.grad.float() * 0.5).to(p.dtype)  # exact: halving is exact in bf16
    optimizer.grad_multiplier = torch.tensor(0.5)
    optimizer.step()
    other.step()
    for p, q in zip(model.parameters(), halved.parameters()):
        torch.testing.assert_close(optimizer.state[p].get("master", p), other.state[q].get("master", q), rtol=0, atol=0)


def test_clip_grad_norm_gives_torchs_coefficient_to_the_next_step():
    model = two_layer_model()
    optimizer = MasterWeightAdamW(groups(model), **ADAMW, masters=linear_weights_to_bf16(model))
    grads = bf16_gradients(model, 3)
    for p, g in zip(model.parameters(), grads):
        p.grad = g.to(p.dtype)
    total = optimizer.clip_grad_norm_(1.0)
    copies = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for q, g in zip(copies, grads):
        q.grad = g.float()
    want = torch.nn.utils.clip_grad_norm_(copies, 1.0, foreach=True)  # what a run without master weights does
    assert want > 1.0  # so the coefficient clips
    torch.testing.assert_close(total, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(copies[0].grad, grads[0].float() * optimizer.grad_multiplier, rtol=1e-6, atol=0)
    assert all(torch.equal(p.grad, g.to(p.dtype)) for p, g in zip(model.parameters(), grads))  # untouched


def test_the_state_dict_keeps_the_moments_and_masters_of_bf16_weights_in_fp32():
    model = two_layer_model()
    optimizer = MasterWeightAdamW(groups(model), **ADAMW, masters=linear_weights_to_bf16(model))
    for step in range(2):
        for p, g in zip(model.parameters(), bf16_gradients(model, step)):
            p.grad = g.to(p.dtype)
        optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    fresh = MasterWeightAdamW(groups(model), **ADAMW)  # masters from the bf16 weights: not the saved ones
    fresh.load_state_dict(saved)
    for p in model.parameters():
        for key, value in optimizer.state[p].items():
            assert fresh.state[p][key].dtype == torch.float32 and torch.equal(fresh.state[p][key], value), key
    assert "master" in fresh.state[model[0].weight]


KERNEL_SCRIPT = r"""
import torch
from flowhn.kernels.adamw import adamw_step_
torch.manual_seed(0)
lr, b1, b2, eps, wd = 3e-3, 0.9, 0.95, 1e-8, 0.1
worst = {"master": 0.0, "moments": 0.0, "param_ulps": 0}
for n in (1000, 2 * 4096 + 37):  # one program partly masked; three, the last partly masked
    for master_on in (True, False):
        for multiplier, skip in ((None, None), (torch.tensor(0.7), torch.tensor(0.0)), (None, torch.tensor(1.0))):
            w = torch.randn(n)
            p = w.bfloat16() if master_on else w.clone()
            master = w.clone() if master_on else None
            g = torch.randn(n).to(p.dtype)
            m, v, step = torch.randn(n) * 0.1, torch.rand(n) * 0.01, torch.tensor(4.0)
            p0, m0, v0, w0 = p.clone(), m.clone(), v.clone(), w.clone()
            adamw_step_(p, g, master, m, v, step, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
                        grad_multiplier=multiplier, found_inf=skip)
            if skip is not None and skip.item():
                assert torch.equal(p, p0) and torch.equal(m, m0) and torch.equal(v, v0)
                assert master is None or torch.equal(master, w0)
                continue
            # float64 reference from the same inputs
            gd = g.double() * (1.0 if multiplier is None else multiplier.double())
            md = m0.double() + (1 - b1) * (gd - m0.double())
            vd = b2 * v0.double() + (1 - b2) * gd * gd
            wd64 = w0.double() * (1 - lr * wd) - lr / (1 - b1**4) * md / (vd.sqrt() / (1 - b2**4) ** 0.5 + eps)
            if not master_on:
                wd64 = p0.double() * (1 - lr * wd) - lr / (1 - b1**4) * md / (vd.sqrt() / (1 - b2**4) ** 0.5 + eps)
            got = master if master_on else p
            worst["master"] = max(worst["master"], ((got.double() - wd64).abs() / (wd64.abs() + 1e-3)).max().item())
            worst["moments"] = max(worst["moments"], ((m.double() - md).abs().max() + (v.double() - vd).abs().max()).item())
            if master_on:  # the bf16 weight is the master rounded (the interpreter truncates: one unit at most)
                ulps = (p.float().view(torch.int32) - master.bfloat16().float().view(torch.int32)).abs() >> 16
                worst["param_ulps"] = max(worst["param_ulps"], int(ulps.max()))
print(worst)
"""


def test_the_triton_kernel_matches_float64_in_the_interpreter():
    out = run_in_triton_interpreter(KERNEL_SCRIPT)
    worst = eval(out.strip().splitlines()[-1])
    assert worst["master"] < 1e-5 and worst["moments"] < 1e-6 and worst["param_ulps"] <= 1, worst


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_triton_kernel_matches_float64_on_the_gpu():
    from flowhn.kernels.triton_adamw import adamw_step_triton

    torch.manual_seed(0)
    lr, b1, b2, eps, wd = 3e-3, 0.9, 0.95, 1e-8, 0.1
    for n in (1000, 2 * 4096 + 37, 5_000_011):
        for master_on in (True, False):
            w = torch.randn(n, device="cuda")
            p = w.bfloat16() if master_on else w.clone()
            master = w.clone() if master_on else None
            g = torch.randn(n, device="cuda").to(p.dtype)
            m, v = torch.randn(n, device="cuda") * 0.1, torch.rand(n, device="cuda") * 0.01
            step, multiplier = torch.tensor(7.0, device="cuda"), torch.tensor(0.6, device="cuda")
            m0, v0, w0 = m.double(), v.double(), w.double()
            adamw_step_triton(p, g, master, m, v, step, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
                              grad_multiplier=multiplier, found_inf=torch.tensor(0.0, device="cuda"))
            # float64 from the constants as the kernel holds them (fp32: 1 - 0.9 is 0.10000002 there)
            lr_, b1_, b2_, eps_, wd_, scale = (float(torch.tensor(x, dtype=torch.float32))
                                               for x in (lr, b1, b2, eps, wd, 0.6))
            gd = g.double() * scale
            md = m0 + (1 - b1_) * (gd - m0)
            vd = b2_ * v0 + (1 - b2_) * gd * gd
            want = w0 * (1 - lr_ * wd_) - lr_ / (1 - b1_**7) * md / (vd.sqrt() / (1 - b2_**7) ** 0.5 + eps_)
            got = master if master_on else p
            torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-7)
            # fp32 rounding of terms ~0.1 (m) and ~0.01 (v), where they cancel too
            torch.testing.assert_close(m.double(), md, rtol=1e-6, atol=2e-8)
            torch.testing.assert_close(v.double(), vd, rtol=1e-6, atol=2e-9)
            if master_on:
                assert torch.equal(p, master.bfloat16()), "the bf16 weight is its master rounded to nearest even"


def test_master_weights_setting_is_checked():
    def resolved(*overrides):
        cfg = compose_train("trainer.accelerator=cpu", *overrides)
        resolve_trainer_settings(cfg)
        return cfg.optim.master_weights

    assert resolved() is False  # auto: off on CPU (32-true)
    assert resolved("trainer.precision=bf16-mixed", "optim.master_weights=true") is True
    with pytest.raises(ConfigError, match="optim.master_weights.*trainer.precision is 32-true"):
        resolved("optim.master_weights=true")
    with pytest.raises(ConfigError, match="optim.master_weights.*accumulate_grad_batches"):
        resolved("trainer.precision=bf16-mixed", "optim.master_weights=true", "trainer.accumulate_grad_batches=2")
    with pytest.raises(ConfigError, match="optim.master_weights: must be auto, true or false"):
        resolved("optim.master_weights=1")


BF16 = ("trainer.precision=bf16-mixed",)


@pytest.fixture(scope="module")
def master_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("master")
    summary = run(train_cfg(run_dir, *BF16, "optim.master_weights=true"), run_dir)
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    return run_dir


def test_training_with_master_weights_takes_autocasts_steps(master_run, tmp_path):
    summary = run(train_cfg(tmp_path, *BF16, "optim.master_weights=false"), tmp_path)
    assert summary["status"] == "completed"
    ours, theirs = metric(master_run), metric(tmp_path)
    assert sorted(ours) == sorted(theirs) == list(range(MAX_STEPS))
    worst = max(abs(ours[s] - theirs[s]) for s in ours)
    assert worst < 1e-3, f"losses differ by up to {worst}: {ours} vs {theirs}"


def test_the_checkpoint_holds_fp32_weights_without_masters_and_resumes_exactly(master_run, tmp_path):
    ckpt = torch.load(master_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    weights = [k for k in ckpt["state_dict"] if k.endswith(".weight")]
    assert weights and all(ckpt["state_dict"][k].dtype == torch.float32 for k in weights)
    assert not any("master" in s for s in ckpt["optimizer_states"][0]["state"].values())
    # A run stopped by an error at step 7 resumes from its last checkpoint and ends where the uninterrupted one did,
    with pytest.raises(Exception, match="fail_at_step"):
        run(train_cfg(tmp_path, *BF16, "optim.master_weights=true", "debug.fail_at_step=7"), tmp_path)
    without = tmp_path / "without"
    (without / "checkpoints").mkdir(parents=True)
    (without / "checkpoints" / "last.ckpt").write_bytes((tmp_path / "checkpoints" / "last.ckpt").read_bytes())
    summary = run(train_cfg(tmp_path, *BF16, "optim.master_weights=true", "ckpt_path=last"), tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    got, want = metric(tmp_path), metric(master_run)
    assert max(abs(got[s] - want[s]) for s in want) <= 1e-6, (got, want)
    # ... and the same checkpoint resumes without master weights (fp32 weights, torch's fused AdamW), on the curve.
    summary = run(train_cfg(without, *BF16, "optim.master_weights=false", "ckpt_path=last"), without)
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    resumed = metric(without)
    assert resumed and max(abs(resumed[s] - want[s]) for s in resumed) < 2e-3, (resumed, want)


DDP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from flowhn.training.optimizer import fp32_allreduce_hook
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
layer = torch.nn.Linear(64, 48, bias=False).to(torch.bfloat16)
ddp = DistributedDataParallel(layer)
ddp.register_comm_hook(None, fp32_allreduce_hook)
x = torch.randn(8, 64, generator=torch.Generator().manual_seed(rank)).bfloat16()
ddp(x).float().pow(2).sum().backward()
torch.save(layer.weight.grad, os.path.join(sys.argv[1], f"grad_{rank}.pt"))
dist.destroy_process_group()
"""


def test_ddp_averages_bf16_gradients_in_fp32_and_rounds_once(tmp_path):
    # Two fresh gloo ranks under torchrun (a fork of this process could inherit busy thread pools).
    import subprocess
    import sys

    script = tmp_path / "ddp_hook.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48, bias=False).to(torch.bfloat16)
    local = []
    for rank in range(2):
        layer.weight.grad = None
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(rank)).bfloat16()
        layer(x).float().pow(2).sum().backward()
        local.append(layer.weight.grad.float())
    want = ((local[0] + local[1]) / 2).bfloat16()
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"grad_{rank}.pt"), want), rank


def test_the_bench_resolves_master_weights_per_device():
    from omegaconf import OmegaConf

    from flowhn.bench import bench_master_weights, training_label

    assert bench_master_weights(OmegaConf.create({"device": "cuda"})) is True  # auto
    assert bench_master_weights(OmegaConf.create({"device": "cpu"})) is False
    assert "fused AdamW" in training_label(OmegaConf.create({"device": "cpu"}))
    assert "fp32 masters" in training_label(OmegaConf.create({"device": "cuda", "master_weights": "auto"}))
    with pytest.raises(ConfigError, match="master_weights: true needs device=cuda"):
        bench_master_weights(OmegaConf.create({"device": "cpu", "master_weights": True}))
    with pytest.raises(ConfigError, match="master_weights: must be auto, true or false"):
        bench_master_weights(OmegaConf.create({"device": "cuda", "master_weights": "on"}))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_bench_step_with_master_weights_takes_the_fp32_weights_steps_on_the_gpu():
    """The bench's compiled training step (a tiny llama, bf16 autocast, fused loss) with bf16 weights and
    masters against the same model with fp32 weights and torch's fused AdamW. After one step (the same
    forward, the same gradients) every weight agrees to the optimizers' fp32 rounding; after six the
    losses agree (later steps see bf16 weights that a master an fp32 rounding away may round differently)."""
    from conftest import small_cfg

    from flowhn import build_model
    from flowhn.bench import make_train_step

    cfg = small_cfg("llama", seq_len=64)
    ids = torch.randint(0, cfg.scale.vocab_size, (4, 65), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    first, losses, dtypes = {}, {}, {}
    for master_weights in (False, True):
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = build_model(cfg)
        model.compile_in_place("model")
        step = make_train_step(model, cfg.scale.vocab_size, 4, 64, True, "cuda", fused="auto",
                               master_weights=master_weights)
        step()
        first[master_weights] = {n: (p.dtype, p.detach().float().clone()) for n, p in model.named_parameters()}
        dtypes[master_weights] = {p.dtype for p in model.parameters()}
        for _ in range(5):
            step()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1]).float()
        losses[master_weights] = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()
        torch._dynamo.reset()
    assert dtypes == {False: {torch.float32}, True: {torch.float32, torch.bfloat16}}
    for name, (_, fp32) in first[False].items():
        dtype, got = first[True][name]
        # a bf16 weight (its master's rounding) against the fp32 weight's rounding: equal where the two
        # optimizers' fp32 results do not straddle a bf16 rounding boundary
        want = fp32.bfloat16().float() if dtype == torch.bfloat16 else fp32
        assert (got - want).abs().gt(1e-6 + 1e-5 * want.abs()).float().mean() < 1e-3, name
    assert abs(losses[True] - losses[False]) < 1e-3 * losses[False], losses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_compiled_gpu_run_validates_after_fit_with_its_fp32_weights(tmp_path):
    """On the GPU, compiled: after fit the weights go back to fp32 and dynamo's code is reset, so the
    validation after fit runs a model traced for fp32 weights. Under autocast the fp32 weights round to the
    bf16 weights the last in-fit validation (same step, same batches) ran with, so the two losses agree; a
    compiled graph still reading the weights as bf16 gave garbage or an illegal access (twentieth session)."""
    import csv

    run_dir = tmp_path / "run"
    summary = run(train_cfg(run_dir, "trainer.accelerator=gpu", *BF16, "optim.master_weights=true", "compile=true",
                            "compile_mode=null"), run_dir)
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        in_fit = [(int(r["step"]), float(r["val/loss"])) for r in csv.DictReader(f) if r.get("val/loss")]
    last_step, last_loss = max(in_fit)
    assert last_step >= MAX_STEPS - 1, in_fit
    assert abs(summary["val_loss"] - last_loss) < 1e-4 * last_loss, (summary["val_loss"], in_fit)


@pytest.mark.slow
def test_a_ddp_run_with_master_weights_completes_with_fp32_checkpoint_weights(tmp_path):
    """train.py on 2 CPU ranks (gloo, bf16-mixed) with master weights: DDP wraps the bf16 weights, reduces
    their gradients through fp32_allreduce_hook, and the checkpoint holds fp32 weights."""
    import subprocess
    import sys

    from conftest import ROOT
    from test_reliability import read_summary, train_py

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_py(tmp_path, "trainer.devices=2", "trainer.accelerator=cpu", *BF16, "optim.master_weights=true",
                     "trainer.max_steps=4")[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert read_summary(tmp_path)["status"] == "completed"
    losses = metric(tmp_path)
    assert sorted(losses) == [0, 1, 2, 3] and all(0 < v < 20 for v in losses.values())
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for k, v in ckpt["state_dict"].items() if k.endswith(".weight"))
    assert not any("master" in s for s in ckpt["optimizer_states"][0]["state"].values())


def test_ddp_reduces_master_weight_gradients_through_the_fp32_hook_unless_another_is_named():
    from flowhn.training.optimizer import fp32_allreduce_hook
    from flowhn.training.run import make_strategy

    def strategy(*overrides):
        cfg = compose_train("trainer.accelerator=cpu", "trainer.devices=2", *BF16, *overrides)
        resolve_trainer_settings(cfg)
        return make_strategy(cfg)

    assert strategy("optim.master_weights=true")._ddp_comm_hook is fp32_allreduce_hook
    assert strategy("optim.master_weights=false")._ddp_comm_hook is None
    named = strategy("optim.master_weights=true", "trainer.ddp.comm_hook=bf16_compress")._ddp_comm_hook
    assert named.__name__ == "bf16_compress_hook"


def test_the_model_leaves_fit_in_fp32_with_its_masters_values():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from flowhn.training.module import CausalLMModule

    cfg = train_cfg(Path("unused"), "trainer.accelerator=cpu", *BF16, "optim.master_weights=true")
    resolve_trainer_settings(cfg)
    module = CausalLMModule(OmegaConf.to_container(cfg, resolve=True))
    module.setup("fit")
    module._trainer = SimpleNamespace(max_steps=10, optimizers=[])
    optimizer = module.configure_optimizers()["optimizer"]
    module._trainer.optimizers = [optimizer]
    assert isinstance(optimizer, MasterWeightAdamW)
    for p in module.parameters():
        p.grad = torch.randn(p.shape).to(p.dtype)
    # The training module hands it the non-finite-loss flag as it does torch's fused AdamW.
    module._skip_update_if = torch.tensor(0.0)
    module.on_before_optimizer_step(optimizer)
    assert optimizer.found_inf is not None and optimizer.found_inf.item() == 0.0
    optimizer.step()
    masters = {n: optimizer.state[p]["master"].clone() for n, p in module.named_parameters() if "master" in optimizer.state[p]}
    assert masters and all(module.get_parameter(n).dtype == torch.bfloat16 for n in masters)
    module.on_train_end()
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    for name, master in masters.items():
        assert torch.equal(module.get_parameter(name), master), name
    assert not any("master" in s for s in optimizer.state.values())
