"""Reading jobs for the report: from a sweep's job folders, single run folders, or a W&B group.

Every source ends in the same :class:`Run`: its swept axes, its ``summary.json``, its metrics per
step (with tokens and time beside the step), its resolved config and the command that makes it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flowhn.errors import ConfigError
from flowhn.sweeping import JOB_FILE, SUMMARY_FILE, identity, load_job, read_json
from flowhn.sweeping.jobs import is_launch_only
from flowhn.sweeping.results import job_dirs

ARCH_LABELS = {"llama": "LLaMA", "mamba": "Mamba-1", "mamba2": "Mamba-2", "jamba": "Jamba",
               "shm": "SHM", "hymba": "Hymba"}  # fmt: skip
SPLIT_LABELS = {"no_split": "No_Split", "ae_split": "AE_Split", "fa_split": "FA_Split", "fac_split": "FAC_Split"}
ROW_ORDER = [*ARCH_LABELS.values(), *SPLIT_LABELS.values()]
SCALE_ORDER = ["tiny", "135m", "350m", "1b"]
# Axes that the row label already says.
LABEL_AXES = {"model", "scale", "split"}
# Statuses of a job that has not finished well; each is shown and marked, never dropped.
# "stopped" is a preempted run (resumable), "missing" a launched job with no summary yet.
NOT_COMPLETED = ("running", "stopped", "failed", "missing")
# Config keys that never tell runs apart in a useful way (every scale's dims table, bookkeeping).
_UNINTERESTING = ("model.dims.", "data.cache_dir", "seed_workers")


@dataclass
class Run:
    """One job as the report sees it, wherever it was read from."""

    name: str
    axes: dict[str, str]
    summary: dict[str, Any]
    metrics: pd.DataFrame  # "step", "tokens", "time_s" and one column per logged metric
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, flattened to dotted keys
    command: str | None = None  # the train.py command that computes this run
    wandb: list[dict[str, Any]] = field(default_factory=list)  # its W&B runs: group, job_type, tags, offline dir

    def points(self, key: str) -> pd.DataFrame:
        """The (step, ``key``) rows where ``key`` was logged; empty when it never was."""
        if key not in self.metrics:
            return pd.DataFrame(columns=["step", key])
        return self.metrics[["step", key]].dropna()

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or "missing")

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def arch(self) -> str:
        return str(self.summary.get("arch") or self.axes.get("model") or self.config.get("model.name") or "?")

    @property
    def scale(self) -> str:
        return str(self.summary.get("scale") or self.axes.get("scale") or self.config.get("scale.name") or "?")

    @property
    def label(self) -> str:
        """Paper-style row name (FlowHN rows are named by their split), plus any other axes."""
        return self.label_without()

    def label_without(self, *axes: str) -> str:
        """The label leaving out ``axes`` as well (``label_without("seed")``: the row of a seed group)."""
        split = self.summary.get("split") or self.axes.get("split") or self.config.get("split.name")
        if self.arch == "flowhn":
            base = SPLIT_LABELS.get(str(split), f"FlowHN {split}")
        else:
            base = ARCH_LABELS.get(self.arch, self.arch)
        extra = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.axes.items() if k not in LABEL_AXES and k not in axes]
        return f"{base} ({', '.join(extra)})" if extra else base

    @property
    def base_label(self) -> str:
        return self.label.split(" (", 1)[0]

    @property
    def device(self) -> str | None:
        return self.summary.get("device")

    @property
    def peak_tflops(self) -> float | None:
        """The per-device peak the run's MFU was divided by: MFU = TPS × FLOPs/token / (peak ×
        devices) per window, so the medians in the summary give it back exactly; else the config's
        ``hardware.peak_tflops`` override."""
        s = self.summary
        tps, flops, mfu = s.get("tps"), s.get("flops_per_token"), s.get("mfu")
        if tps and flops and mfu:
            return tps * flops / (mfu * (s.get("num_devices") or 1)) / 1e12
        return self.config.get("hardware.peak_tflops")


def order_key(run: Run) -> tuple:
    """Scale, then the paper's row order, then other axes (numbers numerically)."""
    scale = SCALE_ORDER.index(run.scale) if run.scale in SCALE_ORDER else len(SCALE_ORDER)
    row = ROW_ORDER.index(run.base_label) if run.base_label in ROW_ORDER else len(ROW_ORDER)
    extras = [(0, float(v), "") if _is_number(v) else (1, 0.0, str(v)) for k, v in sorted(run.axes.items())
              if k not in LABEL_AXES]  # fmt: skip
    return scale, run.scale, row, run.base_label, extras, run.label


