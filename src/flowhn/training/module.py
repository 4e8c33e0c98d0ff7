"""LightningModule for causal language modelling with any architecture of ``flowhn.models``."""

from __future__ import annotations

import math
import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from flowhn import build_model
from flowhn.kernels.cross_entropy import fused_loss_impl, linear_cross_entropy
from flowhn.training.optimizer import MasterWeightAdamW, linear_weights_to_bf16

IGNORE = -100
# torch.compile modes that capture CUDA graphs (each training/validation step then begins a new
# graph-tree step, so the last step's outputs may be overwritten).
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the step."""


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint was about to be written with NaN or inf weights; it is not written."""


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CausalLMModule(L.LightningModule):
    def __init__(self, cfg: dict):
        """``cfg`` is the whole resolved train config as a plain dict, saved in every checkpoint
        (``hyper_parameters["cfg"]``) so a checkpoint alone rebuilds its model."""
        super().__init__()
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = OmegaConf.create(cfg)
        self.model = build_model(self.cfg)
        self.seq_len = self.cfg.data.seq_len
        self.flops_per_token = self.model.flops_per_token(self.seq_len)
        vocab = self.cfg.scale.vocab_size
        self.val_loss = MeanMetric()
        self.val_token_acc = MulticlassAccuracy(num_classes=vocab, average="micro", ignore_index=IGNORE, validate_args=False)
        self._watched_loss: torch.Tensor | None = None  # host copy of the last training loss
        self._watched_loss_ready: torch.cuda.Event | None = None
        self._watched_loss_step: int | None = None  # its step, until it has been checked
        self._skip_update_if: torch.Tensor | None = None
        # optim.master_weights (resolved by flowhn.training.checks; a config without it: off): the fp32
        # values of the weights setup() stores in bf16, until the optimizer takes them as its masters.
        self.master_weights = self.cfg.optim.get("master_weights") is True
        self._masters: dict | None = None

    def forward(self, input_ids: torch.Tensor, return_hidden: bool = False) -> torch.Tensor:
        return self.model(input_ids, return_hidden=return_hidden)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)

    def fused_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """LM head + cross-entropy without the full-vocabulary logits (flowhn.kernels.cross_entropy);
        the head's weight is the embedding when they are tied."""
        impl = self.fused_loss_impl or "auto"
        return linear_cross_entropy(hidden, self.model.lm_head.weight, labels, ignore_index=IGNORE, impl=impl)

    @property
    def fused_loss_impl(self) -> str | None:
        """The training loss's implementation (None: full logits) by ``fused_loss``: auto (on when
        training on a GPU), false, true (auto's implementation) or an implementation of
        flowhn.kernels.cross_entropy by name. Training only: validation and lm-eval keep the full
        logits (accuracy and per-token scores need them)."""
        return fused_loss_impl(self.cfg.get("fused_loss", "auto"), self.device.type)

    @property
    def uses_fused_loss(self) -> bool:
        return self.fused_loss_impl is not None

    def training_loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.uses_fused_loss:
            return self.fused_loss(self(input_ids, return_hidden=True), labels)
        return self.loss(self(input_ids), labels)

    def compile_for_training(self, scope: str, mode: str | None = None, **options) -> None:
        """The model compiled in place (``CausalLM.compile_in_place``); with ``scope="model"`` the loss
        too, so its fp32 log-softmax over the vocabulary is fused; the fused loss in either scope (its
        per-chunk softmax work is elementwise passes over the chunk's logits that compiling fuses).
        ``mode``: torch.compile's (``compile_mode``); reduce-overhead captures CUDA graphs: the
        optimizer step, gradient clipping and logging stay outside them (Lightning's loop)."""
        if mode is not None:
            options["mode"] = mode
        self._cudagraph_steps = mode in CUDAGRAPH_MODES
        self.model.compile_in_place(scope, **options)
        if scope == "model":
            self.loss = torch.compile(self.loss, **options)
        self.fused_loss = torch.compile(self.fused_loss, **options)

    def _begin_cudagraph_step(self) -> None:
        # A new step of CUDA graph trees: the previous step's graph outputs (loss, logits) are no
        # longer read (Lightning logs clones of the loss), so their memory may be reused.
        if getattr(self, "_cudagraph_steps", False):
            torch.compiler.cudagraph_mark_step_begin()

    def training_step(self, batch, batch_idx):
        self._begin_cudagraph_step()
        self.raise_if_a_loss_was_not_finite()
        loss = self.training_loss(batch["input_ids"], batch["labels"])
        self._watch_loss(loss)
        # Not prog_bar=True: Lightning (2.6) converts progress-bar metrics to Python numbers after
        # every batch, a host-device sync per step; StepRateProgressBar shows the loss when it redraws.
        self.log("train/loss", loss)
        return loss

    # A NaN/inf loss stops training, but reading the loss on the host here would be a sync between
    # forward and backward: the host could not queue the backward while the GPU runs the forward,
    # which costs a host-bound (135M) model its overlap on every step. So the loss is copied to
    # pinned memory without waiting and read at the next step, by when the GPU has long finished
    # that forward (and at a checkpoint and at the end of training). Meanwhile the fused AdamW (or
    # MasterWeightAdamW) skips the bad step's update on the device (``found_inf``): the weights stay
    # those from before it, and the error still names the step whose loss was not finite.
    def _watch_loss(self, loss: torch.Tensor) -> None:
        value = loss.detach().float()
        if self._watched_loss is None:
            self._watched_loss = torch.empty((), pin_memory=value.is_cuda)
            self._watched_loss_ready = torch.cuda.Event() if value.is_cuda else None
        self._watched_loss.copy_(value, non_blocking=True)
        if self._watched_loss_ready is not None:
            self._watched_loss_ready.record()
        self._watched_loss_step = self.global_step
        # found_inf for the fused optimizer; under gradient accumulation any micro-batch's counts.
        bad = (~torch.isfinite(value)).float()
        self._skip_update_if = bad if self._skip_update_if is None else torch.maximum(self._skip_update_if, bad)

    def raise_if_a_loss_was_not_finite(self) -> None:
        """Raise ``NonFiniteLossError`` if the last training loss copied to the host is NaN or inf."""
        if self._watched_loss_step is None:
            return
        if self._watched_loss_ready is not None:
            self._watched_loss_ready.synchronize()
        value, step = self._watched_loss.item(), self._watched_loss_step
        self._watched_loss_step = None
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at step {step}; stopping (the last good checkpoint is kept)"
            )

    def on_before_optimizer_step(self, optimizer):
        # Only the fused kernels (and MasterWeightAdamW's) take found_inf (an optimizer resumed from an
        # older, unfused checkpoint keeps its param groups' fused=False and updates as before).
        fused = all(g.get("fused") for g in optimizer.param_groups) or isinstance(optimizer, MasterWeightAdamW)
        optimizer.found_inf = self._skip_update_if if fused else None
        self._skip_update_if = None

    def setup(self, stage: str) -> None:
        # Before Lightning moves the model, restores a checkpoint or builds the optimizer (and DDP).
        if stage == "fit" and self.master_weights and self._masters is None:
            self._masters = linear_weights_to_bf16(self.model)

    def on_train_end(self):
        self.raise_if_a_loss_was_not_finite()  # the last step's
        self._weights_back_to_fp32()

    def _weights_back_to_fp32(self) -> None:
        """The model leaves fit in fp32 with the masters' values, as it would without master weights
        (evaluation and export may run it in fp32)."""
        restored = False
        for optimizer in self.trainer.optimizers if self._trainer is not None else []:
            if isinstance(optimizer, MasterWeightAdamW):
                for p, state in optimizer.state.items():
                    if "master" in state:
                        p.data = state.pop("master")
                        restored = True
        if restored and getattr(self.model, "compile_scope", None) is not None:
            # Dynamo need not notice a parameter's dtype changing under .data (on an H200 a compiled
            # backward went on reading bf16 weights as fp32: twentieth session, call A), so the compiled
            # code goes: whatever runs the model next (evaluation) traces it again, in fp32.
            torch._dynamo.reset()

    def validation_step(self, batch, batch_idx):
        self._begin_cudagraph_step()
        logits = self(batch["input_ids"])
        labels = batch["labels"]
        loss = self.loss(logits, labels)
        self.val_loss.update(loss, weight=(labels != IGNORE).sum())
        self.val_token_acc.update(logits.argmax(-1), labels)

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()  # torchmetrics syncs across ranks here
        # The values are already global; sync_dist averages equal values (one tiny all-reduce) and
        # tells Lightning they are reduced, so it neither warns nor logs a per-rank value.
        self.log_dict(
            {"val/loss": loss, "val/ppl": torch.exp(loss), "val/token_acc": self.val_token_acc.compute()},
            prog_bar=True, sync_dist=True,
        )
        self.val_loss.reset()
        self.val_token_acc.reset()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by global norm ourselves: Lightning's AMP plugin refuses to clip for a fused AdamW,
        but under bf16 there is no loss scaler, so the gradients are already unscaled."""
        if gradient_clip_val and isinstance(optimizer, MasterWeightAdamW):
            optimizer.clip_grad_norm_(gradient_clip_val)  # the coefficient applied inside its update
        elif gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val, foreach=True)

    def optimizer_parameters(self) -> tuple[list[str], list[str]]:
        """The names of the trained parameters with weight decay and without, in the optimizer's order."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # Norm scales, biases and SSM dynamics (A_log, D, dt_bias) are not weights to shrink.
            (no_decay if p.ndim < 2 or name.endswith(("A_log", "D", "dt_bias")) else decay).append(name)
        return decay, no_decay

    def configure_optimizers(self):
        o = self.cfg.optim
        params = dict(self.model.named_parameters())
        decay, no_decay = ([params[n] for n in names] for names in self.optimizer_parameters())
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.master_weights:
            optimizer = MasterWeightAdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, masters=self._masters)
            self._masters = None
        else:
            # Fused on CPU too: one kernel per group, and the device-side skip of a step whose
            # loss is not finite (found_inf, see _watch_loss) exists only in the fused kernels.
            optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True)
        total = self.trainer.max_steps
        warmup = max(1, int(o.warmup_fraction * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, total, warmup, o.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        self.raise_if_a_loss_was_not_finite()
        # A bad update (inf gradients) poisons the weights one step before the loss shows it;
        # refusing to save then keeps the previous last.ckpt, the last good state, on disk.
        params = dict(self.named_parameters())
        if not torch.stack([torch.isfinite(p).all() for p in params.values()]).all():  # one sync
            name = next(n for n, p in params.items() if not torch.isfinite(p).all())
            raise NonFiniteWeightsError(
                f"parameter {name} is not finite at step {self.global_step}; checkpoint not written "
                "(the last good checkpoint is kept)"
            )
        # Loggers buffer rows (CSV: 100 steps); flushing with each checkpoint means a killed run's
        # files hold every step up to the checkpoint it will resume from.
        if self._trainer is not None:
            for logger in self.trainer.loggers:
                logger.save()
        self._weights_from_masters(checkpoint)
        # Exact resume: Lightning restores model, optimizer, scheduler and loop counters; the RNG
        # streams are ours to carry.
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": _numpy_state_to_safe(np.random.get_state()),
            "python": random.getstate(),
        }

    def _optimizer_states(self, checkpoint) -> tuple[dict, dict[str, int]]:
        """``checkpoint``'s optimizer state by parameter index and those indices by parameter name
        (empty without an optimizer state)."""
        states = checkpoint.get("optimizer_states")
        if not states:
            return {}, {}
        names = [name for group in self.optimizer_parameters() for name in group]
        return states[0]["state"], {name: i for i, name in enumerate(names)}

    def _weights_from_masters(self, checkpoint) -> None:
        """With master weights, the checkpoint's model weights are the fp32 masters and its optimizer
        state goes without them: one fp32 copy of each weight, the format of a run without them."""
        if not self.master_weights:
            return
        state, index = self._optimizer_states(checkpoint)
        for name, i in index.items():
            if "master" in state.get(i, {}):
                # A copy of the entry: the one in the checkpoint is the live optimizer's own state dict.
                entry = dict(state[i])
                checkpoint["state_dict"][f"model.{name}"] = entry.pop("master")
                state[i] = entry

    def _masters_from_weights(self, checkpoint) -> None:
        """The inverse, before Lightning restores the checkpoint: each bf16 weight's master from the
        checkpoint's fp32 weight (so a checkpoint written with or without master weights resumes either way)."""
        if not self.master_weights:
            return
        state, index = self._optimizer_states(checkpoint)
        params = dict(self.model.named_parameters())
        for name, i in index.items():
            weight = checkpoint["state_dict"].get(f"model.{name}")
            if i in state and "master" not in state[i] and params[name].dtype != torch.float32 and weight is not None:
                state[i]["master"] = weight.float()

    def on_load_checkpoint(self, checkpoint):
        self._masters_from_weights(checkpoint)
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            np.random.set_state(_numpy_state_from_safe(rng["numpy"]))
            random.setstate(rng["python"])


# Checkpoints hold only tensors and plain Python values so that they load with torch.load's
# default weights_only=True (as Lightning loads them); numpy's RNG state holds an ndarray.
def _numpy_state_to_safe(state: tuple) -> dict:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_safe(state: dict) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]
