"""End to end: ``python train.py`` with the default config writes every artifact it promises,
logs to W&B offline when there is no key, and every split strategy learns."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import (ARCHS, DEFAULT_RUN_BATCH, DEFAULT_RUN_OVERRIDES, DEFAULT_RUN_SEQ_LEN, DEFAULT_RUN_STEPS, SPLITS,
                      small_cfg)
from omegaconf import OmegaConf
from test_reliability import metric, train_cfg

import flowhn
from flowhn.training.run import run

# The shortened default run of conftest.default_train_py_run (the split runs below start from it too).
STEPS, SEQ_LEN, BATCH, SHORT = DEFAULT_RUN_STEPS, DEFAULT_RUN_SEQ_LEN, DEFAULT_RUN_BATCH, DEFAULT_RUN_OVERRIDES


@pytest.mark.slow
def test_default_train_py_run_writes_every_artifact(default_train_py_run):
    # No key and no WANDB_MODE: the W&B logger must go offline by itself and never wait on a login.
    run_dir, proc = default_train_py_run
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert (run_dir / ".hydra" / "config.yaml").is_file()
    resolved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    assert "${" not in (run_dir / "config.yaml").read_text()
    assert resolved["model"]["name"] == "flowhn" and resolved["data"]["seq_len"] == SEQ_LEN
    # compile: auto and compile_mode: auto resolve to off on the CPU, and the run says so
    assert resolved["compile"] is False and resolved["compile_mode"] is None
    assert re.search(r"GFLOPs/token \(train\), split ratio [0-9.]+, not compiled\n", (run_dir / "train.log").read_text())
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == STEPS and last["hyper_parameters"]["cfg"] == resolved
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "perf/tps"} <= set(header)
    assert len(metric(run_dir)) == STEPS // 10  # the default log_every_n_steps is 10
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))

    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["error"] is None
    assert s["steps"] == STEPS and s["tokens"] == STEPS * BATCH * SEQ_LEN  # packed: every token is real
    assert s["device"] == "cpu" and s["num_devices"] == 1 and s["mfu"] is None
    assert s["params"] > 0 and s["flops_per_token"] > 0 and s["tps"] > 0
    assert 0 < s["val_loss"] < 9 and s["val_ppl"] == pytest.approx(float(torch.tensor(s["val_loss"]).exp()), rel=1e-5)
    assert 0 <= s["val_token_acc"] <= 1


@pytest.mark.parametrize("split", SPLITS)
def test_every_split_lowers_the_training_loss(split, tmp_path):
    cfg = train_cfg(tmp_path, f"split={split}", *SHORT, "data.batch_size=4", "data.seq_len=32",
                    "trainer.val_check_interval=30", "trainer.limit_val_batches=1",
                    "callbacks.checkpoint.every_n_train_steps=30")
    summary = run(cfg, tmp_path)
    losses = [v for _, v in sorted(metric(tmp_path).items())]
    assert summary["split"] == split and len(losses) == STEPS
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, f"{split}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("arch", ARCHS)
def test_build_model_returns_logits(arch):
    cfg = small_cfg(arch)
    model = flowhn.build_model(cfg)
    ids = torch.randint(0, cfg.scale.vocab_size, (2, cfg.data.seq_len))
    logits = model(ids)
    assert logits.shape == (2, cfg.data.seq_len, cfg.scale.vocab_size) and logits.is_floating_point()
    assert torch.isfinite(logits).all()
