"""What ``train.py`` does: check the config, build data/model/trainer, fit, evaluate, summarise.

Everything that can be checked is checked before the first file is written, so a bad config or
data file ends the run with one line naming the key or file and leaves earlier outputs alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf, open_dict

from flowhn import build_model
from flowhn.errors import ConfigError, require
from flowhn.training.module import CausalLMModule

log = logging.getLogger(__name__)

# Keys that say where or how a run is logged, not what it computes: left out of config_hash.
UNHASHED_KEYS = ("paths", "logger", "meta", "hydra", "ckpt_path", "callbacks", "debug")


def config_hash(cfg: DictConfig) -> str:
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in UNHASHED_KEYS:
        container.pop(key, None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()


def world_size(cfg: DictConfig) -> int:
    devices = cfg.trainer.devices
    return (devices if isinstance(devices, int) else 1) * cfg.trainer.num_nodes


def resolve_trainer_settings(cfg: DictConfig) -> None:
    """Fill the "auto" values and the token budget, and refuse device counts that can't be had."""
    t = cfg.trainer
    require(isinstance(t.devices, int) and t.devices > 0, "trainer.devices", f"must be a positive integer, got {t.devices!r}")
    cuda = torch.cuda.is_available()
    if t.accelerator in ("gpu", "cuda"):
        require(cuda, "trainer.accelerator", "gpu requested but no CUDA device is visible")
    use_gpu = cuda and t.accelerator in ("auto", "gpu", "cuda")
    if use_gpu:
        require(t.devices <= torch.cuda.device_count(), "trainer.devices",
                f"{t.devices} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    with open_dict(cfg):
        t.accelerator = "gpu" if use_gpu else "cpu"
        if t.precision == "auto":
            t.precision = "bf16-mixed" if use_gpu else "32-true"
        if cfg.compile == "auto":
            cfg.compile = use_gpu
        batch = cfg.data.batch_size
        require(isinstance(batch, int) and batch > 0, "data.batch_size", f"must be a positive integer, got {batch!r}")
        if cfg.train_tokens:
            per_step = batch * cfg.data.seq_len * world_size(cfg) * t.accumulate_grad_batches
            t.max_steps = math.ceil(cfg.train_tokens / per_step)
        require(isinstance(t.max_steps, int) and t.max_steps > 0, "trainer.max_steps", f"must be positive, got {t.max_steps!r}")


def check_model(cfg: DictConfig) -> None:
    """Build the model on the meta device: every dim and layout check runs, nothing is allocated."""
    with torch.device("meta"):
        build_model(cfg)


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.ckpt_path in (None, "auto"):
        return str(last) if last.exists() else None
    if cfg.ckpt_path == "last":
        require(last.exists(), "ckpt_path", f"'last' asked for but {last} does not exist")
        return str(last)
    require(Path(cfg.ckpt_path).is_file(), "ckpt_path", f"checkpoint file {cfg.ckpt_path} does not exist")
    return str(cfg.ckpt_path)


def instantiate_checked(node):
    """``instantiate`` that lets our one-line ``ConfigError`` through instead of Hydra's wrapper."""
    try:
        return instantiate(node)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


def make_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, spec in (cfg.get("logger") or {}).items():
        if name == "wandb":
            spec = OmegaConf.to_container(spec, resolve=True)
            mode = spec.pop("mode", "auto")
            if mode == "auto":
                mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            # Offline unless there is a key: a run must never wait on a login or the network.
            loggers.append(instantiate(spec, offline=mode == "offline", settings={"init_timeout": 60, "silent": True}))
        else:
            loggers.append(instantiate(spec))
    return loggers


def make_strategy(cfg: DictConfig):
    multi = world_size(cfg) > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if not multi:
        return "auto"
    backend = "nccl" if cfg.trainer.accelerator == "gpu" else "gloo"
    return DDPStrategy(process_group_backend=backend, timeout=timedelta(seconds=cfg.trainer.ddp_timeout_s))


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, loggers: list) -> L.Trainer:
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    t.pop("_target_", None)
    t.pop("ddp_timeout_s", None)
    return L.Trainer(
        **t, strategy=make_strategy(cfg), callbacks=callbacks, logger=loggers or False,
        default_root_dir=str(run_dir), enable_progress_bar=True,
    )


