"""From Hydra's list of job overrides to a plan: each job's folder, identity, W&B metadata and
what to do with it (run, resume, skip). Shared by the torchrun and submitit launchers, and
done for every job before any of them starts, so a bad grid fails at once."""


import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Quote, QuotedString
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from flowhn.errors import ConfigError
from flowhn.sweeping import (
    JOB_FILE,
    LOG_FILE,
    SUMMARY_FILE,
    Decision,
    decide,
    identity,
    job_name,
    override_key,
    read_json,
    write_json,
)

log = logging.getLogger(__name__)

# W&B tags longer than this are refused by the server.
_MAX_TAG = 64


@dataclass
class Job:
    index: int
    name: str
    dir: Path
    overrides: list[str]  # what the job runs with, W&B metadata included
    identity: list[str]
    axes: dict[str, str]
    cfg: DictConfig = field(repr=False)
    decision: Decision

    def record(self, **extra: Any) -> dict[str, Any]:
        """The job's ``job.json``: enough to recognise it on the next launch."""
        return {
            "name": self.name,
            "axes": self.axes,
            "identity": self.identity,
            "overrides": self.overrides,
            **extra,
        }

    def outcome(self, summary: dict[str, Any]) -> JobReturn:
        """Log how the job ended and hand Hydra its result; a failure becomes the exception
        Hydra's sweeper raises once every job of the batch is done."""
        if summary.get("status") == "completed":
            log.info(f"  done   {self.name}  val_loss={summary.get('val_loss')}  tps={summary.get('tps')}")
            return self.job_return(JobStatus.COMPLETED, summary)
        # "stopped" (SIGTERM, last.ckpt saved) is not completed either: the next launch resumes it.
        verdict = "stopped" if summary.get("status") == "stopped" else "failed"
        log.error(f"  {verdict.upper()} {self.name}: {summary.get('error')}")
        error = RuntimeError(f"sweep job {self.name} {verdict}: {summary.get('error')} (log: {self.dir / LOG_FILE})")
        return self.job_return(JobStatus.FAILED, error)

    def job_return(self, status: JobStatus, value: Any) -> JobReturn:
        return JobReturn(
            overrides=self.overrides,
            cfg=self.cfg,
            hydra_cfg=None,
            working_dir=str(self.dir),
            task_name=OmegaConf.select(self.cfg, "hydra.job.name"),
            status=status,
            _return_value=value,
        )


def set_aside_skipped(jobs: list[Job]) -> tuple[list[Job], dict[int, JobReturn]]:
    """The jobs still to run, and Hydra's results for the finished ones (logged as skipped)."""
    todo, returns = [], {}
    for job in jobs:
        if job.decision.action == "skip":
            log.info(f"  skipped {job.name} ({job.decision.reason})")
            returns[job.index] = job.job_return(JobStatus.COMPLETED, read_json(job.dir / SUMMARY_FILE))
        else:
            todo.append(job)
    return todo, returns


def begin_attempt(job: Job, **record: Any) -> None:
    """Make the job's folder ready for a new attempt: the previous attempt's log and verdict
    move aside (so they cannot pass for this one's), and ``job.json`` starts afresh."""
    job.dir.mkdir(parents=True, exist_ok=True)
    for name, kept in ((LOG_FILE, "job.prev.log"), (SUMMARY_FILE, "summary.prev.json")):
        if (job.dir / name).exists():
            (job.dir / name).replace(job.dir / kept)
    write_json(job.dir / JOB_FILE, job.record(**record))


def quoted(text: str) -> str:
    """``text`` as a Hydra override value, whatever characters it holds."""
    return QuotedString(text=str(text), quote=Quote.double).with_quotes()


def swept_keys(config: DictConfig) -> set[str]:
    """Keys given as sweeps on the command line or in ``hydra.sweeper.params``."""
    args = list(config.hydra.overrides.task)
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args += [f"{k}={v}" for k, v in params.items()]
    parsed = OverridesParser.create().parse_overrides(args)
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def sweep_dir(config: DictConfig) -> Path:
    path = Path(str(config.hydra.sweep.dir))
    return path if path.is_absolute() else Path(str(config.hydra.runtime.cwd)) / path


def _meta_overrides(cfg: DictConfig, group: str, axes: dict[str, str], given: set[str]) -> list[str]:
    """W&B grouping for a sweep job: the sweep's group, job_type "sweep", one tag per axis value.

    Values the user set on the command line win; tags from the config are kept.
    """
    out = []
    if "meta.group" not in given:
        out.append(f"++meta.group={quoted(group)}")
    if "meta.job_type" not in given:
        out.append("++meta.job_type=sweep")
    tags = [str(t) for t in (OmegaConf.select(cfg, "meta.tags") or [])]
    tags += [f"{k}={v}"[:_MAX_TAG] for k, v in axes.items()]
    tags = list(dict.fromkeys(tags))
    out.append("++meta.tags=[" + ",".join(quoted(t) for t in tags) + "]")
    return out


