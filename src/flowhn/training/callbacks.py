"""Callbacks of our own: what Lightning does not do for us."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
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
            # The whole state (optimizer, loops, RNG), said explicitly: left unset, Lightning logs "`weights_only`
            # was not set, defaulting to `False`" on every rank, which reads like an unsafe load.
            trainer.save_checkpoint(str(path), weights_only=False)
            log.info("SIGTERM: saved %s at step %d; rerun the same command to resume", path, trainer.global_step)


class AgreedStop(L.Callback):
    """SIGTERM (SLURM preemption or time limit, ``timeout``, a launcher's stop) under DDP: every rank
    stops after the same optimizer step, ``last.ckpt`` is written once, and every process exits.

    Why Lightning's own handling (2.6) hangs: its SIGTERM handler issues a ``broadcast`` from
    inside the signal handler, i.e. at whatever point each rank happens to be, and its loops
    broadcast rank 0's flag at every batch start; ranks that got the signal at different points
    end up in collectives that do not match, and wait in them forever. A signal to one rank only
    never reaches the others unless that rank is 0.

    Here the handler only sets a flag (and starts a watchdog). After every optimizer step the
    ranks all-reduce their flags (on a CPU gloo group, so no GPU sync); once any rank has been
    signalled, all of them agree to stop at that step. Lightning's loops then raise
    ``SIGTERMException`` at the end of that step (after a validation due at it), on every rank
    together, and ``PreemptionCheckpoint`` saves ``last.ckpt`` there. The watchdog ends the process
    with 128 + SIGTERM if the stop has not finished within ``grace_s`` (a dead peer, a hung
    collective, a checkpoint that does not fit in the grace: the atomic save keeps the old file; or a
    signal while the run is still starting: a GPU run compiles for minutes before its first step, and
    there is nothing new to save before it), calling ``on_expire`` first (train.py's records the stop in
    summary.json, which would otherwise still say "running").

    ``install()`` sets the process's SIGTERM handler (call it early, on the main thread: a signal
    before ``fit`` is remembered and acted on at the first step); ``attach(trainer)`` puts the
    agreement in place of Lightning's handling.
    """

    # Why a stop may not finish in time: before the first step there is no step to stop at (a GPU run
    # compiles for minutes), and after it a peer may be gone or a collective hung.
    EXPIRED_WHY = "still starting, before the first step; or a peer is gone or a collective hangs"

    def __init__(self, grace_s: float = 60.0, timeout_s: float = 600.0):
        if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)) or grace_s <= 0:
            raise ConfigError(f"hydra.launcher.stop_grace_s: must be a positive number of seconds, got {grace_s!r}")
        self.grace_s = float(grace_s)
        self.timeout_s = float(timeout_s)
        self.requested = False  # this process got SIGTERM
        self.agreed = False  # every rank knows that some rank got it, and stops after this step
        self.signalled_ranks = 0
        self.stop_step: int | None = None
        self._watchdog: threading.Timer | None = None
        self._group = None
        # Called (on the watchdog's thread) just before it ends the process: how the run records the stop.
        self.on_expire: Callable[[], None] | None = None

    # -- this process -------------------------------------------------------------------

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self.request)

    def uninstall(self) -> None:
        """Give SIGTERM back to whoever had it (a process that runs several jobs in turn)."""
        if getattr(self, "_previous", None) is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def request(self, signum: int = signal.SIGTERM, frame=None) -> None:
        """The signal handler: remember the request; never a collective, never blocking."""
        if self.requested:
            return
        self.requested = True
        # A daemon timer thread runs even while the main thread waits in a collective. It fires a
        # little before the grace ends, so the launcher's SIGKILL at grace_s finds nothing to kill.
        self._watchdog = threading.Timer(self.expires_after_s, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()
        log.info("Received SIGTERM (pid %d): stopping after the step the ranks agree on, within %.0f s",
                 os.getpid(), self.grace_s)

    @property
    def expires_after_s(self) -> float:
        """When the watchdog ends a signalled process: a little before the grace ends (see ``request``)."""
        return 0.9 * self.grace_s

    @property
    def expired_reason(self) -> str:
        return f"not stopped within {self.expires_after_s:g} s ({self.EXPIRED_WHY})"

    def _expire(self) -> None:
        sys.stderr.write(f"SIGTERM: {self.expired_reason}; exiting with {128 + signal.SIGTERM}\n")
        sys.stderr.flush()
        try:
            if self.on_expire is not None:  # rank 0's summary.json: stopped, not still "running"
                self.on_expire()
        except BaseException as exc:  # the exit below must happen whatever the record does
            sys.stderr.write(f"SIGTERM: could not record the stop: {type(exc).__name__}: {exc}\n")
        finally:
            os._exit(128 + signal.SIGTERM)

    # -- the ranks ----------------------------------------------------------------------

    def attach(self, trainer: L.Trainer) -> None:
        """Lightning's loops read ``trainer.received_sigterm``; make it the agreed stop."""
        trainer._signal_connector = _AgreedSignalConnector(trainer, self)
        # Lightning (2.5+) broadcasts rank 0's flag before every batch and waits for it (a GPU sync
        # per step); with the flag agreed at the previous step's end it would only repeat it.
        epoch_loop = trainer.fit_loop.epoch_loop
        if hasattr(epoch_loop, "_broadcast_sigterm_tensor"):
            epoch_loop._broadcast_sigterm_tensor = lambda: None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._group is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # A CPU group of its own: the flag's all-reduce then never waits on the GPU's queue.
            on_gloo = dist.get_backend() == "gloo"
            self._group = dist.group.WORLD if on_gloo else dist.new_group(
                backend="gloo", timeout=timedelta(seconds=self.timeout_s))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.agreed or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # only after an optimizer step: a stop mid-accumulation would lose gradients
        count = torch.tensor([int(self.requested)], dtype=torch.int32)
        if self._group is not None:
            dist.all_reduce(count, op=dist.ReduceOp.SUM, group=self._group)
        self.signalled_ranks = int(count.item())
        if self.signalled_ranks:
            self.agreed, self.stop_step = True, trainer.global_step
            if trainer.is_global_zero:
                log.info("SIGTERM reached %d of %d rank(s): every rank stops after step %d",
                         self.signalled_ranks, trainer.world_size, trainer.global_step)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._group is not None and self._group is not dist.group.WORLD and dist.is_initialized():
            dist.destroy_process_group(self._group)
        self._group = None


