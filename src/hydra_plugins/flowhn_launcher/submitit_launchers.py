"""hydra-submitit-launcher's launchers with this platform's sweep bookkeeping.

Submission and the in-job run are submitit's (each SLURM task runs Hydra's ``run_job`` of the
task function); on top of that the sweep is planned like the local launcher does (job folders
named by swept values via ``hydra.sweep.subdir``, finished jobs skipped, W&B group and tags),
a job that SLURM kills is recorded as failed while the others go on, and ``results.csv`` is
written at the end.

Multi-node DDP goes through Lightning's SLURM environment: one task per GPU, i.e.
``tasks_per_node = gpus_per_node = trainer.devices`` and ``nodes = trainer.num_nodes``
(conf/hydra/launcher/slurm.yaml ties them together; a job that disagrees is refused here).
"""


import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
except ModuleNotFoundError as missing:
    # Optional at run time: without it these launchers refuse in one line, and Hydra's plugin
    # scan does not warn (a module of hydra_plugins whose import fails makes it warn on every run).
    if not (missing.name or "").startswith(("hydra_plugins.hydra_submitit_launcher", "submitit")):
        raise
    from hydra_plugins.flowhn_launcher._submitit_missing import BaseQueueConf, BaseSubmititLauncher

from omegaconf import OmegaConf

from flowhn.errors import ConfigError
from flowhn.sweeping import LOG_FILE, finish_job, update_record, write_results
from hydra_plugins.flowhn_launcher.planning import (
    Job,
    begin_attempt,
    plan,
    quoted,
    set_aside_skipped,
    sweep_dir,
    write_plan,
)

log = logging.getLogger(__name__)


class _PlannedSubmititLauncher(BaseSubmititLauncher):
    def __init__(self, plan_file: str | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.plan_file = plan_file

    def executor(self) -> Any:
        """The submitit executor with this launcher's parameters (as hydra-submitit builds it)."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in shared else f"{self._EXECUTOR}_{k}": v
            for k, v in self.params.items() if k not in init_keys
        })  # fmt: skip
        if self._EXECUTOR == "slurm":
            # SIGTERM (not submitit's USR2, which only its rank 0 acts on) to every task signal_delay_s
            # before the time limit: train.py's ranks then stop at one step, save last.ckpt and exit 143.
            signal = {"signal": f"TERM@{int(self.params.get('signal_delay_s') or 120)}"}
            executor.update_parameters(slurm_additional_parameters={**signal, **(self.params.get("additional_parameters") or {})})
        return executor

    def check_shape(self, job: Job) -> None:
        """Lightning's SLURM environment needs one task per device on every node."""
        devices = OmegaConf.select(job.cfg, "trainer.devices", default=1)
        nodes = OmegaConf.select(job.cfg, "trainer.num_nodes", default=1)
        tasks = self.params.get("tasks_per_node", 1)
        if devices != tasks or nodes != self.params.get("nodes", 1):
            raise ConfigError(
                f"trainer.devices={devices}, trainer.num_nodes={nodes}: job {job.name} must match "
                f"hydra.launcher.tasks_per_node={tasks} and hydra.launcher.nodes="
                f"{self.params.get('nodes', 1)} (one SLURM task per device); sweep those keys "
                "in separate sweeps"
            )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        jobs = plan(self.hydra_context, self.config, job_overrides, initial_job_idx)
        for job in jobs:
            self.check_shape(job)
        root = sweep_dir(self.config)
        if self.plan_file:
            return write_plan(self.plan_file, root, jobs, {})
        root.mkdir(parents=True, exist_ok=True)
        todo, returns = set_aside_skipped(jobs)
        try:
            if todo:
                self._submit_and_wait(todo, returns)
        finally:
            log.info(f"Results: {write_results(root)}")
        return [returns[job.index] for job in jobs]

    def _submit_and_wait(self, jobs: list[Job], returns: dict[int, JobReturn]) -> None:
        for job in jobs:
            begin_attempt(job, status="submitted")
        args = [
            (
                [*job.overrides, f"hydra.sweep.subdir={quoted(job.name)}"],
                "hydra.sweep.dir",
                job.index,
                f"job_id_for_{job.index}",
                Singleton.get_state(),
            )
            for job in jobs
        ]
        submitted = self.executor().map_array(self, *zip(*args))
        for job, handle in zip(jobs, submitted):
            log.info(f"  submitted {job.name} as {self._EXECUTOR} job {handle.job_id}")
            update_record(job.dir, scheduler_id=handle.job_id)
        for job, handle in zip(jobs, submitted):
            note = None
            try:
                result: JobReturn = handle.results()[0]
                code = 0 if result.status == JobStatus.COMPLETED else 1
            except Exception as exc:  # killed, timed out, out of memory: submitit says why
                code, note = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            self._copy_logs(handle, job.dir / LOG_FILE)
            summary = finish_job(job.dir, code, note)
            update_record(job.dir, status=summary.get("status"), error=summary.get("error"))
            returns[job.index] = job.outcome(summary)

    @staticmethod
    def _copy_logs(handle: Any, dest: Path) -> None:
        """Put submitit's stdout and stderr of the job's first task where the sweep keeps logs."""
        parts = []
        for path in (handle.paths.stdout, handle.paths.stderr):
            if Path(path).exists():
                parts.append(Path(path).read_text(errors="replace"))
        dest.write_text("\n".join(parts))


class SlurmLauncher(_PlannedSubmititLauncher):
    _EXECUTOR = "slurm"


class LocalLauncher(_PlannedSubmititLauncher):
    """submitit's local executor: the SLURM code path on one machine, for tests and debugging."""

    _EXECUTOR = "local"