def plan(
    hydra_context: HydraContext,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    skip_completed: bool = True,
) -> list[Job]:
    """Compose every job's config and decide its fate; raise ConfigError on clashes."""
    root = sweep_dir(config)
    axes_keys = swept_keys(config)
    jobs: list[Job] = []
    seen: dict[str, list[str]] = {}
    for offset, overrides in enumerate(job_overrides):
        overrides = list(overrides)
        cfg = hydra_context.config_loader.load_sweep_config(config, overrides)
        axes = {override_key(o): o.split("=", 1)[1] for o in overrides if override_key(o) in axes_keys}
        name = job_name(axes, overrides)
        ident = identity(overrides)
        if seen.setdefault(name, ident) != ident:
            raise ConfigError(f"hydra.sweep.dir: two jobs of this sweep map to one folder '{name}'")
        given = {override_key(o) for o in overrides}
        group = str(OmegaConf.select(cfg, "meta.group") or root.name)
        runs_with = [o for o in overrides if override_key(o) != "meta.tags"]
        runs_with += _meta_overrides(cfg, group, axes, given)
        decision = decide(root / name, ident)
        if decision.action in ("skip", "resume"):
            decision = _check_unchanged(root / name, cfg, decision)
        if decision.action == "skip" and not skip_completed:
            decision = Decision("run", "completed, but hydra.launcher.skip_completed=false")
        if decision.action == "conflict":
            raise ConfigError(
                f"hydra.sweep.dir: {decision.reason}; delete that job folder or sweep into another dir"
            )
        jobs.append(
            Job(initial_job_idx + offset, name, root / name, runs_with, ident, axes, cfg, decision)
        )
    return jobs


def expected_config_hash(cfg: DictConfig, job_dir: Path) -> str:
    """The ``config_hash`` train.py would record for this job config, computed the way it does:
    in the job's Hydra context, without the hydra node, after its trainer settings are resolved."""
    from flowhn.training.checks import config_hash, resolve_trainer_settings

    cfg = copy.deepcopy(cfg)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(job_dir)
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        task_cfg = copy.deepcopy(cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        resolve_trainer_settings(task_cfg)
        return config_hash(task_cfg)
    finally:
        HydraConfig.instance().cfg = saved


def _check_unchanged(job_dir: Path, cfg: DictConfig, decision: Decision) -> Decision:
    """Same overrides are not enough to reuse a finished job or resume a checkpoint: the yaml
    behind them must be the same too, i.e. the recorded config_hash must match today's."""
    recorded = (read_json(job_dir / SUMMARY_FILE) or {}).get("config_hash")
    if recorded is None:
        return decision
    expected = expected_config_hash(cfg, job_dir)
    if expected == recorded:
        return decision
    return Decision(
        "conflict",
        f"{job_dir} ran with config_hash {recorded[:12]}, but the same overrides now give "
        f"{expected[:12]} (a config file changed)",
    )


def write_plan(path: str | Path, root: Path, jobs: list[Job], details: dict[int, dict]) -> list[JobReturn]:
    """Write what a launch would do (``hydra.launcher.plan_file``) instead of doing it."""
    entries = []
    for job in jobs:
        entry = {**job.record(), "dir": str(job.dir), "action": job.decision.action,
                 "reason": job.decision.reason, **details.get(job.index, {})}  # fmt: skip
        entries.append(entry)
        log.info(f"  {job.decision.action:7s} {job.name} ({job.decision.reason})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"sweep_dir": str(root), "jobs": entries})
    log.info(f"Plan of {len(jobs)} jobs written to {path}; nothing launched")
    return [job.job_return(JobStatus.COMPLETED, e) for job, e in zip(jobs, entries)]


def hydra_passthrough(config: DictConfig) -> list[str]:
    """The command line's ``hydra.*`` overrides a job process should see too (logging,
    verbosity, ...), without the ones that only make sense for the sweeping parent."""
    parent_only = (
        "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher", "hydra/launcher",
        "hydra.run", "hydra.mode", "hydra.job.num", "hydra.job.id",
    )  # fmt: skip
    return [o for o in config.hydra.overrides.hydra if not override_key(o).startswith(parent_only)]


def config_flags(config: DictConfig) -> list[str]:
    """``--config-path/--config-dir/--config-name`` so a job composes from the parent's sources."""
    flags = []
    for source in config.hydra.runtime.config_sources:
        where = source.path if source.schema == "file" else f"{source.schema}://{source.path}"
        if source.provider == "main":
            flags.append(f"--config-path={where}")
        elif source.provider == "command-line":
            flags.append(f"--config-dir={where}")
    flags.append(f"--config-name={config.hydra.job.config_name}")
    return flags