def write_summary(run_dir: Path, summary: dict) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, run_dir / "summary.json")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate one configuration; returns the summary written to summary.json."""
    started = time.time()
    resolve_trainer_settings(cfg)
    check_model(cfg)
    from flowhn.evaluation import check_eval_config

    check_eval_config(cfg.eval)
    ckpt = resume_path(cfg, run_dir)
    datamodule = instantiate_checked(cfg.data)
    tokenizer = datamodule.prepare()  # data errors (missing/empty/corrupt files) surface here
    from flowhn.data import check_vocab

    check_vocab(tokenizer, cfg.scale.vocab_size)

    L.seed_everything(cfg.seed, workers=True)
    module = CausalLMModule(OmegaConf.to_container(cfg, resolve=True))
    if cfg.compile:
        for block in module.model.layers:
            block.compile()
    callbacks = [instantiate_checked(c) for c in (cfg.get("callbacks") or {}).values()]
    throughput = next((c for c in callbacks if hasattr(c, "summary")), None)
    base = {
        "status": "running", "error": None, "arch": cfg.model.name, "scale": cfg.scale.name,
        "split": cfg.split.name if module.model.config.get("split") else None,
        "fusion": cfg.fusion.name if module.model.config.get("fusion") else None,
        "params": module.model.num_params(), "flops_per_token": module.flops_per_token,
        "split_ratio": module.model.split_ratio, "config_hash": config_hash(cfg), "run_dir": str(run_dir),
    }
    loggers = make_loggers(cfg)
    trainer = build_trainer(cfg, run_dir, callbacks, loggers)
    is_zero = trainer.is_global_zero
    if is_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(run_dir / "tokenizer"))
        write_summary(run_dir, base)
        log.info("%s: %.2fM parameters, %.3f GFLOPs/token (train), split ratio %s",
                 cfg.meta.name, base["params"] / 1e6, base["flops_per_token"] / 1e9, base["split_ratio"])
    for lg in loggers:
        lg.log_hyperparams({"params": base["params"], "flops_per_token": base["flops_per_token"], "split_ratio": base["split_ratio"]})
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        val = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        evaluation = {}
        if cfg.eval.get("tasks"):
            from flowhn.evaluation import evaluate_module

            evaluation = evaluate_module(module, tokenizer, cfg.eval, trainer)
        perf = throughput.summary() if throughput is not None else {}
        summary = {
            **base, "status": "completed",
            "tps": perf.get("tps"), "tps_per_device": perf.get("tps_per_device"), "mfu": perf.get("mfu"),
            "step_time_ms": perf.get("step_time_ms"), "max_mem_gib": perf.get("max_mem_gib"),
            "val_loss": val.get("val/loss"), "val_ppl": val.get("val/ppl"), "val_token_acc": val.get("val/token_acc"),
            "steps": trainer.global_step,
            "tokens": int(trainer.global_step * cfg.data.batch_size * cfg.data.seq_len * trainer.world_size
                          * cfg.trainer.accumulate_grad_batches) if perf.get("tokens") is None else perf["tokens"],
            "device": torch.cuda.get_device_name() if cfg.trainer.accelerator == "gpu" else "cpu",
            "num_devices": trainer.world_size,
            "eval": {k: v for k, v in evaluation.items() if k != "avg"}, "eval_avg": evaluation.get("avg"),
            "wall_time_s": time.time() - started,
        }
        for lg in loggers:
            if hasattr(lg, "experiment") and lg.__class__.__name__ == "WandbLogger" and is_zero:
                lg.experiment.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        if is_zero:
            write_summary(run_dir, summary)
        return summary
    except BaseException as exc:
        if is_zero:
            write_summary(run_dir, {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                    "steps": trainer.global_step, "wall_time_s": time.time() - started})
        raise
    finally:
        finish_wandb(loggers)


def finish_wandb(loggers: list) -> None:
    """One W&B run per job: close it so the next job in the same process starts a new one."""
    if any(lg.__class__.__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
