"""Peak-FLOPS table and the throughput/MFU callback, on CPU with real Lightning runs.

Time is driven by the training steps themselves: each batch carries ``dt`` seconds that its
training step adds to an injected clock, so expected TPS and MFU are exact sums over the batches
fed, not timings.
"""

from __future__ import annotations

import csv
import logging

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from flowhn.perf import ThroughputMonitor, hardware
from flowhn.perf.hardware import matmul_dtype, normalize_dtype, peak_tflops

# ---------------------------------------------------------------------------------------------
# peak table


@pytest.mark.parametrize(("name", "dtype", "expected"), [
    ("Tesla V100-SXM2-16GB", "fp16", 125.0),
    ("Tesla V100-SXM2-32GB", "16-mixed", 125.0),
    ("Tesla V100-PCIE-32GB", "fp16", 112.0),
    ("Tesla V100S-PCIE-32GB", "fp16", 130.0),
    ("Tesla V100-SXM2-16GB", "fp32", 15.7),
    ("NVIDIA A100-SXM4-40GB", "bf16", 312.0),
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312.0),
    ("NVIDIA A100-PCIE-40GB", "tf32", 156.0),
    ("NVIDIA A100 80GB PCIe", "bf16", 312.0),
    ("NVIDIA A10", "bf16", 125.0),
    ("NVIDIA A10G", "bf16", 70.0),
    ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40S", "bf16", 362.05),
    ("NVIDIA L40", "bf16", 181.05),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7),
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H100 80GB HBM2e", "16-mixed", 756.0),
    ("NVIDIA H100 NVL", "bf16", 835.5),
    ("NVIDIA H200", "bf16", 989.5),
    ("NVIDIA H200 NVL", "bf16", 835.5),
    ("NVIDIA B200", "bf16", 2250.0),
    ("NVIDIA GB200", "bf16", 2500.0),
    ("NVIDIA GB200", "32-true", 80.0),
])
def test_peak_table_lookup(name, dtype, expected):
    assert peak_tflops(name, dtype) == expected


@pytest.mark.parametrize(("name", "row"), [
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A10", "A10"), ("NVIDIA A10G", "A10G"),
    ("NVIDIA L4", "L4"), ("NVIDIA L40", "L40"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA B200", "B200"), ("NVIDIA GB200", "GB200"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA GeForce RTX 4090 D", None), ("NVIDIA H20", None),
])
def test_similar_names_do_not_collide(name, row):
    found = hardware.lookup_gpu(name)
    assert (found.name if found else None) == row


def test_every_row_is_dense_and_reachable():
    for row in hardware.GPU_PEAKS:
        assert hardware.lookup_gpu(f"NVIDIA {row.name}") is row  # no earlier row shadows it
        # Dense bf16 is 2x dense tf32 on every generation (datasheets round: L40S prints 183 vs 362.05, hence 2 %); a
        # sparse figure slipped into either column would break the ratio.
        if "tf32" in row.tflops:
            assert row.tflops["bf16"] == pytest.approx(2 * row.tflops["tf32"], rel=0.02), row.name


def test_unknown_gpu_gives_none_and_warns_once(caplog):
    hardware._warned.clear()
    with caplog.at_level(logging.WARNING, logger="flowhn.perf.hardware"):
        assert peak_tflops("NVIDIA Imaginary X9000", "bf16") is None
        assert peak_tflops("NVIDIA Imaginary X9000", "bf16") is None
        assert peak_tflops("NVIDIA Imaginary X9000", "fp16") is None
    warnings = [r for r in caplog.records if "Imaginary X9000" in r.getMessage()]
    assert len(warnings) == 1


def test_dtype_missing_on_known_gpu_gives_none(caplog):
    hardware._warned.clear()
    with caplog.at_level(logging.WARNING, logger="flowhn.perf.hardware"):
        assert peak_tflops("Tesla V100-SXM2-16GB", "bf16-mixed") is None  # Volta has no bf16 tensor cores
    assert len(caplog.records) == 1