def _is_number(text: Any) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


# -- metrics ------------------------------------------------------------------------------

VALIDATION_PREFIX = "val/"


def align_steps(rows: pd.DataFrame, final_step: int | None) -> pd.DataFrame:
    """One row per step from Lightning's one-row-per-log-call output, with every validation point
    at the number of optimizer steps behind the weights it measured.

    Why validation moves: Lightning logs at ``_batches_that_stepped``, which its fit loop
    increments only *after* the validation that a batch triggers. Validation after optimizer
    step k is therefore logged at k − 1, while train.py's final ``trainer.validate`` after fit is
    logged at k. When the last in-loop validation falls on the last step, the same weights were
    validated twice and the curve drew the point twice (steps 39 and 40 of a 40-step run). So
    every validation row is moved to k, except the post-fit one: the row logged at the run's final
    step (``summary.json``'s ``steps``), where no in-loop validation can be logged. The two then
    share a step and collapse into one point; the post-fit value (the summary's ``val_loss``)
    wins. Training rows stay where they are: ``train/loss`` at step k is the loss of the batch
    trained on the weights after k steps, and ``perf/*`` rows are logged at ``global_step``.
    """
    if rows.empty or "step" not in rows:
        return pd.DataFrame({"step": pd.Series([], dtype="int64")})
    rows = rows.dropna(subset=["step"])
    val_cols = [c for c in rows.columns if c.startswith(VALIDATION_PREFIX)]
    if val_cols:
        val = rows[["step", *val_cols]].dropna(subset=val_cols, how="all").copy()
        in_loop = val["step"] != final_step if final_step is not None else pd.Series(True, index=val.index)
        val.loc[in_loop, "step"] = val.loc[in_loop, "step"] + 1
        rows = pd.concat([rows.drop(columns=val_cols), val], ignore_index=True)
    rows = rows.assign(step=rows["step"].astype("int64"))
    # groupby keeps each column's last non-blank value per step, in step order.
    return rows.groupby("step", as_index=False, sort=True).last()


def read_metrics(job_dir: Path, final_step: int | None = None) -> pd.DataFrame:
    """The job's CSVLogger metrics (all versions, a resumed run's included), one row per step."""
    frames = [_read_csv(f) for f in sorted(Path(job_dir).glob("csv/**/metrics.csv"))]
    frames = [f for f in frames if "step" in f.columns and not f.empty]
    if not frames:
        return pd.DataFrame({"step": pd.Series([], dtype="int64")})
    return align_steps(pd.concat(frames, ignore_index=True), final_step)


def _read_csv(path: Path) -> pd.DataFrame:
    """A metrics file, or nothing when a running job has only just created it."""
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame()


def tokens_per_step(summary: dict[str, Any], config: dict[str, Any]) -> float | None:
    """Training positions per optimizer step: the summary's count when it has one, else the config's
    batch × sequence × accumulation × devices (what train.py multiplies for ``tokens``)."""
    if summary.get("tokens") and summary.get("steps"):
        return summary["tokens"] / summary["steps"]
    try:
        devices = config.get("trainer.devices")
        devices = devices if isinstance(devices, int) else 1
        return float(config["data.batch_size"] * config["data.seq_len"] * devices
                     * (config.get("trainer.num_nodes") or 1) * (config.get("trainer.accumulate_grad_batches") or 1))
    except (KeyError, TypeError):
        return None


