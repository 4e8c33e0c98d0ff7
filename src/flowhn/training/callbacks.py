"""Callbacks of our own: what Lightning does not do for us."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (SLURM preemption, a scheduler's stop) Lightning stops after the current batch
    and raises ``SIGTERMException``; this saves ``last.ckpt`` at that point so the requeued job
    resumes where it stopped instead of at the last periodic checkpoint."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(str(self.dirpath / "last.ckpt"))