def test_override_wins_and_is_validated():
    assert peak_tflops("NVIDIA Imaginary X9000", "bf16", override=100) == 100.0
    assert hardware.device_peak_tflops("cpu", "32-true") is None
    assert hardware.device_peak_tflops("cpu", "32-true", override=1.5) == 1.5
    with pytest.raises(ValueError, match="hardware.peak_tflops"):
        peak_tflops("NVIDIA H100 PCIe", "bf16", override=-3)


def test_precision_strings():
    assert [normalize_dtype(p) for p in ("bf16-mixed", "bf16-true", "16-mixed", "32-true", "64-true")] == \
        ["bf16", "bf16", "fp16", "fp32", "fp64"]
    assert normalize_dtype(torch.bfloat16) == "bf16"
    with pytest.raises(ValueError, match="fp8-mixed"):
        normalize_dtype("fp8-mixed")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert matmul_dtype("32-true") == "tf32"
        torch.set_float32_matmul_precision("highest")
        assert matmul_dtype("32-true") == "fp32"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_callback_rejects_bad_config():
    with pytest.raises(ValueError, match="throughput.window"):
        ThroughputMonitor(window=0)
    with pytest.raises(ValueError, match="throughput.warmup_steps"):
        ThroughputMonitor(warmup_steps=-1)
    with pytest.raises(ValueError, match="hardware.peak_tflops"):
        ThroughputMonitor(peak_tflops=0)


# ---------------------------------------------------------------------------------------------
# callback on real Lightning runs

VOCAB, FLOPS_PER_TOKEN = 23, 1234.0


class StepClock:
    """Host clock stand-in: only training/validation steps move it."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_batches(n: int, seed: int = 0, batch: int = 2, seq: int = 7) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (batch, seq), generator=gen)
        labels = torch.roll(ids, -1, dims=1)
        # Document padding at the end of rows, as packed/padded data has it.
        pad = torch.randint(0, seq, (batch,), generator=gen)
        labels[torch.arange(seq)[None, :] >= seq - pad[:, None]] = -100
        out.append({"input_ids": ids, "labels": labels, "dt": 0.05 * (1 + (7 * i) % 5)})
    return out


class Batches(Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


class TinyLM(L.LightningModule):
    def __init__(self, clock: StepClock, val_dt: float = 0.0, rank_dt: float = 0.0):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)
        self.flops_per_token = FLOPS_PER_TOKEN
        self.clock, self.val_dt, self.rank_dt = clock, val_dt, rank_dt

    def _loss(self, batch):
        logits = self.head(self.emb(batch["input_ids"]))
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)

    def training_step(self, batch, batch_idx):
        self.clock.t += float(batch["dt"]) + self.rank_dt * self.global_rank
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.clock.t += self.val_dt
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def real(batch) -> int:
    return int((batch["labels"] != -100).sum())


def expected_windows(batches, warmup, window, accumulate=1, n_steps=None):
    """(tokens, seconds, steps) per full window, from the batches each window's steps consumed."""
    per_step = [batches[s * accumulate:(s + 1) * accumulate] for s in range(n_steps)]
    out = []
    for start in range(warmup, n_steps - window + 1, window):
        chunk = [b for step in per_step[start:start + window] for b in step]
        out.append((sum(real(b) for b in chunk), sum(b["dt"] for b in chunk), window))
    return out


def fit(tmp_path, batches, monitor, *, max_steps, accumulate=1, val_every=None, val_dt=0.0, logger=None,
        progress_bar=None, **trainer_kw):
    clock = monitor.clock
    model = TinyLM(clock, val_dt=val_dt)
    kw = dict(limit_val_batches=0)
    if val_every:
        kw = dict(val_check_interval=val_every, limit_val_batches=1, check_val_every_n_epoch=None)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, accumulate_grad_batches=accumulate,
        logger=logger or L.pytorch.loggers.CSVLogger(tmp_path, name="csv", version=""), log_every_n_steps=50,
        enable_checkpointing=False, enable_progress_bar=progress_bar is not None, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[monitor] + ([progress_bar] if progress_bar else []), **kw, **trainer_kw)
    loader = DataLoader(Batches(batches), batch_size=None)
    trainer.fit(model, loader, DataLoader(Batches(batches[:1]), batch_size=None) if val_every else None)
    return trainer


