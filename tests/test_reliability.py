"""Reliability of training runs: exact resume after SIGKILL and SIGTERM, atomic checkpoints, a
clean stop on NaN loss, a dying DDP rank failing the job, and same seed -> same losses.

The reference is one uninterrupted in-process run; interrupted runs use the same training config
(checkpoint cadence, logging and ``debug`` keys do not change what is trained) and must give the
same per-step loss.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, compose_train
from omegaconf import OmegaConf

from flowhn.training.checkpointing import AtomicCheckpointIO, atomic_torch_save
from flowhn.training.module import CausalLMModule, NonFiniteLossError, NonFiniteWeightsError
from flowhn.training.checks import resolve_trainer_settings
from flowhn.training.run import build_trainer, run

MAX_STEPS = 12
# Keeps the rows of a resumed run's metrics.csv; redundant once conf/logger/csv.yaml targets it.
RESUMABLE_CSV = "logger.csv._target_=flowhn.training.loggers.ResumableCSVLogger"
SHORT = (
    "data.seq_len=32", "data.batch_size=4", f"trainer.max_steps={MAX_STEPS}", "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=6", "trainer.limit_val_batches=2", "callbacks.throughput.warmup_steps=2",
    "callbacks.throughput.window=4", "callbacks.checkpoint.every_n_train_steps=4",
)


def train_cfg(run_dir: Path, *overrides: str):
    """A short CPU run's config, for ``run(cfg, run_dir)`` in this process."""
    return compose_train("logger=csv", RESUMABLE_CSV, f"paths.output_dir={run_dir}", f"paths.root_dir={ROOT}",
                         *SHORT, *overrides)


def train_py(run_dir: Path, *overrides: str) -> list[str]:
    """The same short run as a ``train.py`` command line."""
    return [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", "logger=csv", RESUMABLE_CSV,
            *SHORT, *overrides]


def metric(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """``step -> value`` of one metric in ``csv/metrics.csv``; each step must appear once."""
    values: dict[int, float] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                step = int(row["step"])
                assert step not in values, f"{key} logged twice at step {step}"
                values[step] = float(row[key])
    return values


def ckpt_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def read_summary(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "summary.json").read_text())


def assert_same_curve(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want) == list(range(MAX_STEPS))
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= 1e-6, f"losses differ by up to {worst}: {got} vs {want}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    summary = run(train_cfg(run_dir), run_dir)
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    return run_dir


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_the_same_losses(reference, tmp_path):
    again, other_seed = tmp_path / "again", tmp_path / "other"
    run(train_cfg(again), again)
    run(train_cfg(other_seed, "seed=4321", "trainer.max_steps=1"), other_seed)  # only its first loss is read
    want = metric(reference)
    assert len(want) == MAX_STEPS
    assert metric(again) == want  # bit for bit on CPU
    assert metric(again, "val/loss") == metric(reference, "val/loss")
    assert metric(other_seed)[0] != want[0]  # the seed does reach the initialisation