class _AgreedSignalConnector(_SignalConnector):
    """Lightning's signal connector with ``received_sigterm`` = the stop the ranks agreed on.

    Lightning's handler body (a launcher kill and a ``broadcast`` inside the handler) is replaced
    by ``AgreedStop.request``. The flag stays down during a validation run inside fit so that a
    validation due at the stopping step completes (its metrics are not in the checkpoint; a
    validation cut short would be resumed with half its batches).
    """

    def __init__(self, trainer: L.Trainer, stop: AgreedStop):
        self._stop = stop
        super().__init__(trainer)

    @property
    def received_sigterm(self) -> bool:
        return self._stop.agreed and not self.trainer.validating and not self.trainer.sanity_checking

    @received_sigterm.setter
    def received_sigterm(self, value: bool) -> None:
        pass  # Lightning resets it when it registers its handlers; the agreement is AgreedStop's

    def _sigterm_notifier_fn(self, signum, frame) -> None:
        self._stop.request(signum, frame)


class StepRateProgressBar(RichProgressBar):
    """Lightning's rich progress bar, redrawn every ``refresh_rate`` training batches (and at the
    epoch's last), showing ``shown`` (logged without ``prog_bar``) as it redraws.

    Reading a logged loss is a host-device sync: the host then waits for the step's GPU work to end
    before it can queue the next step, which a host-bound model pays for on every step. Lightning's
    bar (2.6) reads the metrics after every batch, and Lightning itself converts every ``prog_bar``
    metric to a number after every batch; this bar reads only when it redraws."""

    def __init__(self, refresh_rate: int = 1, shown: tuple[str, ...] = ("train/loss",), **kwargs):
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.shown = tuple(shown)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        # The epoch's or the run's last batch. (Not total_train_batches: with max_steps it is the
        # steps *remaining*, which meets batch_idx + 1 halfway through the run.)
        last = trainer.is_last_batch or 0 < trainer.max_steps <= trainer.global_step
        if self.refresh_rate and ((batch_idx + 1) % self.refresh_rate == 0 or last):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        for name in self.shown:
            value = trainer.callback_metrics.get(name)
            if value is not None and name not in items:
                items[name] = value.item() if isinstance(value, torch.Tensor) else value
        return items