def test_tps_and_mfu_equal_tokens_over_time(tmp_path):
    batches = make_batches(20)
    monitor = ThroughputMonitor(window=3, warmup_steps=2, peak_tflops=2.0, clock=StepClock())
    trainer = fit(tmp_path, batches, monitor, max_steps=13)

    expected = expected_windows(batches, warmup=2, window=3, n_steps=13)
    assert len(expected) == 3 and len(monitor.windows) == 3  # the 2-step tail after step 11 is not a window
    assert sum(real(b) for b in batches[:13]) > sum(t for t, _, _ in expected)  # warm-up steps not counted
    for got, (tokens, seconds, steps) in zip(monitor.windows, expected):
        assert got["tokens"] == tokens
        assert got["tps"] == pytest.approx(tokens / seconds, rel=1e-12)
        assert got["tps_per_device"] == pytest.approx(tokens / seconds, rel=1e-12)
        assert got["step_time_ms"] == pytest.approx(1000 * seconds / steps, rel=1e-12)
        assert got["mfu"] == pytest.approx(tokens * FLOPS_PER_TOKEN / seconds / 2.0e12, rel=1e-12)
        assert got["max_mem_gib"] == 0.0

    last_tokens, last_seconds, _ = expected[-1]
    metrics = trainer.callback_metrics
    assert float(metrics["perf/tps"]) == pytest.approx(last_tokens / last_seconds, rel=1e-6)
    assert float(metrics["perf/mfu"]) == pytest.approx(last_tokens * FLOPS_PER_TOKEN / last_seconds / 2e12, rel=1e-6)

    summary = monitor.final
    tps = sorted(t / s for t, s, _ in expected)
    assert summary["windows"] == 3
    assert summary["tps"] == pytest.approx(tps[1], rel=1e-12)  # median of three
    assert set(summary) == {"tps", "tps_per_device", "mfu", "step_time_ms", "max_mem_gib", "windows"}

    # Every window reaches the logger even though log_every_n_steps (50) never fires.
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/tps")]
    assert [int(r["step"]) for r in rows] == [5, 8, 11]
    assert [float(r["perf/tps"]) for r in rows] == pytest.approx([w["tps"] for w in monitor.windows])


def test_validation_time_is_excluded(tmp_path):
    batches = make_batches(12, seed=1)
    monitor = ThroughputMonitor(window=4, warmup_steps=1, peak_tflops=1.0, clock=StepClock())
    fit(tmp_path, batches, monitor, max_steps=9, val_every=3, val_dt=100.0)
    expected = expected_windows(batches, warmup=1, window=4, n_steps=9)
    assert monitor.clock.t > 200  # validation did run and moved the clock
    assert [w["tps"] for w in monitor.windows] == pytest.approx([t / s for t, s, _ in expected], rel=1e-12)


def test_windows_count_optimizer_steps_under_accumulation(tmp_path):
    batches = make_batches(16, seed=2)
    monitor = ThroughputMonitor(window=2, warmup_steps=1, clock=StepClock())
    trainer = fit(tmp_path, batches, monitor, max_steps=7, accumulate=2)
    expected = expected_windows(batches, warmup=1, window=2, accumulate=2, n_steps=7)
    assert [(w["tokens"], w["steps"]) for w in monitor.windows] == [(t, n) for t, _, n in expected]
    assert [w["tps"] for w in monitor.windows] == pytest.approx([t / s for t, s, _ in expected], rel=1e-12)
    # No peak for a CPU: MFU is neither logged nor summarised, and nothing is NaN.
    assert "perf/mfu" not in trainer.callback_metrics
    assert monitor.final["mfu"] is None
    assert all(torch.isfinite(v).all() for k, v in trainer.callback_metrics.items() if k.startswith("perf/"))


