"""Sweep bookkeeping shared by sweep.py, the Hydra launchers and the report: job identity,
skipping finished jobs, and gathering summaries into ``results.csv``. Light on purpose (no
torch): Hydra imports the launcher plugin, and with it this package, on every start."""

from flowhn.sweeping.jobs import (
    JOB_FILE,
    LOG_FILE,
    SUMMARY_FILE,
    Decision,
    decide,
    identity,
    job_name,
    override_key,
    read_json,
    update_record,
    write_json,
)
from flowhn.sweeping.results import (
    PAPER_TASKS,
    JobResult,
    collect,
    failure_headline,
    finish_job,
    load_job,
    write_results,
)

__all__ = [
    "JOB_FILE",
    "LOG_FILE",
    "PAPER_TASKS",
    "SUMMARY_FILE",
    "Decision",
    "JobResult",
    "collect",
    "decide",
    "failure_headline",
    "finish_job",
    "identity",
    "job_name",
    "load_job",
    "override_key",
    "read_json",
    "update_record",
    "write_json",
    "write_results",
]
