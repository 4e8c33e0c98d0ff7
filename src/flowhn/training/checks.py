"""What can be checked of a train config, and its identity, without Lightning.

``train.py`` runs these checks before it imports Lightning (about 10 s of a run's start), so a bad
config fails in seconds; ``flowhn.training.run`` runs them again, for callers that start there (train.py
tells it that they have run).
Sweep planning hashes job configs with them, in a process that never trains.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from flowhn import build_model
from flowhn.errors import require

# Keys that say where or how a run is logged, not what it computes: left out of config_hash.
UNHASHED_KEYS = ("paths", "logger", "meta", "hydra", "ckpt_path", "callbacks", "debug")
# Keys a resumed run may change: they steer validation, evaluation, logging, which kernel computes the
# same function or what the backward keeps, never the function trained (scale.lean_activations: the norms'
# outputs and gradients from x̂ rounded to bf16, a rounding-level change like another kernel's).
RESUME_MAY_CHANGE = (
    "eval", "hardware", "compile", "compile_scope", "compile_mode", "fused_loss", "model.moe_dispatch", "model.ssm_backend",
    "model.ssd_recompute", "model.ssm_remake_scan_inputs", "model.ssm_keep_scan_states",
    "scale.lean_activations", "model.branch_streams",
    # bf16 weights with fp32 masters take the same steps as autocast's casts of fp32 weights, and a
    # checkpoint holds the fp32 weights either way (flowhn.training.optimizer).
    "optim.master_weights",
    "data.num_workers", "data.eval_batch_size", "data.cache_dir", "trainer.val_check_interval", "trainer.limit_val_batches", "trainer.log_every_n_steps",
    "trainer.enable_model_summary", "trainer.ddp_timeout_s",
    # How DDP reduces the gradients (bucketing, views, static graph, the compiled graph's split), not
    # their sum; trainer.ddp.comm_hook is not here: bf16/fp16 compression rounds the gradients.
    "trainer.ddp.bucket_cap_mb", "trainer.ddp.gradient_as_bucket_view", "trainer.ddp.static_graph",
    "trainer.ddp.optimize_ddp",
)
# Keys that shape training, added after runs were saved, each with the value that reproduces a run from
# before it: a saved config without one ran with that value (config_differences: such a checkpoint resumes
# with it), and a config holding it hashes as before the key existed (config_hash: such a completed run
# still counts as this config's).
ADDED_KEYS = {"residual_dtype": "fp32"}
# trainer.ddp's keys and the values a config without them gets (conf/trainer/default.yaml sets the same).
DDP_DEFAULTS = {"bucket_cap_mb": 25, "gradient_as_bucket_view": False, "static_graph": False, "comm_hook": "none",
                "optimize_ddp": True}
# trainer.ddp.comm_hook -> the torch.distributed.algorithms.ddp_comm_hooks.default_hooks function.
DDP_COMM_HOOKS = {"none": None, "bf16_compress": "bf16_compress_hook", "fp16_compress": "fp16_compress_hook"}
# trainer.ddp.optimize_ddp -> torch._dynamo.config.optimize_ddp. "python_reducer" is left out: it needs
# compiled autograd, which only traces a backward called inside a compiled region (Lightning's is not).
OPTIMIZE_DDP = {True: "ddp_optimizer", False: "no_optimization", "ddp_optimizer": "ddp_optimizer",
                "no_optimization": "no_optimization"}


def config_hash(cfg: DictConfig) -> str:
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in UNHASHED_KEYS:
        container.pop(key, None)
    for key, before in ADDED_KEYS.items():
        if container.get(key, before) == before:
            container.pop(key, None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(old: dict, new: dict, ignore: tuple[str, ...]) -> list[str]:
    """``"key: old -> new"`` for every leaf that differs, leaving out the ``ignore`` subtrees."""
    def kept(key: str) -> bool:
        return not any(key == p or key.startswith(p + ".") for p in ignore)

    a, b = _flatten({**ADDED_KEYS, **old}), _flatten({**ADDED_KEYS, **new})
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if kept(k) and a.get(k, "<absent>") != b.get(k, "<absent>")]


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
        require(cfg.compile in (True, False), "compile", f"must be auto, true or false, got {cfg.compile!r}")
        require(cfg.compile_scope in ("model", "blocks"), "compile_scope",
                f"must be model or blocks, got {cfg.compile_scope!r}")
        check_compile_mode_and_fused_loss(cfg)
        check_master_weights(cfg)
        batch = cfg.data.batch_size
        require(isinstance(batch, int) and batch > 0, "data.batch_size", f"must be a positive integer, got {batch!r}")
        if cfg.train_tokens:
            per_step = batch * cfg.data.seq_len * world_size(cfg) * t.accumulate_grad_batches
            t.max_steps = math.ceil(cfg.train_tokens / per_step)
        require(isinstance(t.max_steps, int) and t.max_steps > 0, "trainer.max_steps", f"must be positive, got {t.max_steps!r}")
    check_ddp_settings(cfg)


def ddp_settings(cfg: DictConfig) -> dict:
    """trainer.ddp over DDP_DEFAULTS."""
    return {**DDP_DEFAULTS, **(cfg.trainer.get("ddp") or {})}


def check_ddp_settings(cfg: DictConfig) -> None:
    ddp = ddp_settings(cfg)
    unknown = sorted(set(ddp) - set(DDP_DEFAULTS))
    require(not unknown, f"trainer.ddp.{unknown[0] if unknown else ''}",
            f"unknown key; the keys are {', '.join(sorted(DDP_DEFAULTS))}")
    cap = ddp["bucket_cap_mb"]
    require(not isinstance(cap, bool) and isinstance(cap, (int, float)) and cap > 0, "trainer.ddp.bucket_cap_mb",
            f"must be a positive number of MiB, got {cap!r}")
    for key in ("gradient_as_bucket_view", "static_graph"):
        require(isinstance(ddp[key], bool), f"trainer.ddp.{key}", f"must be true or false, got {ddp[key]!r}")
    hook = ddp["comm_hook"]
    require(hook in DDP_COMM_HOOKS, "trainer.ddp.comm_hook", f"must be one of {', '.join(DDP_COMM_HOOKS)}, got {hook!r}")
    mode = ddp["optimize_ddp"]
    require(isinstance(mode, (bool, str)) and mode in OPTIMIZE_DDP, "trainer.ddp.optimize_ddp",
            f"must be true, false, ddp_optimizer or no_optimization, got {mode!r}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def auto_compile_mode(cfg: DictConfig) -> str | None:
    """What ``compile_mode: auto`` means for a resolved config: the scale's ``compile_mode`` when the
    whole model is compiled on one GPU without gradient accumulation, else torch's default (None).
    CUDA graphs under DDP or per block are neither measured nor tested here, and accumulated
    micro-batches would reuse a replay's memory."""
    measured = cfg.compile and cfg.compile_scope == "model" and cfg.trainer.accelerator == "gpu"
    single = world_size(cfg) == 1 and cfg.trainer.accumulate_grad_batches == 1
    return cfg.scale.get("compile_mode") if measured and single else None