def test_summary_reaches_wandb_offline(tmp_path):
    import wandb

    logger = L.pytorch.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="flowhn-tests")
    monitor = ThroughputMonitor(window=2, warmup_steps=1, peak_tflops=1.0, clock=StepClock())
    try:
        fit(tmp_path, make_batches(8, seed=6), monitor, max_steps=7, logger=logger)
        summary = logger.experiment.summary
        for key in ("tps", "tps_per_device", "mfu", "step_time_ms", "max_mem_gib", "windows"):
            assert summary[f"perf/{key}"] == pytest.approx(monitor.final[key]), key
        assert monitor.final["windows"] == 3
    finally:
        wandb.finish()


def test_short_run_falls_back_to_all_post_warmup_steps(tmp_path):
    batches = make_batches(8, seed=3)
    monitor = ThroughputMonitor(window=10, warmup_steps=2, peak_tflops=1.0, clock=StepClock())
    trainer = fit(tmp_path, batches, monitor, max_steps=5)
    tail = batches[2:5]
    tokens, seconds = sum(real(b) for b in tail), sum(b["dt"] for b in tail)
    assert monitor.windows == []
    assert "perf/tps" not in trainer.callback_metrics
    assert monitor.final["windows"] == 1
    assert monitor.final["tps"] == pytest.approx(tokens / seconds, rel=1e-12)
    assert monitor.final["step_time_ms"] == pytest.approx(1000 * seconds / 3, rel=1e-12)


def test_warmup_restarts_when_a_run_resumes(tmp_path):
    batches = make_batches(12, seed=5)
    first = fit(tmp_path, batches, ThroughputMonitor(window=2, warmup_steps=0, clock=StepClock()), max_steps=4)
    ckpt = tmp_path / "resume.ckpt"
    first.save_checkpoint(ckpt)

    clock = StepClock()
    monitor = ThroughputMonitor(window=2, warmup_steps=2, clock=clock)
    model = TinyLM(clock)
    trace = []
    model.on_train_batch_start = lambda batch, idx: trace.append((model.global_step, real(batch), batch["dt"]))
    trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor])
    trainer.fit(model, DataLoader(Batches(batches), batch_size=None), ckpt_path=ckpt)

    assert [w["step"] for w in monitor.windows] == [8, 10]  # steps 5-6 after the resume are warm-up
    for window, (start, end) in zip(monitor.windows, [(6, 8), (8, 10)]):
        steps = [(n, dt) for step, n, dt in trace if start <= step < end]
        assert window["tokens"] == sum(n for n, _ in steps)
        assert window["tps"] == pytest.approx(window["tokens"] / sum(dt for _, dt in steps), rel=1e-12)


def test_no_post_warmup_step_reports_none(tmp_path):
    monitor = ThroughputMonitor(window=2, warmup_steps=5, clock=StepClock())
    fit(tmp_path, make_batches(4), monitor, max_steps=3)
    assert monitor.final == {"tps": None, "tps_per_device": None, "mfu": None, "step_time_ms": None,
                             "max_mem_gib": None, "windows": 0}


def test_batches_without_labels_fail_clearly():
    batches = [{"input_ids": b["input_ids"], "dt": b["dt"]} for b in make_batches(3)]

    class NoLabels(TinyLM):
        def _loss(self, batch):
            return self.head(self.emb(batch["input_ids"])).mean()

    monitor = ThroughputMonitor(window=1, warmup_steps=0, clock=StepClock())
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor])
    with pytest.raises(KeyError, match="labels"):
        trainer.fit(NoLabels(monitor.clock), DataLoader(Batches(batches), batch_size=None))


class ShardedTinyLM(TinyLM):
    """Builds its loader after the process group exists, so the sampler shards by rank."""

    def __init__(self, clock, batches, **kw):
        super().__init__(clock, **kw)
        self.batches = batches

    def train_dataloader(self):
        dataset = Batches(self.batches)
        return DataLoader(dataset, batch_size=None, sampler=DistributedSampler(dataset, shuffle=False))


