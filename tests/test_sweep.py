"""Sweeps: job identity and grids (fast), then real sweeps of train.py on CPU (slow).

The slow tests drive the real ``sweep.py`` and ``train.py -m`` in subprocesses: tiny model,
a few steps on the shipped corpus, CSV logging only.
"""

import csv
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from flowhn.errors import ConfigError
from flowhn.sweeping import decide, failure_headline, identity, job_name, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sweep  # noqa: E402  (sweep.py is a script at the repo root)

# Small enough for ~10 s per job on two CPU cores; throughput windows of one step so TPS exists.
TINY = [
    "scale=tiny", "logger=csv", "data=embedded", "data.seq_len=32", "data.batch_size=2",
    "trainer.accelerator=cpu", "trainer.max_steps=4", "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
    "callbacks.throughput.warmup_steps=1", "callbacks.throughput.window=1",
]  # fmt: skip


def run(args, cwd, timeout=600):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_results(sweep_dir):
    with open(sweep_dir / "results.csv", newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


# -- job identity, skipping and grids (no training) -----------------------------------------


def test_job_identity_ignores_launch_and_logging_keys():
    a = identity(["split=fac_split", "scale=tiny", "++meta.group=x", "hydra.run.dir=/a", "logger=csv"])
    b = identity(["scale=tiny", "split=fac_split", "meta.tags=[a]"])
    assert a == b == ["scale=tiny", "split=fac_split"]
    assert job_name({"split": "fac_split", "scale": "135m"}) == "scale=135m,split=fac_split"
    # Nothing swept: named by all identity overrides; unsafe characters and long names are tamed.
    assert job_name({}, ["data.sources=/x/y z", "++meta.group=g"]) == "data.sources=_x_y_z"
    long = job_name({"k": "v" * 300})
    assert len(long) <= 120 and long != job_name({"k": "v" * 299})


def test_decide_skips_completed_reruns_failed_and_refuses_clashes(tmp_path):
    job = tmp_path / "split=fac_split"
    ident = ["split=fac_split"]
    assert decide(job, ident).action == "run"
    job.mkdir()
    write_json(job / "job.json", {"identity": ident})
    write_json(job / "summary.json", {"status": "failed", "error": "boom"})
    assert decide(job, ident).action == "run"
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert decide(job, ident).action == "resume"
    write_json(job / "summary.json", {"status": "completed"})
    assert decide(job, ident).action == "skip"
    clash = decide(job, ["split=fac_split", "trainer.max_steps=9"])
    assert clash.action == "conflict" and "trainer.max_steps=9" in clash.reason


def test_failure_headline_finds_the_exception_line():
    log = "step 1\nTraceback (most recent call last):\n  File x\nRuntimeError: it broke\n\nexit\n"
    assert failure_headline(log) == "RuntimeError: it broke"
    assert failure_headline("a\nb\nc\nd\n") == "b | c | d"
    assert failure_headline("") == "no output"
    torchrun = "config error: trainer.devices: bad\nconfig error: trainer.devices: bad\n" + (
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n=====\nRoot Cause\n")
    assert failure_headline(torchrun) == "config error: trainer.devices: bad"


def test_named_grids_expand_to_one_multirun_per_grid(tmp_path):
    runs = sweep.grid_runs(["archs"], ["scale=tiny"])
    assert runs == [
        ["model=choice(llama,mamba,mamba2,jamba,shm,hymba)", "scale=tiny"],
        ["model=choice(flowhn)", "split=choice(no_split,ae_split,fa_split,fac_split)", "scale=tiny"],
    ]
    # Several names multiply; the command line replaces a grid's axis of the same key.
    runs = sweep.grid_runs(["split_ablation", "scales"], ["scale=tiny"])
    assert runs == [["model=flowhn", "split=choice(no_split,ae_split,fa_split,fac_split)", "scale=tiny"]]
    table1 = sweep.grid_runs(["table1"], [])
    assert len(table1) == 4 and all(r[0] == "experiment=table1" for r in table1)
    budgets = {r[-2] for r in table1}
    assert budgets == {"train_tokens=1000000000", "train_tokens=2000000000"}
    with pytest.raises(ConfigError, match="sweep=nope"):
        sweep.grid_runs(["nope"], [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("grids: {split: [a]}\n")
    with pytest.raises(ConfigError, match="needs 'grids:'"):
        sweep.grid_runs([str(bad)], [])


def test_sweep_names_are_stable_and_tell_overrides_apart():
    args = sweep.argparse.Namespace(name=None)
    assert sweep.sweep_name(args, [], ["experiment=split_ablation"]) == "split_ablation"
    with_extra = sweep.sweep_name(args, [], ["experiment=split_ablation", "scale=tiny"])
    assert with_extra.startswith("split_ablation-") and with_extra != "split_ablation"
    assert with_extra == sweep.sweep_name(args, [], ["scale=tiny", "experiment=split_ablation"])
    assert sweep.sweep_name(args, ["table1"], ["++meta.tags=[x]"]) == "table1"


def test_every_study_composes_with_its_grid():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for study, axes in {
            "split_ablation": {"split"},
            "fusion_ablation": {"fusion", "split"},
            "ssm_ablation": {"model.ssm", "split"},
            "seqlen_study": {"data.seq_len", "split"},
        }.items():
            for variant in (study, f"{study}_smoke"):
                cfg = compose("train", overrides=[f"experiment={variant}"], return_hydra_config=True)
                assert set(cfg.hydra.sweeper.params) == axes, variant
                assert cfg.model.name == "flowhn"
                assert cfg.scale.name == ("tiny" if variant.endswith("smoke") else "135m")
                assert cfg.train_tokens == (None if variant.endswith("smoke") else 1_000_000_000)
        cfg = compose("train", overrides=["experiment=table1"])
        assert (cfg.data.seq_len, cfg.eval.tasks[0]) == (1024, "arc_easy")


def test_slurm_launcher_gets_one_task_per_gpu(tmp_path, monkeypatch):
    """SLURM cannot run here: compose the launcher as Hydra would and read the sbatch script
    submitit would submit (a stand-in ``srun`` on PATH lets submitit build its executor)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
            f"hydra.sweep.dir={tmp_path}",
        ])  # fmt: skip
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)  # the launcher's ${hydra:...} values resolve from it
    try:
        launcher = instantiate(cfg.hydra.launcher)
    finally:
        HydraConfig.instance().cfg = saved
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert (params["nodes"], params["gpus_per_node"], params["tasks_per_node"]) == (2, 4, 4)
    assert (params["partition"], params["timeout_min"]) == ("gpu", 90)

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    sbatch = launcher.executor()._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=90"):
        assert f"#SBATCH {line}" in sbatch, line


# -- real sweeps (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir():
    # Not pytest's tmp_path: a pytest session started meanwhile (the suite runs in parallel on a
    # shared machine) prunes older basetemp folders, and these runs span minutes.
    with tempfile.TemporaryDirectory(prefix="flowhn-sweep-test-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def first_sweep(workdir):
    """Five jobs from three grids into one sweep folder: the fa_split job raises at step 2, the
    fusion=mean job is SIGKILLed at step 2 (as by the OOM killer: no summary of its own)."""
    tmp = workdir
    grid = tmp / "grid.yaml"
    grid.write_text(textwrap.dedent("""
        grids:
          - split: [no_split, ae_split, fac_split]
          - split: [fa_split]
            debug.fail_at_step: 2
          - split: [no_split]
            fusion: [mean]
            debug.kill_at_step: 2
    """))
    args = ["sweep.py", f"sweep={grid}", "--root", str(tmp), "--name", "smoke", *TINY, "eval=fixtures", "eval.limit=2"]
    proc = run(args, cwd=ROOT)
    return {"args": args, "dir": tmp / "smoke", "proc": proc}


@pytest.fixture(scope="module")
def second_sweep(first_sweep):
    """The same command again, with the first run's file times noted."""
    sweep_dir = first_sweep["dir"]
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}
    before.update({p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/job.log")})
    proc = run(first_sweep["args"], cwd=ROOT)
    return {"proc": proc, "before": before}


@pytest.mark.slow
def test_sweep_records_the_failure_and_completes_the_rest(first_sweep):
    proc, sweep_dir = first_sweep["proc"], first_sweep["dir"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_results(sweep_dir)
    assert sorted(rows) == [
        "fusion=mean,split=no_split", "split=ae_split", "split=fa_split", "split=fac_split", "split=no_split"]
    failed = rows.pop("split=fa_split")
    assert failed["status"] == "failed"
    assert "debug.fail_at_step=2" in failed["error"] and failed["val_loss"] == ""
    assert "RuntimeError" in (sweep_dir / "split=fa_split" / "job.log").read_text()
    killed = rows.pop("fusion=mean,split=no_split")
    assert killed["status"] == "failed" and "killed by SIGKILL" in killed["error"]
    for name, row in rows.items():
        assert row["status"] == "completed" and row["error"] == "", name
        assert row["split"] == name.split("=")[1] and row["arch"] == "flowhn"
        assert 0 < float(row["val_loss"]) < 20 and float(row["tps"]) > 0
        assert int(row["steps"]) == 4 and int(row["params"]) > 0
        accs = [float(row[t]) for t in ("arc_e", "arc_c", "wino", "piqa", "hella", "boolq")]
        assert all(0 <= a <= 1 for a in accs) and float(row["eval_avg"]) == pytest.approx(sum(accs) / 6)
        summary = json.loads((sweep_dir / name / "summary.json").read_text())
        assert summary["run_dir"] == str(sweep_dir / name)
        hydra_overrides = (sweep_dir / name / ".hydra" / "overrides.yaml").read_text()
        assert "meta.group" in hydra_overrides and "meta.job_type=sweep" in hydra_overrides
        assert list(OmegaConf.load(sweep_dir / name / ".hydra" / "config.yaml").meta.tags) == [name]
        assert any((sweep_dir / name / "csv").rglob("metrics.csv"))


@pytest.mark.slow
def test_rerun_skips_finished_jobs_and_reruns_the_failed_one(first_sweep, second_sweep):
    proc, before, sweep_dir = second_sweep["proc"], second_sweep["before"], first_sweep["dir"]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    for name in ("split=no_split", "split=ae_split", "split=fac_split"):
        assert f"skipped {name} (completed)" in out, out[-4000:]
        for f in ("summary.json", "job.log"):
            path = sweep_dir / name / f
            assert path.stat().st_mtime_ns == before[path], path
    for name in ("split=fa_split", "fusion=mean,split=no_split"):
        rerun = sweep_dir / name
        assert (rerun / "job.log").stat().st_mtime_ns > before[rerun / "job.log"]
        assert (rerun / "job.prev.log").exists()
    rows = read_results(sweep_dir)
    assert [rows[n]["status"] for n in sorted(rows)] == ["failed", "completed", "failed", "completed", "completed"]


@pytest.mark.slow
def test_report_renders_the_sweep(first_sweep, second_sweep):
    sweep_dir = first_sweep["dir"]
    proc = run(["-m", "flowhn.report", str(sweep_dir)], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = sweep_dir / "report"
    for name in ("table.md", "table.csv", "tps_mfu.png", "perf_curves.png", "loss_curves.png"):
        assert (report / name).stat().st_size > 0, name
    md = (report / "table.md").read_text()
    for label in ("No_Split", "AE_Split", "FAC_Split"):
        assert f"| {label} |" in md
    assert "## Not completed" in md and "split=fa_split" in md
    with open(report / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["No_Split", "No_Split (fusion=mean)", "AE_Split", "FA_Split", "FAC_Split"]
    results = read_results(sweep_dir)
    for r in table:
        assert r["val_loss"] == results[r["job"]]["val_loss"]


@pytest.mark.slow
def test_changed_config_file_is_refused_before_any_work(first_sweep, second_sweep):
    """A finished job whose recorded config_hash no longer matches its config must not be
    skipped (stale) nor resumed (wrong weights): the sweep stops at planning."""
    summary_path = first_sweep["dir"] / "split=no_split" / "summary.json"
    summary = json.loads(summary_path.read_text())
    write_json(summary_path, {**summary, "config_hash": "0" * 64})
    proc = run([*first_sweep["args"], "--dry-run"], cwd=ROOT)
    assert proc.returncode != 0
    assert "config_hash" in proc.stdout + proc.stderr and "a config file changed" in proc.stdout + proc.stderr
    write_json(summary_path, summary)


@pytest.mark.slow
def test_two_device_job_runs_under_torchrun_without_hanging(tmp_path):
    """Hydra's own multirun with several devices: the launcher starts torchrun (gloo DDP on CPU)."""
    proc = run(["train.py", "-m", "hydra/launcher=torchrun", f"hydra.sweep.dir={tmp_path}",
                "trainer.devices=2", "split=choice(fac_split)", *TINY], cwd=ROOT, timeout=420)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_results(tmp_path)
    assert list(rows) == ["split=fac_split"]
    row = rows["split=fac_split"]
    assert row["status"] == "completed" and row["num_devices"] == "2"
    assert 0 < float(row["val_loss"]) < 20
    command = json.loads((tmp_path / "split=fac_split" / "job.json").read_text())["command"]
    assert command[1:4] == ["-m", "hydra_plugins.flowhn_launcher.torchrun_launcher", "--standalone"]  # torchrun
    assert "--nproc_per_node=2" in command
    # Metrics are reduced across the ranks: global TPS is the sum over the two devices.
    summary = json.loads((tmp_path / "split=fac_split" / "summary.json").read_text())
    assert summary["num_devices"] == 2 and summary["tps"] == pytest.approx(2 * summary["tps_per_device"])
    assert summary["tokens"] == 4 * 2 * 32 * 2  # steps × batch × seq_len × ranks
    # Checkpoints are written once, by rank 0 (4 steps: no periodic file yet), no per-rank copies.
    checkpoints = sorted(p.name for p in (tmp_path / "split=fac_split" / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"], checkpoints


@pytest.mark.slow
def test_job_past_its_time_limit_is_stopped_with_its_workers(tmp_path):
    """A job that runs too long (here: torchrun and two DDP workers) is ended as a whole
    process group and recorded as failed; the sweep itself returns. 12 s: torchrun has started both
    workers by then (about 6 s in, with the other pytest worker busy on the second core)."""
    proc = run(["train.py", "-m", "hydra/launcher=torchrun", f"hydra.sweep.dir={tmp_path}",
                "hydra.launcher.timeout_min=0.2", "hydra.launcher.stop_grace_s=2", "trainer.devices=2",
                "split=choice(no_split)",
                *TINY, "trainer.max_steps=100000"], cwd=ROOT, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    row = read_results(tmp_path)["split=no_split"]
    # "stopped" when train.py saved last.ckpt within the 2 s grace (resumable), else "failed".
    assert row["status"] in ("failed", "stopped")
    assert row["error"].startswith("stopped after hydra.launcher.timeout_min=0.2 (see job.log)")
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(tmp_path).encode() in cmdline.read_bytes():
                leftovers.append(cmdline.parent.name)
        except OSError:
            pass  # the process ended while we looked
    assert leftovers == []


@pytest.mark.slow
def test_slurm_code_path_runs_with_submitit_local_executor(tmp_path):
    """The SLURM launcher's own code (planning, submitit pickling, Hydra's run_job in the job,
    results) on submitit's local executor: what runs on a cluster, minus sbatch."""
    proc = run(["train.py", "-m", "hydra/launcher=slurm_local", f"hydra.sweep.dir={tmp_path}",
                "split=choice(fac_split)", *TINY], cwd=ROOT, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = read_results(tmp_path)["split=fac_split"]
    assert row["status"] == "completed" and 0 < float(row["val_loss"]) < 20
    assert row["run_dir"] == str(tmp_path / "split=fac_split")
    assert "local job" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_parallel_jobs_get_their_own_gpu_groups(tmp_path):
    """hydra/launcher=local_parallel hands each job its own trainer.devices GPUs. Without GPUs
    the jobs then stop at train.py's device check, which is enough to see the hand-out and that
    a job's config error is recorded as its failure."""
    proc = run(["train.py", "-m", "hydra/launcher=local_parallel", f"hydra.sweep.dir={tmp_path}",
                "hydra.launcher.gpus=[0,1,2,3]", "trainer.accelerator=gpu", "trainer.devices=2",
                "split=no_split,ae_split", *TINY[:2]], cwd=ROOT, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "2 at a time" in out, out[-3000:]
    records = [json.loads((tmp_path / f"split={s}" / "job.json").read_text()) for s in ("no_split", "ae_split")]
    assert sorted(r["gpus"] for r in records) == [["0", "1"], ["2", "3"]]
    for row in read_results(tmp_path).values():
        assert row["status"] == "failed" and row["error"].startswith("config error: trainer.accelerator"), row


def test_kernel_parity_sweeps_the_ssm_backend_over_seeds():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=kernel_parity"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert dict(params) == {"seed": "0,1", "split": "fac_split", "model.ssm_backend": "triton,torch"}
    assert (cfg.model.name, cfg.scale.name, cfg.trainer.max_steps, cfg.compile) == ("flowhn", "135m", 200, False)
    assert cfg.data.sources is None and cfg.train_tokens is None  # the shipped corpus
