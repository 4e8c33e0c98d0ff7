"""Callbacks of our own: what Lightning does not do for us."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from flowhn.errors import ConfigError

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (SLURM preemption, a scheduler's stop) Lightning stops after the current batch
    and raises ``SIGTERMException``; this saves ``last.ckpt`` at that point so the requeued job
    resumes where it stopped instead of at the last periodic checkpoint."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(str(path))
            log.info("SIGTERM: saved %s at step %d; rerun the same command to resume", path, trainer.global_step)


class FaultInjection(L.Callback):
    """Deliberate faults for the reliability tests, set in the config's ``debug`` block.

    Each fires at the start of the training batch that would take the optimizer from step ``k``
    to ``k + 1``, i.e. after everything that finished step ``k`` (its checkpoint included):

    - ``fail_at_step``: raise ``RuntimeError`` at every step >= k (on ``fail_rank`` only, if set).
    - ``nan_at_step``: overwrite the first weight with NaN, as a diverging update would.
    - ``kill_at_step``: SIGKILL this process (no handler, no cleanup: a node failure or OOM kill).
      Not again when a resumed fit starts at that step.
    """

    def __init__(self, fail_at_step: int | None = None, fail_rank: int | None = None,
                 nan_at_step: int | None = None, kill_at_step: int | None = None):
        for key, value in (("fail_at_step", fail_at_step), ("fail_rank", fail_rank),
                           ("nan_at_step", nan_at_step), ("kill_at_step", kill_at_step)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"debug.{key}: must be null or an integer >= 0, got {value!r}")
        self.fail_at_step, self.fail_rank = fail_at_step, fail_rank
        self.nan_at_step, self.kill_at_step = nan_at_step, kill_at_step
        self._fit_start_step = 0

    @classmethod
    def from_config(cls, debug) -> FaultInjection | None:
        """The callback for a ``debug`` config block, or None when it asks for no fault."""
        settings = dict(debug or {})
        return cls(**settings) if any(v is not None for v in settings.values()) else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start_step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.kill_at_step == step and step > self._fit_start_step:
            log.warning("debug.kill_at_step=%d: SIGKILL on rank %d", step, trainer.global_rank)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fail_at_step is not None and step >= self.fail_at_step:
            if self.fail_rank is None or self.fail_rank == trainer.global_rank:
                raise RuntimeError(f"debug.fail_at_step={self.fail_at_step}: failing on purpose at step {step} "
                                   f"on rank {trainer.global_rank}")
        if self.nan_at_step == step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