def test_ddp_sums_tokens_and_takes_slowest_rank():
    """Two CPU ranks (gloo): global TPS = tokens of both ranks / the slower rank's window time."""
    batches = make_batches(12, seed=4)
    clock = StepClock()
    monitor = ThroughputMonitor(window=2, warmup_steps=1, peak_tflops=1.0, clock=clock)
    model = ShardedTinyLM(clock, batches, rank_dt=0.5)  # rank 1 is 0.5 s slower per step
    # Forking is much faster than spawning, but a parent that has touched CUDA (any earlier fit on
    # a GPU host) cannot fork.
    strategy = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[monitor])
    trainer.fit(model)

    # Rank r trains on batches r, r+2, r+4, ...; the one window is optimizer steps 2..3.
    rank0, rank1 = batches[0::2][1:3], batches[1::2][1:3]
    tokens = sum(real(b) for b in rank0 + rank1)
    seconds = max(sum(b["dt"] for b in rank0), sum(b["dt"] + 0.5 for b in rank1))
    assert seconds == sum(b["dt"] + 0.5 for b in rank1) != sum(b["dt"] for b in rank0)
    metrics = trainer.callback_metrics  # the launcher hands rank 0's metrics back to this process
    assert float(metrics["perf/tps"]) == pytest.approx(tokens / seconds, rel=1e-6)
    assert float(metrics["perf/tps_per_device"]) == pytest.approx(tokens / seconds / 2, rel=1e-6)
    assert float(metrics["perf/mfu"]) == pytest.approx(tokens * FLOPS_PER_TOKEN / seconds / (1e12 * 2), rel=1e-6)


