"""What ``train.py`` does: check the config, build data/model/trainer, fit, evaluate, summarise.

Everything that can be checked is checked before the first file is written, so a bad config or
data file ends the run with one line naming the key or file and leaves earlier outputs alone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from flowhn.errors import ConfigError, error_line, require
from flowhn.perf.throughput import ThroughputMonitor
from flowhn.training.callbacks import AgreedStop, FaultInjection, FirstStepTimer
from flowhn.training.checkpointing import AtomicCheckpointIO
from flowhn.training.checks import (
    DDP_COMM_HOOKS, OPTIMIZE_DDP, RESUME_MAY_CHANGE, UNHASHED_KEYS, check_config, config_differences, config_hash,
    ddp_settings, world_size,
)
from flowhn.training.module import CausalLMModule
from flowhn.training.optimizer import fp32_allreduce_hook

log = logging.getLogger(__name__)


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.ckpt_path in (None, "auto"):
        return str(last) if last.exists() else None
    if cfg.ckpt_path == "last":
        require(last.exists(), "ckpt_path", f"'last' asked for but {last} does not exist")
        return str(last)
    require(Path(cfg.ckpt_path).is_file(), "ckpt_path", f"checkpoint file {cfg.ckpt_path} does not exist")
    return str(cfg.ckpt_path)


def check_resume(cfg: DictConfig, ckpt: str) -> None:
    """A resume must continue the same experiment: refuse unreadable checkpoints and checkpoints
    trained with a config that differs in anything that shapes training."""
    from flowhn.safe_load import load_checkpoint  # weights_only=True, with a one-line refusal of code

    try:
        saved = load_checkpoint(ckpt, mmap=True)
    except Exception as exc:
        raise ConfigError(f"ckpt_path: cannot read checkpoint {ckpt}: {error_line(exc)}") from None
    old = (saved.get("hyper_parameters") or {}).get("cfg") if isinstance(saved, dict) else None
    require(isinstance(old, dict), "ckpt_path", f"{ckpt} is not a flowhn training checkpoint (no hyper_parameters.cfg)")
    diffs = config_differences(old, OmegaConf.to_container(cfg, resolve=True), UNHASHED_KEYS + RESUME_MAY_CHANGE)
    require(not diffs, "ckpt_path",
            f"{ckpt} was trained with another config ({'; '.join(diffs[:5])}{'; ...' if len(diffs) > 5 else ''}); "
            "resume with the same config, or start a new run dir")


def completed_summary(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The summary of a run already completed in ``run_dir`` with this config, which is then
    not run again; a completed run of another config there is an error, not something to overwrite."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "completed":
        return None
    if summary.get("config_hash") != config_hash(cfg):
        differing = "config_hash differs"
        if (run_dir / "config.yaml").is_file():
            old = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
            diffs = config_differences(old, OmegaConf.to_container(cfg, resolve=True), UNHASHED_KEYS)
            differing = "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else "") or differing
        raise ConfigError(f"hydra.run.dir: {run_dir} holds a completed run of another config ({differing}); "
                          "choose a new run dir")
    return summary


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
            logger = instantiate(spec, offline=mode == "offline", settings={"init_timeout": 60, "silent": True})
            # Lightning passes anonymous=None to wandb.init, and wandb warns about the setting whatever
            # its value ("The anonymous setting has no effect"); leaving the key out keeps wandb's default.
            logger._wandb_init.pop("anonymous", None)
            loggers.append(logger)
        else:
            loggers.append(instantiate(spec))
    return loggers


def make_strategy(cfg: DictConfig):
    multi = world_size(cfg) > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if not multi:
        return "auto"
    backend = "nccl" if cfg.trainer.accelerator == "gpu" else "gloo"
    ddp = ddp_settings(cfg)
    hook = DDP_COMM_HOOKS[ddp["comm_hook"]]
    if hook is not None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        hook = getattr(default_hooks, hook)
    elif cfg.optim.get("master_weights") is True:
        # bf16 weights have bf16 gradients: averaged in fp32, as autocast's fp32 weights' gradients were.
        hook = fp32_allreduce_hook
    return DDPStrategy(
        process_group_backend=backend, timeout=timedelta(seconds=cfg.trainer.ddp_timeout_s),
        bucket_cap_mb=ddp["bucket_cap_mb"], gradient_as_bucket_view=ddp["gradient_as_bucket_view"],
        static_graph=ddp["static_graph"], ddp_comm_hook=hook,
        # The models' only buffers are RoPE tables every rank computes alike (nn.attention.RotaryTables):
        # nothing to broadcast from rank 0 before every forward.
        broadcast_buffers=False,
    )


def set_compile_ddp_mode(cfg: DictConfig) -> None:
    """How torch.compile treats a DDP-wrapped model; read when the model is first traced, so set
    before the first step. (Each rank compiles on its own; they share the per-user inductor cache,
    /tmp/torchinductor_<user> by default, on one host, so nothing is to be shared by hand.)"""
    mode = OPTIMIZE_DDP[ddp_settings(cfg)["optimize_ddp"]]
    torch._dynamo.config.optimize_ddp = mode


def stop_grace_s() -> float:
    """Seconds a stopping run has between SIGTERM and its launcher's SIGKILL: the launcher's
    ``stop_grace_s`` (torchrun, and plain ``python train.py``, whose config names that launcher),
    SLURM's ``signal_delay_s`` (``--signal=TERM@<s>``), else 60."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        launcher = HydraConfig.get().get("launcher") or {}
        for key in ("stop_grace_s", "signal_delay_s"):
            if launcher.get(key) is not None:
                return float(launcher.get(key))
    return 60.0


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, loggers: list) -> L.Trainer:
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in ("_target_", "ddp_timeout_s", "ddp"):
        t.pop(key, None)
    trainer = L.Trainer(
        **t, strategy=make_strategy(cfg), callbacks=callbacks, logger=loggers or False,
        default_root_dir=str(run_dir), enable_progress_bar=True, plugins=[AtomicCheckpointIO()],
    )
    for stop in (c for c in callbacks if isinstance(c, AgreedStop)):
        stop.attach(trainer)
    return trainer