def training_time(steps: pd.Series, perf: pd.DataFrame) -> pd.Series:
    """Seconds of training at each step, from the measured step times of the throughput windows.

    Each ``perf/step_time_ms`` row closes a window ending at its step, covering the steps since
    the previous window; steps before the first window (warm-up) and after the last take the
    nearest window's step time. Validation, compilation and evaluation are not in it, so runs
    compare on the time their training steps take."""
    windows = perf[["step", "perf/step_time_ms"]].dropna() if "perf/step_time_ms" in perf else perf.iloc[0:0]
    if windows.empty or steps.empty:
        return pd.Series(float("nan"), index=steps.index)
    ends = windows["step"].astype(int).tolist()
    ms = windows["perf/step_time_ms"].astype(float).tolist()
    last = int(max(int(steps.max()), ends[-1]))
    per_step = []
    window = 0
    for s in range(1, last + 1):
        while window < len(ends) - 1 and s > ends[window]:
            window += 1
        per_step.append(ms[window] / 1000.0)
    cumulative = pd.Series([0.0, *per_step]).cumsum()
    return steps.clip(lower=0).astype(int).map(cumulative)


def with_axes(metrics: pd.DataFrame, per_step: float | None) -> pd.DataFrame:
    """Add the curves' other x axes: ``tokens`` trained and ``time_s`` of training."""
    metrics = metrics.copy()
    metrics["tokens"] = metrics["step"] * per_step if per_step else float("nan")
    metrics["time_s"] = training_time(metrics["step"], metrics)
    return metrics


# -- local job folders --------------------------------------------------------------------


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in (tree.items() if isinstance(tree, dict) else ()):
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def reproduce_command(job_dir: Path) -> str | None:
    """``python train.py <overrides>`` with the overrides that decide what the job computes: the
    launcher's recorded identity for a sweep job, else the run's own ``.hydra/overrides.yaml``."""
    record = read_json(job_dir / JOB_FILE) or {}
    overrides = record.get("identity")
    if overrides is None:
        hydra_overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
        if not isinstance(hydra_overrides, list):
            return None
        overrides = identity(str(o) for o in hydra_overrides)
    return shlex.join(["python", "train.py", *overrides])


def load_run(job_dir: Path, name: str | None = None) -> Run:
    result = load_job(job_dir)
    config = flatten(_read_yaml(job_dir / "config.yaml") or _read_yaml(job_dir / ".hydra" / "config.yaml") or {})
    metrics = read_metrics(job_dir, result.summary.get("steps"))
    metrics = with_axes(metrics, tokens_per_step(result.summary, config))
    return Run(name or result.name, result.axes, result.summary, metrics, config, reproduce_command(job_dir),
               _wandb_info(job_dir))


def _wandb_info(job_dir: Path) -> list[dict[str, Any]]:
    """The job's offline W&B runs as the report shows them; a file it cannot read is left out
    (the CSV is the report's record, W&B's files only say how the runs are grouped)."""
    from flowhn.report.wandb_offline import offline_runs

    try:
        found = offline_runs(job_dir)
    except (ImportError, OSError, ValueError):
        return []
    return [{"group": r.group, "job_type": r.job_type, "tags": r.tags, "offline_dir": str(r.run_dir)} for r in found]


def _is_job_dir(path: Path) -> bool:
    return (path / JOB_FILE).exists() or (path / SUMMARY_FILE).exists()


def local_runs(paths: Path | Sequence[Path]) -> list[Run]:
    """The runs under a sweep folder, or the given run folders (several sweeps and runs mix)."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"{path}: no such sweep folder or run folder")
        jobs = [path] if _is_job_dir(path) else job_dirs(path)
        if not jobs:
            raise ConfigError(f"{path}: no job folders (job.json or summary.json) found")
        found += jobs
    found = list(dict.fromkeys(p.resolve() for p in found))
    names = _short_names(found)
    return [load_run(p, n) for p, n in zip(found, names)]


def _short_names(dirs: list[Path]) -> list[str]:
    """Folder names, or paths below the folders' common parent where names repeat."""
    plain = [d.name for d in dirs]
    if len(set(plain)) == len(plain):
        return plain
    root = Path(os.path.commonpath([str(d) for d in dirs]))
    return [str(d.relative_to(root)) for d in dirs]


