"""Training throughput (tokens/s) and MFU over windows of optimizer steps.

The paper's numbers divided non-pad tokens by unsynchronised wall time per step. Here a window of
``window`` optimizer steps is timed on the host clock with ``torch.cuda.synchronize()`` only at its
two edges, so queued GPU work is counted once and no step is slowed by a sync. Real tokens
(``labels != -100``) are summed on the device and read once per window. Across DDP ranks, one
all-gather per window gives the token sum and the slowest rank's time.

Window rules:

* The first ``warmup_steps`` optimizer steps of each fit (a resumed one too) are never timed
  (compilation, autotuning, allocator warm-up). The first window opens at the start of the next
  training batch.
* A window closes at the end of the batch that completes its ``window``-th optimizer step; the
  next one opens at that same instant, so data loading between steps is included.
* Validation pauses the open window (its time is excluded); training batches resume it.
* A run too short for one full window is reported from its post-warm-up steps as a single
  partial window (``summary()["windows"] == 1``); with no post-warm-up step at all every value is
  None. A trailing partial window is dropped when full windows exist.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from flowhn.errors import ConfigError
from flowhn.perf.hardware import check_override, device_peak_tflops

log = logging.getLogger(__name__)

LOGGED = ("tps", "tps_per_device", "mfu", "step_time_ms", "max_mem_gib")


class ThroughputMonitor(Callback):
    """Logs ``perf/tps``, ``perf/tps_per_device``, ``perf/mfu``, ``perf/step_time_ms``,
    ``perf/max_mem_gib`` once per window and keeps every window in ``self.windows``.

    Args:
        window: optimizer steps per timing window.
        warmup_steps: optimizer steps skipped before the first window.
        peak_tflops: dense peak per device; overrides the GPU table (``flowhn.perf.hardware``).
        flops_per_token: training FLOPs per token; default ``pl_module.flops_per_token``.
        clock: host clock in seconds; injectable so tests can drive time exactly.
    """

    def __init__(self, window: int = 10, warmup_steps: int = 10, peak_tflops: float | None = None,
                 flops_per_token: float | None = None, clock: Callable[[], float] = time.perf_counter):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"callbacks.throughput.window: must be an integer >= 1, got {window!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"callbacks.throughput.warmup_steps: must be an integer >= 0, got {warmup_steps!r}")
        if peak_tflops is not None:
            check_override(peak_tflops)
        if flops_per_token is not None and not _positive(flops_per_token):
            raise ConfigError(f"callbacks.throughput.flops_per_token: must be a positive number, "
                              f"got {flops_per_token!r}")
        self.window = window
        self.warmup_steps = warmup_steps
        self.peak_override = peak_tflops
        self.flops_override = flops_per_token
        self.clock = clock

        self.windows: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None  # summary() at train end, for summary.json
        self.peak_tflops: float | None = None
        self.flops_per_token: float | None = None
        self._tail: dict[str, Any] | None = None
        self._start_step = 0  # global_step when this fit began (non-zero after a resume)
        self._reset_window()

    def _reset_window(self) -> None:
        self._step0: int | None = None  # global_step when the open window began; None: no window
        self._resumed_at: float | None = None  # clock value while running; None while paused
        self._elapsed = 0.0  # seconds accumulated before the last pause
        self._tokens: torch.Tensor | None = None  # real tokens this rank, kept on device

    # ---------------------------------------------------------------- lightning hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.windows, self._tail, self.final = [], None, None
        self._start_step = trainer.global_step
        self._reset_window()
        try:
            self.peak_tflops = device_peak_tflops(trainer.strategy.root_device, trainer.precision,
                                                  self.peak_override)
        except ValueError as err:  # a precision the table has no dtype for, e.g. transformer-engine
            log.warning("MFU is not reported: %s", err)
            self.peak_tflops = None
        self.flops_per_token = self.flops_override
        if self.flops_per_token is None:
            value = getattr(pl_module, "flops_per_token", None)
            if _positive(value):
                self.flops_per_token = float(value)
            else:
                log.warning("MFU is not reported: %s has no positive float attribute flops_per_token "
                            "(or set the callback's flops_per_token)", type(pl_module).__name__)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._resumed_at is not None:
            return
        if self._step0 is None:
            # Counted from this fit's first step: a resumed run compiles and autotunes again.
            if trainer.global_step - self._start_step < self.warmup_steps:
                return
            self._step0 = trainer.global_step
        self._sync(trainer)
        self._resumed_at = self.clock()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._resumed_at is None:
            return
        real = _real_tokens(batch)
        self._tokens = real if self._tokens is None else self._tokens + real
        if trainer.global_step - self._step0 >= self.window:
            record, end = self._close_window(trainer)
            self.windows.append(record)
            self._log(trainer, pl_module, record)
            # The next window starts where this one ended, without another clock read.
            self._step0, self._resumed_at = trainer.global_step, end

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._resumed_at is not None:
            self._sync(trainer)
            self._elapsed += self.clock() - self._resumed_at
            self._resumed_at = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        open_steps = 0 if self._step0 is None else trainer.global_step - self._step0
        if not self.windows and open_steps > 0:
            if self._resumed_at is None:  # paused by a final validation: resume at zero extra time
                self._resumed_at = self.clock()
            self._tail, _ = self._close_window(trainer)
        self._reset_window()
        self.final = self.summary()
        if trainer.is_global_zero:
            self._write_wandb_summary(trainer, self.final)

    # ---------------------------------------------------------------- measurement
    def _close_window(self, trainer: Trainer) -> tuple[dict[str, Any], float]:
        self._sync(trainer)
        end = self.clock()
        elapsed = self._elapsed + (end - self._resumed_at)
        device = trainer.strategy.root_device
        tokens = self._tokens if self._tokens is not None else torch.zeros((), device=device)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        local = torch.stack([tokens.to(device=device, dtype=torch.float64),
                             torch.tensor(elapsed, dtype=torch.float64, device=device),
                             torch.tensor(mem, dtype=torch.float64, device=device)])
        # One collective per window: every rank's (tokens, seconds, GiB) row.
        rows = trainer.strategy.all_gather(local).reshape(-1, 3).cpu()
        total_tokens = float(rows[:, 0].sum())
        seconds = float(rows[:, 1].max())
        steps = trainer.global_step - self._step0
        world = trainer.world_size
        tps = total_tokens / seconds if seconds > 0 else float("nan")
        mfu = None
        if self.peak_tflops is not None and self.flops_per_token is not None and seconds > 0:
            mfu = total_tokens * self.flops_per_token / seconds / (self.peak_tflops * 1e12 * world)
        self._elapsed, self._tokens = 0.0, None
        record = {
            "step": trainer.global_step, "steps": steps, "tokens": total_tokens, "seconds": seconds,
            "tps": tps, "tps_per_device": tps / world, "mfu": mfu,
            "step_time_ms": 1000.0 * seconds / steps, "max_mem_gib": float(rows[:, 2].max()),
        }
        return record, end

    def summary(self) -> dict[str, Any]:
        """Medians over full post-warm-up windows (peak over them for memory).

        Falls back to the single partial window of a run too short for a full one; all None when
        there was no post-warm-up step. ``windows`` is how many windows the values come from.
        """
        records = self.windows or ([self._tail] if self._tail else [])
        if not records:
            return {key: None for key in LOGGED} | {"windows": 0}
        out: dict[str, Any] = {key: statistics.median(r[key] for r in records)
                               for key in ("tps", "tps_per_device", "step_time_ms")}
        mfus = [r["mfu"] for r in records]
        out["mfu"] = None if None in mfus else statistics.median(mfus)
        out["max_mem_gib"] = max(r["max_mem_gib"] for r in records)
        out["windows"] = len(records)
        return out

    # ---------------------------------------------------------------- output
    def _log(self, trainer: Trainer, pl_module: LightningModule, record: dict[str, Any]) -> None:
        metrics = {f"perf/{key}": float(record[key]) for key in LOGGED if record[key] is not None}
        # Values are already reduced across ranks, hence sync_dist=False. logger=False because
        # Lightning only forwards step metrics to loggers every log_every_n_steps, which would drop
        # windows that end between those steps; loggers get every window directly below.
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, logger=False, sync_dist=False)
        for logger in trainer.loggers:  # logger methods are rank-zero-only already
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()

    @staticmethod
    def _write_wandb_summary(trainer: Trainer, summary: dict[str, Any]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key, value in summary.items():
                    if value is not None:
                        logger.experiment.summary[f"perf/{key}"] = value

    @staticmethod
    def _sync(trainer: Trainer) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _real_tokens(batch: Any) -> torch.Tensor:
    if not isinstance(batch, dict) or "labels" not in batch:
        raise KeyError("ThroughputMonitor needs dict batches with 'labels' (-100 marks non-tokens) "
                       f"to count real tokens; got {type(batch).__name__}")
    return (batch["labels"] != -100).sum()


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