# ---------------------------------------------------------------- resume


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(reference, tmp_path):
    # Checkpoints at steps 4 and 8; the kill at 7 loses steps 4-6, which the resume trains again.
    killed = subprocess.run(train_py(tmp_path, "debug.kill_at_step=7"), cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == 4
    assert read_summary(tmp_path)["status"] == "running"  # nothing got to say otherwise

    summary = run(train_cfg(tmp_path, "ckpt_path=last"), tmp_path)

    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    assert_same_curve(metric(tmp_path), metric(reference))
    assert metric(tmp_path, "val/loss") == pytest.approx(metric(reference, "val/loss"), abs=1e-6)
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == MAX_STEPS
    assert not list((tmp_path / "checkpoints").glob("last-v*")), "a resumed run must overwrite last.ckpt"


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_exits_and_resume_continues(reference, tmp_path):
    # No periodic checkpoint before the signal: last.ckpt can only come from the preemption save,
    # and after the resume ModelCheckpoint must overwrite it (not write last-v1.ckpt beside it).
    cmd = train_py(tmp_path, "callbacks.checkpoint.every_n_train_steps=100", "+logger.csv.flush_logs_every_n_steps=1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "csv" / "metrics.csv").exists() or not metric(tmp_path):
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "was not set, defaulting" not in stderr  # Lightning's note on a save that did not say weights_only
    stopped = read_summary(tmp_path)
    assert stopped["status"] == "stopped" and "SIGTERM" in stopped["error"]  # resumable: not failed, not done
    assert 1 <= stopped["steps"] < MAX_STEPS
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == stopped["steps"]

    summary = run(train_cfg(tmp_path), tmp_path)  # auto-resume: the run dir has last.ckpt

    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    assert_same_curve(metric(tmp_path), metric(reference))
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == MAX_STEPS
    assert not list((tmp_path / "checkpoints").glob("last-v*"))


def test_sigterm_before_the_first_step_exits_within_the_grace_and_records_the_stop(tmp_path):
    # On 2 H200s a SIGTERM during DDP's compile (minutes before the first step: no step to stop at)
    # ended every rank at 0.9 x the grace as it should, but summary.json still said "running".
    # The stall stands in for that compile.
    cmd = train_py(tmp_path, "debug.stall_at_fit_start_s=300", "hydra.launcher.stop_grace_s=4")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "summary.json").exists():  # written just before fit starts
            assert proc.poll() is None and time.time() < deadline, "the run did not get to fit"
            time.sleep(0.02)
        assert read_summary(tmp_path)["status"] == "running"
        proc.send_signal(signal.SIGTERM)
        signalled = time.time()
        _, stderr = proc.communicate(timeout=60)
        gone_after = time.time() - signalled
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert gone_after < 4, f"still running {gone_after:.1f} s after SIGTERM with a 4 s grace"
    assert "before the first step" in stderr
    stopped = read_summary(tmp_path)
    assert stopped["status"] == "stopped" and stopped["steps"] == 0, stopped
    assert "exited without saving at step 0" in stopped["error"]
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


# ---------------------------------------------------------------- checkpoint files


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("simulated failure while writing the checkpoint")


class FailingSave(L.Callback):
    """Makes every checkpoint after ``after_step`` fail part-way through serialisation."""

    def __init__(self, after_step: int):
        self.after_step = after_step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.global_step > self.after_step:
            checkpoint["zz_unpicklable"] = _Unpicklable()  # pickled after the weights


def test_exception_mid_save_keeps_previous_last_ckpt(tmp_path):
    cfg = train_cfg(tmp_path, "+callbacks.failing_save._target_=test_reliability.FailingSave",
                    "+callbacks.failing_save.after_step=4")
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(cfg, tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert ckpt_step(ckpts / "last.ckpt") == 4  # the step-8 save failed; step 4's file is whole
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000004.ckpt"]  # no temp files
    assert read_summary(tmp_path)["status"] == "failed"


def test_atomic_save_replaces_whole_files_only(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="simulated"):
        atomic_torch_save({"step": 2, "w": torch.zeros(1000), "x": _Unpicklable()}, path)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_runs_save_through_the_atomic_checkpoint_io(tmp_path):
    cfg = train_cfg(tmp_path)
    resolve_trainer_settings(cfg)
    trainer = build_trainer(cfg, tmp_path, callbacks=[], loggers=[])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def _save_forever(path: str) -> None:
    """Saves a 64 MB checkpoint to ``path`` over and over, until killed."""
    torch.set_num_threads(1)  # a fork of a process that may have run OpenMP regions: keep off its thread pool
    i = 0
    while True:
        atomic_torch_save({"i": i, "w": torch.full((16_000_000,), float(i))}, path)
        i += 1


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_leaves_a_whole_file(tmp_path):
    path = tmp_path / "last.ckpt"
    # The writer is a fork of this process, which has imported atomic_torch_save (and Lightning with it)
    # already: a fresh interpreter spent ~10 s of the test importing them. SIGKILL ends either alike.
    proc = multiprocessing.get_context("fork").Process(target=_save_forever, args=(str(path),), daemon=True)
    proc.start()
    try:
        deadline = time.time() + 120
        # Kill while a later save's temporary file is being written next to a complete last.ckpt.
        while not (path.exists() and any(p.name.endswith(".tmp") and p.stat().st_size > 0
                                         for p in tmp_path.iterdir())):
            assert proc.is_alive() and time.time() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        proc.kill()
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["w"], torch.full((16_000_000,), float(saved["i"])))


# ---------------------------------------------------------------- failures


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = train_cfg(tmp_path, "debug.nan_at_step=5", "callbacks.checkpoint.every_n_train_steps=2")
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        run(cfg, tmp_path)
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "NonFiniteLossError" in summary["error"] and "step 5" in summary["error"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_nan_loss_at_the_last_step_is_still_reported(tmp_path):
    # The loss is read on the host one step late (no sync inside a step); the last step's is read at
    # the end of training, here with no checkpoint due at that step.
    cfg = train_cfg(tmp_path, f"debug.nan_at_step={MAX_STEPS - 1}", "callbacks.checkpoint.every_n_train_steps=5")
    with pytest.raises(NonFiniteLossError, match=f"at step {MAX_STEPS - 1}"):
        run(cfg, tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 10


def test_a_step_with_a_non_finite_loss_does_not_update_the_weights(tmp_path):
    """The fused AdamW skips the update of a step whose loss is NaN (found_inf, on the device), so the
    weights stay as they were before it until the next step reads the loss and stops the run; a
    finite step updates them."""
    module = CausalLMModule(OmegaConf.to_container(train_cfg(tmp_path), resolve=True))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, fused=True)
    ids = torch.randint(0, module.cfg.scale.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def step(batch_idx: int) -> None:
        module.training_step(batch, batch_idx).backward()
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        optimizer.zero_grad()

    norm = module.model.norm.weight
    good = norm.detach().clone()
    with torch.no_grad():
        norm[0] = math.nan  # the loss and every gradient become NaN
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    step(0)
    for name, p in module.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0, equal_nan=True, msg=name)
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 0"):
        module.training_step(batch, 1)
    with torch.no_grad():
        norm.copy_(good)
    step(1)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert sum(not torch.equal(p, before[n]) for n, p in module.named_parameters()) > len(before) // 2


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    module = CausalLMModule(OmegaConf.to_container(train_cfg(tmp_path), resolve=True))
    module.on_save_checkpoint({})  # finite weights: saved
    name, weight = list(module.named_parameters())[-1]
    with torch.no_grad():
        weight[0] = math.inf
    with pytest.raises(NonFiniteWeightsError, match=f"parameter {name} is not finite"):
        module.on_save_checkpoint({})


@pytest.mark.slow
def test_ddp_rank_failure_fails_the_job_fast(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *train_py(
        tmp_path, "trainer.devices=2", "trainer.accelerator=cpu", "debug.fail_at_step=2", "debug.fail_rank=1")[1:]]
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a DDP job with a dead rank hung")
    elapsed = time.time() - started
    assert proc.returncode != 0
    assert "debug.fail_at_step=2: failing on purpose at step 2 on rank 1" in output
    assert elapsed < 120, f"the job took {elapsed:.0f} s to fail"
    assert read_summary(tmp_path)["status"] == "failed"  # rank 0 saw its peer go


def test_a_run_without_validation_completes(tmp_path):
    # trainer.limit_val_batches=0: no validation during training or at its end (the summary says None).
    summary = run(train_cfg(tmp_path, "trainer.limit_val_batches=0"), tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    assert summary["val_loss"] is None and summary["tps"] is not None


def test_training_logs_no_progress_bar_metric_yet_the_bar_shows_the_loss(tmp_path, monkeypatch):
    """Lightning converts every prog_bar metric to a Python number after every batch (a host-device
    sync per step on a GPU). The training loss is logged without prog_bar, so during training
    nothing is converted, and StepRateProgressBar shows it when it redraws."""
    from lightning.pytorch.trainer.connectors.logger_connector import result

    from flowhn.training.callbacks import StepRateProgressBar

    converted, shown = [], []
    convert = result.convert_tensors_to_scalars
    monkeypatch.setattr(result, "convert_tensors_to_scalars", lambda v: converted.append(v) or convert(v))

    class Bar(StepRateProgressBar):
        def get_metrics(self, trainer, pl_module):
            shown.append(super().get_metrics(trainer, pl_module))
            return shown[-1]

    module = CausalLMModule(OmegaConf.to_container(train_cfg(tmp_path), resolve=True))
    ids = torch.randint(0, module.cfg.scale.vocab_size, (8, 2, 9), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": x[:, :-1], "labels": x[:, 1:]} for x in ids]
    trainer = L.Trainer(accelerator="cpu", max_steps=8, limit_val_batches=0, log_every_n_steps=100, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[Bar(refresh_rate=4)])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert converted == []
    assert len(shown) >= 2 and all(math.isfinite(m["train/loss"]) for m in shown)