def write_summary(run_dir: Path, summary: dict) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, run_dir / "summary.json")


def run(cfg: DictConfig, run_dir: Path, config_checked: bool = False) -> dict:
    """Train and evaluate one configuration; returns the summary written to summary.json.

    ``config_checked``: the caller has run ``check_config`` on this ``cfg`` already (train.py does, before
    it imports Lightning); a second call would change nothing and only build the model on the meta
    device again."""
    started = time.time()
    # First: a SIGTERM while the data or the model is being prepared is then acted on at the first step.
    stop = AgreedStop(grace_s=stop_grace_s(), timeout_s=cfg.trainer.ddp_timeout_s)
    stop.install()
    if not config_checked:
        check_config(cfg)
    if cfg.eval.get("tasks"):  # lm-eval is imported only by runs that evaluate
        try:
            from flowhn.evaluation import check_eval_config
        except ModuleNotFoundError as missing:
            raise ConfigError(
                f"eval.tasks: zero-shot evaluation needs lm-eval, and {missing.name!r} does not import: "
                "pip install lm-eval (or eval=default to train without it)"
            ) from missing
        check_eval_config(cfg.eval)
    datamodule = instantiate_checked(cfg.data)
    tokenizer = datamodule.prepare()  # data errors (missing/empty/corrupt files) surface here
    from flowhn.data import check_vocab

    check_vocab(tokenizer, cfg.scale.vocab_size)
    if not datamodule.spec.is_hub:
        # Too few examples for one batch per device is found when the loader is built; build it
        # now, while nothing has been written. (setup is idempotent; fit reuses the datasets.)
        datamodule.setup("fit")
        datamodule.train_loader(0, world_size(cfg))
    callbacks = [instantiate_checked(c) for c in (cfg.get("callbacks") or {}).values()]
    faults = FaultInjection.from_config(cfg.get("debug"))
    if faults is not None:
        callbacks.append(faults)
    first_step = FirstStepTimer()
    callbacks += [stop, first_step]
    # After every input check, so a bad input is reported as itself, not as a config mismatch.
    done = completed_summary(cfg, run_dir)
    if done is not None:
        log.info("%s already holds a completed run of this config; nothing to do", run_dir)
        stop.uninstall()
        return done
    ckpt = resume_path(cfg, run_dir)
    if ckpt is not None:
        check_resume(cfg, ckpt)

    L.seed_everything(cfg.seed, workers=True)
    module = CausalLMModule(OmegaConf.to_container(cfg, resolve=True))
    if cfg.compile:
        set_compile_ddp_mode(cfg)
        module.compile_for_training(cfg.compile_scope, mode=cfg.get("compile_mode"))
    throughput = next((c for c in callbacks if isinstance(c, ThroughputMonitor)), None)
    base = {
        "status": "running", "error": None, "arch": cfg.model.name, "scale": cfg.scale.name,
        "split": cfg.split.name if module.model.config.get("split") else None,
        "fusion": cfg.fusion.name if module.model.config.get("fusion") else None,
        "params": module.model.num_params(), "flops_per_token": module.flops_per_token,
        "split_ratio": module.model.split_ratio, "config_hash": config_hash(cfg), "run_dir": str(run_dir),
    }
    loggers = make_loggers(cfg)
    trainer = build_trainer(cfg, run_dir, callbacks, loggers)

    def write_ended(status: str, error: str, **measured) -> None:
        """summary.json of a run that did not complete: how it ended, where, and what it measured until then."""
        write_summary(run_dir, {**base, "status": status, "error": error, "steps": trainer.global_step, **measured,
                                "num_devices": trainer.world_size, "wall_time_s": time.time() - started,
                                "first_step_s": first_step.seconds})

    is_zero = trainer.is_global_zero
    if is_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(run_dir / "tokenizer"))
        # .hydra/config.yaml keeps the interpolations; this is the config with every value as trained.
        OmegaConf.save(module.hparams["cfg"], run_dir / "config.yaml")
        write_summary(run_dir, base)
        stop.on_expire = lambda: write_ended(
            "stopped", f"SIGTERM: {stop.expired_reason}; exited without saving at step {trainer.global_step}: the "
            "same command resumes from the last checkpoint saved before the signal, if any, else starts over")
        compiled = (f"compiled ({cfg.compile_scope}, {cfg.compile_mode or 'default'} mode)" if cfg.compile
                    else "not compiled")
        log.info("%s: %.2fM parameters, %.3f GFLOPs/token (train), split ratio %s, %s",
                 cfg.meta.name, base["params"] / 1e6, base["flops_per_token"] / 1e9, base["split_ratio"], compiled)
    for lg in loggers:
        lg.log_hyperparams({"params": base["params"], "flops_per_token": base["flops_per_token"], "split_ratio": base["split_ratio"]})
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        # trainer.limit_val_batches=0 switches validation off: no final validation either (None in the summary).
        val = (trainer.validate(module, datamodule=datamodule, verbose=False) or [{}])[0]
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
            # Positions trained on (packing: all real tokens; pad mode counts the pads too).
            "tokens": trainer.global_step * cfg.data.batch_size * cfg.data.seq_len * trainer.world_size
            * cfg.trainer.accumulate_grad_batches,
            "device": torch.cuda.get_device_name() if cfg.trainer.accelerator == "gpu" else "cpu",
            "num_devices": trainer.world_size,
            "eval": {k: v for k, v in evaluation.items() if k != "avg"}, "eval_avg": evaluation.get("avg"),
            "wall_time_s": time.time() - started, "first_step_s": first_step.seconds,
        }
        for lg in wandb_loggers(loggers):
            if is_zero:
                lg.experiment.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        if is_zero:
            write_summary(run_dir, summary)
        return summary
    except BaseException as exc:
        if is_zero:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            if isinstance(exc, SIGTERMException):
                # Not a failure and not done: resumable (sweeps re-run it, reports list it as not completed).
                status, error = "stopped", (
                    f"SIGTERM: stopped at step {trainer.global_step} ({stop.signalled_ranks or 1} of {trainer.world_size} "
                    "rank(s) signalled); checkpoints/last.ckpt holds that step and the same command resumes from it")
            # What the run measured until it stopped (a stop is also how a long run is cut short).
            perf = throughput.summary() if throughput is not None and status == "stopped" else {}
            write_ended(status, error, **{k: perf.get(k) for k in ("tps", "tps_per_device", "mfu", "step_time_ms",
                                                                  "max_mem_gib")})
        if isinstance(exc, SIGTERMException):
            # Lightning's SIGTERMException is a SystemExit with status 0, which would tell a scheduler
            # the job finished; 128 + SIGTERM is the status of a process the signal ended.
            raise SystemExit(128 + signal.SIGTERM) from exc
        raise
    finally:
        finish_wandb(loggers)
        stop.uninstall()


def wandb_loggers(loggers: list) -> list:
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def finish_wandb(loggers: list) -> None:
    """One W&B run per job: close it so the next job in the same process starts a new one."""
    if wandb_loggers(loggers):
        import wandb

        wandb.finish()