class MatmulLM(L.LightningModule):
    """Enough dense work per step for tensor cores to show up in MFU."""

    def __init__(self, dim: int = 1024, vocab: int = 4096):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
                                    for _ in range(4)])
        self.head = nn.Linear(dim, vocab)
        params = sum(p.numel() for p in self.parameters() if p.ndim == 2)
        self.flops_per_token = 6.0 * params  # forward + backward of the matmuls

    def training_step(self, batch, batch_idx):
        logits = self.head(self.body(self.emb(batch["input_ids"])))
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_reports_consistent_throughput_and_mfu(tmp_path):
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(24):
        ids = torch.randint(0, 4096, (8, 512), generator=gen)
        labels = torch.roll(ids, -1, dims=1)
        labels[:, -37:] = -100
        batches.append({"input_ids": ids, "labels": labels})
    monitor = ThroughputMonitor(window=5, warmup_steps=3)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=20, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[monitor])
    trainer.fit(MatmulLM(), DataLoader(Batches(batches), batch_size=None))

    name = torch.cuda.get_device_name()
    assert monitor.peak_tflops == peak_tflops(name, "bf16")
    assert len(monitor.windows) == 3
    for window in monitor.windows:
        assert window["tokens"] == 5 * 8 * (512 - 37)
        # tps x seconds-per-step is the real tokens of one step, whatever the timing was.
        assert window["tps"] * window["step_time_ms"] / 1000 == pytest.approx(8 * (512 - 37))
        assert window["max_mem_gib"] > 0
        if monitor.peak_tflops is not None:
            assert 0 < window["mfu"] < 1
    summary = monitor.final
    assert summary["windows"] == 3 and summary["tps"] > 0
    assert float(trainer.callback_metrics["perf/tps"]) == pytest.approx(monitor.windows[-1]["tps"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# the progress bar does not read the loss (a host-device sync) at every step


@pytest.mark.parametrize(("ours", "batches", "max_steps", "expected"), [
    (False, 7, 7, [1, 2, 3, 4, 5, 6, 7, 7]),
    (True, 7, 7, [3, 6, 7, 7]),  # and at the epoch's end, as Lightning's
    (True, 12, 12, [4, 8, 12, 12]),  # halfway (step 6) is not mistaken for the last batch
    (True, 12, 10, [4, 8, 10, 10]),  # max_steps ends the run inside the epoch: it redraws at the end
])
def test_progress_bar_reads_metrics_only_when_it_redraws(tmp_path, ours, batches, max_steps, expected):
    from lightning.pytorch.callbacks import RichProgressBar

    from flowhn.training.callbacks import StepRateProgressBar

    reads = []

    class CountingBar(StepRateProgressBar if ours else RichProgressBar):
        def get_metrics(self, trainer, pl_module):
            reads.append(trainer.global_step)
            return super().get_metrics(trainer, pl_module)

    monitor = ThroughputMonitor(window=3, warmup_steps=1, clock=StepClock())
    fit(tmp_path, make_batches(batches), monitor, max_steps=max_steps,
        progress_bar=CountingBar(refresh_rate=3 if batches == 7 else 4))
    # Lightning's bar reads after every batch; ours at its redraws (every refresh_rate batches and the last).
    assert reads == expected


# ---------------------------------------------------------------------------------------------
# idle gaps on the device timeline (flowhn.perf.gaps): a trace shaped as torch.profiler exports it


def _x(cat, name, ts, dur, correlation=None, tid=1):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid,
            "args": {} if correlation is None else {"correlation": correlation}}


def test_gaps_split_host_late_from_device_side_and_name_the_launcher():
    from flowhn.perf.gaps import device_times_by_name, gap_markdown, kernel_gaps

    trace = {"traceEvents": [
        _x("cpu_op", "aten::mm", 0, 5), _x("cuda_runtime", "cudaLaunchKernel", 1, 2, correlation=1),
        _x("kernel", "gemm", 10, 40, correlation=1),                    # busy 10..50
        _x("cpu_op", "flowhn::scan", 3, 10),
        _x("cuda_runtime", "cudaLaunchKernel", 5, 2, correlation=2),   # launched early: a device-side gap
        _x("kernel", "scan", 54, 20, correlation=2),                    # gap 50..54, 4 µs, none host-late
        _x("kernel", "copy_on_stream_2", 60, 30, correlation=3),        # overlaps scan: no gap, busy to 90
        _x("cuda_runtime", "cudaLaunchKernel", 3, 1, correlation=3),
        _x("cpu_op", "Optimizer.step", 95, 20),
        _x("cpu_op", "aten::_foreach_add", 100, 10),
        _x("cuda_runtime", "cudaLaunchKernel", 104, 2, correlation=4),  # launched 14 µs after idle began
        _x("gpu_memset", "Memset", 110, 5, correlation=4),              # gap 90..110: 14 host-late of 20
        _x("cuda_runtime", "cudaLaunchKernel", 200, 1, correlation=5, tid=2),  # no CPU op on thread 2
        _x("kernel", "adam", 205, 10, correlation=5),                   # gap 115..205: host-late 85 of 90
    ]}
    gaps, busy, span = kernel_gaps(trace)
    assert span == 215 - 10
    assert busy == 40 + 36 + 5 + 10
    assert [(g.before, g.after, g.us, g.host_late, g.launcher) for g in gaps] == [
        ("gemm", "scan", 4, 0, "flowhn::scan"),
        ("copy_on_stream_2", "Memset", 20, 14, "aten::_foreach_add"),
        ("Memset", "adam", 90, 85, ""),
    ]
    assert busy + sum(g.us for g in gaps) == span
    assert [g.us for g in kernel_gaps(trace, min_us=10)[0]] == [20, 90]
    quick = kernel_gaps(trace, launchers=False)  # the bench's busy time: no CPU-op lookup per gap
    assert quick[1:] == (busy, span) and {g.launcher for g in quick[0]} == {""}
    text = gap_markdown(gaps, busy, span, "row")
    assert "idle 0.11 ms in 3 gaps; of it 0.10 ms before the host" in text
    assert "| `aten::_foreach_add` | 0.014 | 1 |" in text and "| `?` | 0.085 | 1 |" in text
    assert kernel_gaps({"traceEvents": []}) == ([], 0.0, 0.0)
    # Per-name sums (the bench's kernel table): every device event counted, an ATen kernel whose name
    # holds a lambda's '#' too (function events filtered those out, with the profiler's own '#' ranges).
    trace["traceEvents"].append(_x("kernel", "void at::native::elementwise_kernel<{lambda(float)#1}>", 300, 7,
                                   correlation=6))
    times = device_times_by_name(trace)
    assert times["void at::native::elementwise_kernel<{lambda(float)#1}>"] == [7, 1]
    assert times["gemm"] == [40, 1] and times["Memset"] == [5, 1] and "aten::mm" not in times
