"""Hydra launcher that starts every sweep job as a fresh process of the same script.

Why processes: Lightning's DDP launches its workers by re-running the script's command line,
so DDP inside ``python train.py -m`` re-runs the whole sweep in every worker and hangs
(Lightning #11300, #11617). Here the sweeping parent never trains: a job with
``trainer.devices > 1`` runs as ``python -m torch.distributed.run --standalone
--nproc_per_node=<devices> train.py ...`` (Lightning picks up torchelastic's environment;
run through this module's ``torchrun_main``, which exits with 128 + SIGTERM when the job was
stopped by SIGTERM rather than torchrun's 1), one device as plain ``python train.py ...``.
Each job gets ``hydra.run.dir=<sweep dir>/<job>``,
its W&B group/job_type/tags, and its output in ``<job>/job.log``.

``parallel: N`` runs N jobs at once; GPU jobs each get their own ``trainer.devices`` GPUs through
``CUDA_VISIBLE_DEVICES``, handed out from ``gpus`` (default: all visible). SIGTERM to the sweep
process (a scheduler's stop, ``timeout``) stops every running job the same way a time limit does:
SIGTERM to all its processes, SIGKILL after ``stop_grace_s``; the sweep then exits 143. A failing job is
recorded (status "failed", the telling line of its log as error) and the others go on; the
sweep then ends with Hydra's usual error for failed jobs, after ``results.csv`` is written.
"""


import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from flowhn.errors import ConfigError
from flowhn.sweeping import LOG_FILE, finish_job, update_record, write_results
from hydra_plugins.flowhn_launcher.planning import (
    Job,
    begin_attempt,
    config_flags,
    hydra_passthrough,
    plan,
    quoted,
    set_aside_skipped,
    sweep_dir,
    write_plan,
)

log = logging.getLogger(__name__)

_POLL_S = 0.2


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its last ")".
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    gpus: list[str]
    started: float
    log_file: Any