def check_compile_mode_and_fused_loss(cfg: DictConfig) -> None:
    if cfg.get("compile_mode") == "auto":
        cfg.compile_mode = auto_compile_mode(cfg)
    mode, modes = cfg.get("compile_mode"), COMPILE_MODES
    require(mode is None or mode in modes, "compile_mode", f"must be null, auto or one of {', '.join(modes)}, got {mode!r}")
    require(mode is None or cfg.compile, "compile_mode", f"{mode} needs compile=true (compile is off)")
    # CUDA graph trees start a new step per micro-batch; gradients accumulated across graph replays
    # would live in memory the next replay reuses.
    require(mode not in ("reduce-overhead", "max-autotune") or cfg.trainer.accumulate_grad_batches == 1, "compile_mode",
            f"{mode} captures CUDA graphs, which do not support trainer.accumulate_grad_batches > 1 here")
    fused = cfg.get("fused_loss", "auto")
    # Only a named implementation needs the list: flowhn.kernels imports torch._dynamo (seconds), which sweep
    # planning, hashing job configs, otherwise never imports.
    if fused not in ("auto", True, False):
        from flowhn.kernels.cross_entropy import FUSED_LOSS_IMPLS

        require(fused in FUSED_LOSS_IMPLS, "fused_loss",
                f"must be auto, true, false or one of {', '.join(FUSED_LOSS_IMPLS)}, got {fused!r}")


def check_master_weights(cfg: DictConfig) -> None:
    """optim.master_weights: auto (on for bf16-mixed on a GPU without gradient accumulation), true or
    false, resolved in place to true or false."""
    setting = cfg.optim.get("master_weights", "auto")
    require(setting == "auto" or isinstance(setting, bool), "optim.master_weights",
            f"must be auto, true or false, got {setting!r}")
    bf16 = cfg.trainer.precision == "bf16-mixed"
    one_micro_batch = cfg.trainer.accumulate_grad_batches == 1
    if setting == "auto":
        setting = bf16 and one_micro_batch and cfg.trainer.accelerator == "gpu"
    elif setting:
        require(bf16, "optim.master_weights",
                f"true stores weights in bf16 for bf16 autocast, but trainer.precision is {cfg.trainer.precision}")
        require(one_micro_batch, "optim.master_weights",
                "true would sum the micro-batches' gradients in bf16; it needs trainer.accumulate_grad_batches 1")
    cfg.optim.master_weights = bool(setting)


def check_model(cfg: DictConfig) -> None:
    """Build the model on the meta device: every dim and layout check runs, nothing is allocated."""
    with torch.device("meta"):
        build_model(cfg)


def check_config(cfg: DictConfig) -> None:
    """The checks that need neither the data nor Lightning, in a run's order: the trainer settings (their
    "auto" values filled in place; a second call changes nothing), then the model's dims."""
    resolve_trainer_settings(cfg)
    check_model(cfg)
