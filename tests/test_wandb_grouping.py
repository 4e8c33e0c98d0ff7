"""A sweep's W&B runs are grouped: group = the sweep's name, job_type "sweep", one tag per swept
key=value. Checked on the files W&B writes offline (what ``wandb sync`` uploads), read back with
the SDK's own record messages, for the jobs the launcher plans (its real overrides), through
train.py's own logger construction (``make_loggers``) and the logger config (conf/logger/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_sweeps_offline_wandb_runs_carry_its_group_job_type_and_axis_tags(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from lightning.pytorch.loggers import WandbLogger

    from flowhn.report.runs import load_run
    from flowhn.report.wandb_offline import offline_runs
    from flowhn.training.run import finish_wandb, make_loggers

    sweep, plan = tmp_path / "grouping_sweep", tmp_path / "plan.json"
    # The launcher's plan of a 2-job sweep with two swept keys (fusion swept over one value).
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "split=no_split,fac_split", "fusion=choice(mean)",
         "hydra/launcher=torchrun", f"hydra.sweep.dir={sweep}", f"++hydra.launcher.plan_file={plan}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = json.loads(plan.read_text())["jobs"]
    assert sorted(j["name"] for j in jobs) == ["fusion=mean,split=fac_split", "fusion=mean,split=no_split"]

    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no key: offline, as on a cluster without network
    monkeypatch.setenv("WANDB_SILENT", "true")
    names = {}
    for job in jobs:
        job_dir = Path(job["dir"])
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*job["overrides"], f"paths.output_dir=\"{job_dir}\""])
        loggers = make_loggers(cfg)
        (wandb_logger,) = [lg for lg in loggers if isinstance(lg, WandbLogger)]
        for step in range(400):  # enough rows for the file to cross W&B's 32 KiB record blocks
            wandb_logger.log_metrics({"train/loss": 2.5 + step, "perf/tps": 1000.0}, step=step)
        finish_wandb(loggers)
        names[job["name"]] = cfg.meta.name

    for job in jobs:
        (run,) = offline_runs(job["dir"])
        assert run.group == "grouping_sweep" and run.job_type == "sweep"
        assert sorted(run.tags) == sorted(f"{k}={v}" for k, v in job["axes"].items())
        assert run.project == "flowhn-lab" and run.name == names[job["name"]]
        # every row back, also those whose record was cut at a block boundary
        assert run.path.stat().st_size > 2 * 32 * 1024
        logged = [(row["trainer/global_step"], row["train/loss"]) for row in run.history if "train/loss" in row]
        assert logged == [(step, 2.5 + step) for step in range(400)]
        # the report shows the same grouping, and the folder wandb sync takes
        (shown,) = load_run(Path(job["dir"])).wandb
        assert shown["group"] == "grouping_sweep" and Path(shown["offline_dir"]) == run.run_dir
        assert run.run_dir.name.startswith("offline-run-")