class TorchrunLauncher(Launcher):
    def __init__(
        self,
        parallel: int | str = 1,
        gpus: Sequence[int | str] | None = None,
        skip_completed: bool = True,
        timeout_min: float | None = None,
        stop_grace_s: float = 30.0,
        plan_file: str | None = None,
        env: dict[str, Any] | None = None,
        torchrun_args: Sequence[str] | None = None,
    ) -> None:
        if parallel != "auto" and not (isinstance(parallel, int) and parallel >= 1):
            raise ConfigError(f"hydra.launcher.parallel: an int >= 1 or 'auto', got {parallel!r}")
        if timeout_min is not None and timeout_min <= 0:
            raise ConfigError(f"hydra.launcher.timeout_min: must be > 0 or null, got {timeout_min}")
        self.parallel = parallel
        self.gpu_ids = None if gpus is None else [str(g) for g in gpus]
        self.skip_completed = bool(skip_completed)
        self.timeout_s = None if timeout_min is None else 60.0 * float(timeout_min)
        self.stop_grace_s = float(stop_grace_s)
        self.plan_file = plan_file
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.torchrun_args = [str(a) for a in (torchrun_args or [])]
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.script = Path(sys.argv[0]).resolve()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # The task function never runs here: each job is its own process of the same script.
        self.config = config
        self.hydra_context = hydra_context

    # -- resources -------------------------------------------------------------------------

    def _visible_gpus(self) -> list[str]:
        if self.gpu_ids is None:
            env = os.environ.get("CUDA_VISIBLE_DEVICES")
            if env is not None:
                self.gpu_ids = [g.strip() for g in env.split(",") if g.strip()]
            else:
                import torch

                self.gpu_ids = [str(i) for i in range(torch.cuda.device_count())]
        return self.gpu_ids

    def _shape(self, cfg: DictConfig) -> tuple[int, bool]:
        """(processes, whether they need GPUs) for one job, from its trainer config."""
        accel = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto")).lower()
        devices = OmegaConf.select(cfg, "trainer.devices", default=1)
        nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1)
        if nodes not in (None, 1):
            raise ConfigError(
                f"trainer.num_nodes={nodes}: this launcher runs jobs on one machine; "
                "use hydra/launcher=slurm for several nodes"
            )
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            raise ConfigError(f"trainer.devices: must be a positive integer, got {devices!r}")
        on_gpu = accel in ("gpu", "cuda") or (accel == "auto" and bool(self._visible_gpus()))
        return devices, on_gpu

    def _slots(self, shapes: list[tuple[int, bool]]) -> int:
        if self.parallel != "auto":
            return int(self.parallel)
        widest = max((n for n, gpu in shapes if gpu), default=0)
        return max(1, len(self._visible_gpus()) // widest) if widest else 1

    # -- one job ---------------------------------------------------------------------------

    def _command(self, job: Job, nproc: int) -> list[str]:
        assert self.config is not None
        launcher = [sys.executable]
        if nproc > 1:
            launcher += ["-m", __name__, "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}",
                         *_shutdown_timeout_flag(self.stop_grace_s), *self.torchrun_args]  # fmt: skip
        return [
            *launcher,
            str(self.script),
            *config_flags(self.config),
            *hydra_passthrough(self.config),
            f"hydra.run.dir={quoted(str(job.dir))}",
            # train.py's own stop deadline (flowhn.training.callbacks.AgreedStop) is this launcher's grace.
            f"hydra.launcher.stop_grace_s={self.stop_grace_s:g}",
            *job.overrides,
        ]

    def _start(self, job: Job, nproc: int, gpus: list[str]) -> _Running:
        assert self.config is not None
        cmd = self._command(job, nproc)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        begin_attempt(job, status="running", command=cmd, gpus=gpus, started=_now())
        log_file = (job.dir / LOG_FILE).open("w")
        proc = subprocess.Popen(
            cmd,
            cwd=str(self.config.hydra.runtime.cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # out of the terminal's group: Ctrl-C reaches the sweep only
        )
        return _Running(job, proc, gpus, time.monotonic(), log_file)

    def _stop(self, *runs: _Running) -> None:
        """End jobs and every process under them: SIGTERM (train.py saves last.ckpt and exits),
        then SIGKILL after ``stop_grace_s``, one grace for all of them. torchrun starts each worker
        in a session of its own, so the workers are found through the process tree, not the
        process group."""
        trees = {run.proc.pid: [run.proc.pid, *_descendants(run.proc.pid)] for run in runs}
        _signal_all([p for tree in trees.values() for p in tree], signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while time.monotonic() < deadline and any(_alive(p) for tree in trees.values() for p in tree):
            for run in runs:
                run.proc.poll()  # reap the job's own process so it does not linger as a zombie
            time.sleep(_POLL_S)
        for run in runs:
            _signal_all([*trees[run.proc.pid], *_descendants(run.proc.pid)], signal.SIGKILL)
            run.proc.wait()

    def _finish(self, run: _Running, note: str | None = None) -> JobReturn:
        run.log_file.close()
        job = run.job
        code = None if note else run.proc.returncode
        summary = finish_job(job.dir, code, note)
        update_record(
            job.dir,
            status=summary.get("status"),
            error=summary.get("error"),
            returncode=run.proc.returncode,
            wall_s=round(time.monotonic() - run.started, 1),
            ended=_now(),
        )
        return job.outcome(summary)

    # -- the sweep -------------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        jobs = plan(self.hydra_context, self.config, job_overrides, initial_job_idx, self.skip_completed)
        shapes = {job.index: self._shape(job.cfg) for job in jobs}
        for job in jobs:
            nproc, on_gpu = shapes[job.index]
            if on_gpu and nproc > len(self._visible_gpus()):
                raise ConfigError(
                    f"trainer.devices={nproc}: job {job.name} needs {nproc} GPUs, "
                    f"{len(self._visible_gpus())} are visible"
                )
        root = sweep_dir(self.config)
        if self.plan_file:
            details = {
                j.index: {"processes": shapes[j.index][0], "gpu": shapes[j.index][1],
                          "command": self._command(j, shapes[j.index][0])}
                for j in jobs
            }  # fmt: skip
            return write_plan(self.plan_file, root, jobs, details)

        todo, returns = set_aside_skipped(jobs)
        pending = deque(todo)
        slots = self._slots([shapes[j.index] for j in pending])
        log.info(f"Sweep {root}: {len(pending)} to run, {len(jobs) - len(pending)} skipped, {slots} at a time")
        # SIGTERM's default would end this process alone and leave the jobs (own sessions) running.
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
        try:
            self._run_all(pending, shapes, slots, returns)
        finally:
            signal.signal(signal.SIGTERM, previous)
            results = write_results(root)
            log.info(f"Results: {results}")
        return [returns[job.index] for job in jobs]

    def _run_all(
        self,
        pending: deque[Job],
        shapes: dict[int, tuple[int, bool]],
        slots: int,
        returns: dict[int, JobReturn],
    ) -> None:
        running: list[_Running] = []
        free = list(self._visible_gpus()) if any(gpu for _, gpu in shapes.values()) else []
        try:
            while pending or running:
                while pending and len(running) < slots:
                    job = pending[0]
                    nproc, on_gpu = shapes[job.index]
                    want = nproc if on_gpu else 0
                    if want > len(free):
                        break  # wait for a running job to hand its GPUs back
                    gpus, free = free[:want], free[want:]
                    pending.popleft()
                    log.info(f"  start  {job.name} ({job.decision.reason}; {nproc} process(es)"
                             f"{', GPUs ' + ','.join(gpus) if gpus else ''})")  # fmt: skip
                    running.append(self._start(job, nproc, gpus))
                time.sleep(_POLL_S)
                for run in list(running):
                    timed_out = self.timeout_s is not None and time.monotonic() - run.started > self.timeout_s
                    if run.proc.poll() is None and not timed_out:
                        continue
                    note = None
                    if run.proc.returncode is None:
                        self._stop(run)
                        note = f"stopped after hydra.launcher.timeout_min={self.timeout_s / 60:g}"
                    running.remove(run)
                    free += run.gpus
                    returns[run.job.index] = self._finish(run, note)
        except BaseException as exc:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop short
            self._stop(*running)
            why = "SIGTERM" if isinstance(exc, _SweepStopped) else type(exc).__name__
            for run in running:
                self._finish(run, f"interrupted: the sweep was stopped ({why})")
            raise


class _SweepStopped(SystemExit):
    """SIGTERM to the sweeping process: stop the jobs, then exit with 128 + SIGTERM."""


def _raise_stopped(signum: int, frame: Any) -> None:
    raise _SweepStopped(128 + signum)


def _shutdown_timeout_flag(grace_s: float) -> list[str]:
    """torchrun's own wait between its SIGTERM to the workers and SIGKILL (30 s by default) set to
    ``stop_grace_s``, where this torch's torchrun has the flag."""
    from torch.distributed.run import get_args_parser

    known = {opt for action in get_args_parser()._actions for opt in action.option_strings}
    return [f"--shutdown-timeout={max(1, int(grace_s))}"] if "--shutdown-timeout" in known else []


def torchrun_main(argv: Sequence[str] | None = None) -> None:
    """``torchrun`` with the exit status of a stop: 128 + signal when torchrun itself was signalled
    (it forwards the signal to the workers and waits for them), 128 + SIGTERM when the workers
    stopped on SIGTERM: each exited 143 (train.py's stop) or was ended by torchrun's own SIGTERM
    once the first one had (a worker still finalising); anything else as torchrun."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(list(sys.argv[1:] if argv is None else argv))
    except SignalException as exc:
        sys.exit(128 + int(exc.sigval))
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        if 128 + signal.SIGTERM in codes and codes <= {128 + signal.SIGTERM, -signal.SIGTERM}:
            print(f"torchrun: every worker stopped on SIGTERM (exit {128 + signal.SIGTERM})", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)
        raise


if __name__ == "__main__":
    from flowhn.startup import freeze_at_exit, imports_without_gc

    freeze_at_exit()  # src/flowhn/startup.py says why
    with imports_without_gc():
        import torch.distributed.run  # noqa: F401  (torchrun_main's import, made here without collections)
    torchrun_main()