def differing_config(runs: Iterable[Run]) -> dict[str, dict[str, Any]]:
    """Per run name, the config keys whose values are not the same in every run that has a config
    (launch-only keys such as paths, W&B metadata and ``hydra`` left out)."""
    runs = [r for r in runs if r.config]
    keys = sorted({k for r in runs for k in r.config})
    keys = [k for k in keys if not is_launch_only(k) and not k.startswith(_UNINTERESTING)]
    values = {r.name: {k: _portable(r.config[k], r.config) if k in r.config else ABSENT for k in keys} for r in runs}
    differ = [k for k in keys if len({repr(v[k]) for v in values.values()}) > 1]
    return {name: {k: v[k] for k in differ} for name, v in values.items()}


# A key one run's config has and another's lacks (a config written before the key was added).
ABSENT = "(not in this run's config)"


def _portable(value: Any, config: dict[str, Any]) -> Any:
    """A value with the run's own folder written as <run_dir>: paths derived from it (checkpoint
    folders) differ between every two runs without telling them apart."""
    out_dir = config.get("paths.output_dir")
    if isinstance(value, str) and out_dir and out_dir in value:
        return value.replace(out_dir, "<run_dir>")
    return value


# -- W&B ----------------------------------------------------------------------------------


def wandb_runs(group: str, project: str, entity: str | None) -> list[Run]:
    """The runs of a W&B group, read through the public API (needs network and an API key)."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        raise ConfigError(
            f"--wandb-group: WANDB_MODE={os.environ['WANDB_MODE']} is set, and the W&B API needs to be "
            "online; leave out --wandb-group to report from the local job folders"
        )
    import wandb

    try:
        api = wandb.Api(timeout=30)
        found = list(api.runs(f"{entity}/{project}" if entity else project, filters={"group": group}))
    except Exception as exc:  # no API key, no network, unknown project: all end the report here
        raise ConfigError(f"--wandb-group: cannot read W&B group {group!r} of {project!r}: {exc}") from exc
    if not found:
        raise ConfigError(f"--wandb-group: W&B group {group!r} of project {project!r} has no runs")
    return [_wandb_run(run) for run in found]


# summary.json keys and the logged metric each falls back to when a run's summary lacks it.
_WANDB_KEYS = {"val_loss": "val/loss", "tps": "perf/tps", "mfu": "perf/mfu", "eval_avg": "eval/avg"}
# W&B run states and the summary status they mean here.
_WANDB_STATES = {"finished": "completed", "crashed": "failed", "killed": "stopped"}


def _wandb_run(run: Any) -> Run:
    summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
    summary["status"] = _WANDB_STATES.get(run.state, run.state)
    evals: dict[str, dict[str, float]] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            evals.setdefault(parts[1], {})[parts[2]] = value
    summary.setdefault("eval", evals)
    for key, logged in _WANDB_KEYS.items():
        summary.setdefault(key, summary.get(logged))
    config = flatten(dict(run.config))
    # meta.name is "<model>-<scale>-<split>-<fusion>"; tags are the swept "key=value" pairs.
    model, scale, split = (run.name.split("-") + [None] * 3)[:3]
    summary.setdefault("arch", model)
    summary.setdefault("scale", scale)
    summary.setdefault("split", split)
    axes = dict(tag.split("=", 1) for tag in run.tags if "=" in tag)
    history = run.history(samples=100_000, pandas=True)
    step = "trainer/global_step" if "trainer/global_step" in history else "_step"
    metrics = align_steps(history.rename(columns={step: "step"}), summary.get("steps"))
    metrics = with_axes(metrics, tokens_per_step(summary, config))
    command = shlex.join(["python", "train.py", *(f"{k}={v}" for k, v in axes.items())]) if axes else None
    return Run(run.name, axes, summary, metrics, config, command)