class FirstStepTimer(L.Callback):
    """Seconds from this process's start to the end of the first optimizer step of the fit
    (compile included; on GPU the step's kernels have finished): what a user waits for."""

    def __init__(self):
        self.process_start = _process_start_time()
        self.seconds: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.seconds is None and trainer.global_step >= 1:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.seconds = time.time() - self.process_start


def _process_start_time() -> float:
    """Wall-clock start of this process (Linux /proc), else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class FaultInjection(L.Callback):
    """Deliberate faults for the reliability tests, set in the config's ``debug`` block.

    Each fires at the start of the training batch that would take the optimizer from step ``k``
    to ``k + 1``, i.e. after everything that finished step ``k`` (its checkpoint included):

    - ``fail_at_step``: raise ``RuntimeError`` at every step >= k (on ``fail_rank`` only, if set).
    - ``nan_at_step``: overwrite the first weight with NaN, as a diverging update would.
    - ``kill_at_step``: SIGKILL this process (no handler, no cleanup: a node failure or OOM kill).
      Not again when a resumed fit starts at that step.
    - ``term_at_step``: send SIGTERM to this process (on ``term_rank`` only, if set), as a
      scheduler's preemption would; the ranks then stop after step k + 1. Not again on resume.

    And one that fires when the fit starts, before any step:

    - ``stall_at_fit_start_s``: sleep that long, as a run still compiling (minutes on a GPU) or waiting
      for its data would: a SIGTERM then lands where no step is near to stop at.
    """

    def __init__(self, fail_at_step: int | None = None, fail_rank: int | None = None,
                 nan_at_step: int | None = None, kill_at_step: int | None = None,
                 term_at_step: int | None = None, term_rank: int | None = None,
                 stall_at_fit_start_s: float | None = None):
        for key, value in (("fail_at_step", fail_at_step), ("fail_rank", fail_rank),
                           ("nan_at_step", nan_at_step), ("kill_at_step", kill_at_step),
                           ("term_at_step", term_at_step), ("term_rank", term_rank)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"debug.{key}: must be null or an integer >= 0, got {value!r}")
        if stall_at_fit_start_s is not None and (isinstance(stall_at_fit_start_s, bool) or not isinstance(
                stall_at_fit_start_s, (int, float)) or stall_at_fit_start_s < 0):
            raise ConfigError(f"debug.stall_at_fit_start_s: must be null or seconds >= 0, got {stall_at_fit_start_s!r}")
        self.stall_at_fit_start_s = stall_at_fit_start_s
        self.fail_at_step, self.fail_rank = fail_at_step, fail_rank
        self.nan_at_step, self.kill_at_step = nan_at_step, kill_at_step
        self.term_at_step, self.term_rank = term_at_step, term_rank
        self._fit_start_step = 0

    @classmethod
    def from_config(cls, debug) -> FaultInjection | None:
        """The callback for a ``debug`` config block, or None when it asks for no fault."""
        settings = dict(debug or {})
        return cls(**settings) if any(v is not None for v in settings.values()) else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stall_at_fit_start_s:
            log.warning("debug.stall_at_fit_start_s=%g: sleeping before the first step", self.stall_at_fit_start_s)
            time.sleep(self.stall_at_fit_start_s)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start_step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.kill_at_step == step and step > self._fit_start_step:
            log.warning("debug.kill_at_step=%d: SIGKILL on rank %d", step, trainer.global_rank)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.term_at_step == step and step > self._fit_start_step:
            if self.term_rank is None or self.term_rank == trainer.global_rank:
                log.warning("debug.term_at_step=%d: SIGTERM on rank %d", step, trainer.global_rank)
                os.kill(os.getpid(), signal.SIGTERM)
        if self.fail_at_step is not None and step >= self.fail_at_step:
            if self.fail_rank is None or self.fail_rank == trainer.global_rank:
                raise RuntimeError(f"debug.fail_at_step={self.fail_at_step}: failing on purpose at step {step} "
                                   f"on rank {trainer.global_rank}")
        if self.nan_at_step == step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
