"""SIGTERM under DDP (2 CPU ranks, gloo): every rank stops after one agreed step, last.ckpt is
written once, every process exits with 128 + SIGTERM, summary.json says "stopped", and the same
command resumes on the uninterrupted run's loss curve. Also the DDP config keys, the SLURM
``--signal`` and how sweeps read a stopped job.

The reference is one uninterrupted 2-rank run of the same config; the stopped runs must continue
on its per-step training and validation loss (bit for bit on CPU, checked to 1e-6).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, compose_train
from test_reliability import RESUMABLE_CSV, ckpt_step, metric, read_summary

from flowhn.errors import ConfigError
from flowhn.sweeping import finish_job
from flowhn.training.checks import RESUME_MAY_CHANGE, resolve_trainer_settings
from flowhn.training.run import make_strategy

MAX_STEPS = 16
# Checkpoints every 2 steps: the external kill lands right after the first one, with most of the
# run still ahead (the stop must happen mid-training, not after it). Validation at 8 and 16: both
# after the stopped runs resume (16 steps, not 30: the reference and the resumed run train 28 fewer).
DDP = (
    "trainer.devices=2", "trainer.accelerator=cpu", "logger=csv", RESUMABLE_CSV, "data.seq_len=32",
    "data.batch_size=4", f"trainer.max_steps={MAX_STEPS}", "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=8", "trainer.limit_val_batches=2", "callbacks.throughput.warmup_steps=2",
    "callbacks.throughput.window=4", "callbacks.checkpoint.every_n_train_steps=2",
    "+logger.csv.flush_logs_every_n_steps=1",
)
EXIT_SIGTERM = 128 + signal.SIGTERM


def train_py(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *DDP, *overrides]


def torchrun(run_dir: Path, *overrides: str) -> list[str]:
    """The same run under torchrun, as the sweep launcher starts it (both ranks start at once,
    where Lightning's own launch starts rank 1 only once rank 0 is set up: faster on 2 cores)."""
    return [sys.executable, "-m", "hydra_plugins.flowhn_launcher.torchrun_launcher", "--standalone", "--nnodes=1",
            "--nproc_per_node=2", *train_py(run_dir, *overrides)[1:]]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def assert_continues_the_reference(run_dir: Path, reference: Path) -> None:
    # metric() also checks that each step is logged once: the CSV is written by rank 0 only.
    got, want = metric(run_dir), metric(reference)
    assert sorted(got) == sorted(want) == list(range(MAX_STEPS))
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= 1e-6, f"train/loss differs from the uninterrupted run by up to {worst}"
    assert metric(run_dir, "val/loss") == pytest.approx(metric(reference, "val/loss"), abs=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp_reference")
    proc = subprocess.run(torchrun(run_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["num_devices"] == 2
    return run_dir


@pytest.mark.slow
def test_sigterm_to_every_rank_stops_them_at_one_step_and_the_rerun_resumes_exactly(reference, tmp_path):
    # The reproduction: Lightning's own DDP launch, SIGTERM to the whole process group.
    cmd = train_py(tmp_path)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.01)
        ranks = group_members(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        signalled = time.time()
        _, stderr = proc.communicate(timeout=90)
        while group_members(proc.pid) and time.time() - signalled < 90:
            time.sleep(0.1)
        gone_after = time.time() - signalled
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert len(ranks) == 2, ranks
    assert gone_after < 60, f"processes still there {gone_after:.0f} s after SIGTERM"
    assert proc.returncode == EXIT_SIGTERM, stderr[-3000:]
    stopped = read_summary(tmp_path)
    assert stopped["status"] == "stopped", stopped
    assert "2 of 2 rank(s)" in stopped["error"]
    assert 2 <= stopped["steps"] < MAX_STEPS
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == stopped["steps"]

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)  # the same command

    assert again.returncode == 0, again.stderr[-3000:]
    # Validation metrics are logged as reduced across ranks (Lightning warns about per-rank values).
    assert "sync_dist=True" not in again.stderr
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS
    assert_continues_the_reference(tmp_path, reference)
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == MAX_STEPS


@pytest.mark.slow
def test_sigterm_to_one_rank_under_torchrun_stops_every_rank(reference, tmp_path):
    # Rank 1 alone gets SIGTERM at the start of the batch after step 3; rank 0 learns it from the
    # all-reduce after step 4, and both stop there. torchrun as the sweep launcher runs it (its
    # wrapper exits 143 only when every worker did).
    started = time.time()
    proc = subprocess.run(torchrun(tmp_path, "debug.term_at_step=3", "debug.term_rank=1"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.time() - started
    assert proc.returncode == EXIT_SIGTERM, proc.stdout[-2000:] + proc.stderr[-3000:]
    stopped = read_summary(tmp_path)
    assert stopped["status"] == "stopped" and stopped["steps"] == 4, stopped
    assert "1 of 2 rank(s)" in stopped["error"]
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step000004.ckpt"]
    assert elapsed < 240
    # The steps trained before the stop are the reference's.
    got, want = metric(tmp_path), metric(reference)
    assert sorted(got) == list(range(4)) and all(abs(got[s] - want[s]) <= 1e-6 for s in got)


# ---------------------------------------------------------------- fast checks


def test_a_stopped_job_stays_stopped_in_the_sweep_record(tmp_path):
    summary = {"status": "stopped", "error": "SIGTERM: stopped at step 7", "steps": 7}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert finish_job(tmp_path, EXIT_SIGTERM)["status"] == "stopped"
    settled = finish_job(tmp_path, None, "interrupted: the sweep was stopped (SIGTERM)")
    assert settled["status"] == "stopped" and settled["error"].startswith("interrupted")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running"}))
    assert finish_job(tmp_path, EXIT_SIGTERM)["status"] == "failed"  # killed before it could stop


def test_ddp_settings_reach_the_strategy_and_the_compiler():
    import torch

    from flowhn.training.run import set_compile_ddp_mode

    cfg = compose_train("trainer.devices=2", "trainer.accelerator=cpu", "trainer.ddp.bucket_cap_mb=50",
                        "trainer.ddp.gradient_as_bucket_view=true", "trainer.ddp.static_graph=true",
                        "trainer.ddp.comm_hook=bf16_compress", "trainer.ddp.optimize_ddp=false")
    resolve_trainer_settings(cfg)
    strategy = make_strategy(cfg)
    assert strategy._ddp_kwargs == {"bucket_cap_mb": 50, "gradient_as_bucket_view": True, "static_graph": True,
                                    "broadcast_buffers": False}
    assert strategy._ddp_comm_hook.__name__ == "bf16_compress_hook"
    before = torch._dynamo.config.optimize_ddp
    try:
        set_compile_ddp_mode(cfg)
        assert torch._dynamo.config.optimize_ddp == "no_optimization"
    finally:
        torch._dynamo.config.optimize_ddp = before
    # Settings that only change how gradients are reduced may change on resume; compression may not.
    assert {"trainer.ddp.bucket_cap_mb", "trainer.ddp.optimize_ddp"} <= set(RESUME_MAY_CHANGE)
    assert "trainer.ddp.comm_hook" not in RESUME_MAY_CHANGE


@pytest.mark.parametrize(("override", "key"), [
    ("trainer.ddp.bucket_cap_mb=0", "trainer.ddp.bucket_cap_mb"),
    ("trainer.ddp.comm_hook=powersgd", "trainer.ddp.comm_hook"),
    ("trainer.ddp.static_graph=maybe", "trainer.ddp.static_graph"),
    ("trainer.ddp.optimize_ddp=python_reducer", "trainer.ddp.optimize_ddp"),
    ("+trainer.ddp.bucket_size=1", "trainer.ddp.bucket_size"),
])
def test_bad_ddp_setting_names_its_key(override, key):
    cfg = compose_train(override)
    with pytest.raises(ConfigError, match=f"^{key}: "):
        resolve_trainer_settings(cfg)


def test_slurm_jobs_get_sigterm_before_the_time_limit(tmp_path, monkeypatch):
    # submitit's SLURM executor wants srun on the PATH; sbatch is never called here.
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    from hydra_plugins.flowhn_launcher.submitit_launchers import SlurmLauncher

    launcher = SlurmLauncher(submitit_folder=str(tmp_path / "%j"), timeout_min=60, nodes=1, tasks_per_node=2,
                             gpus_per_node=2, signal_delay_s=90, additional_parameters={})
    sbatch = launcher.executor()._executor._make_submission_file_text("python train.py", "uid")
    assert [ln for ln in sbatch.splitlines() if "--signal" in ln] == ["#SBATCH --signal=TERM@90"]


_JOB = """
import signal, sys, time
signal.signal(signal.SIGTERM, {handler})
print("ready", flush=True)
time.sleep(60)
"""


def test_the_launcher_gives_its_jobs_one_grace_then_kills_them():
    """Stopping jobs (time limit, SIGTERM or Ctrl-C to the sweep): SIGTERM to each job's processes,
    one stop_grace_s for all of them, then SIGKILL for what is left."""
    from hydra_plugins.flowhn_launcher.torchrun_launcher import TorchrunLauncher, _Running

    launcher = TorchrunLauncher(stop_grace_s=2)
    stops = subprocess.Popen([sys.executable, "-c", _JOB.format(handler="lambda *a: sys.exit(143)")],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    ignores = subprocess.Popen([sys.executable, "-c", _JOB.format(handler="signal.SIG_IGN")],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    for proc in (stops, ignores):
        assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    launcher._stop(*(_Running(None, proc, [], started, None) for proc in (stops, ignores)))
    elapsed = time.monotonic() - started
    assert stops.returncode == EXIT_SIGTERM and ignores.returncode == -signal.SIGKILL
    assert 2 <= elapsed < 4, elapsed
