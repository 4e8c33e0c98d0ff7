"""The paper's six zero-shot tasks, their offline fixtures, and the lm-eval TaskManager for them.

Each fixture task is lm-eval's own task config pulled in with ``include:`` (so prompts, answer
choices, preprocessing and metrics are the harness's, byte for byte) with only the dataset swapped
for a small local JSONL in the original schema. ``include:`` and ``data_files`` need absolute
paths, and lm-eval lives wherever the environment put it, so the YAML files are written at run
time into a private directory (``fixture_task_dir()``) that ``TaskManager(include_path=...)`` reads.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import lm_eval.tasks
import yaml

from flowhn.errors import ConfigError

FIXTURE_DATA = Path(__file__).parent / "fixtures"
LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent

# lm-eval task name -> (short name used in tables/metrics, lm-eval yaml it lives in, split it scores)
PAPER_TASKS: dict[str, tuple[str, str, str]] = {
    "arc_easy": ("arc_e", "arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc_c", "arc/arc_challenge.yaml", "test"),
    "winogrande": ("wino", "winogrande/default.yaml", "validation"),
    "piqa": ("piqa", "piqa/piqa.yaml", "validation"),
    "hellaswag": ("hella", "hellaswag/hellaswag.yaml", "validation"),
    "boolq": ("boolq", "super_glue/boolq/default.yaml", "validation"),
}
FIXTURE_PREFIX = "fixture_"
FIXTURE_TASKS = tuple(FIXTURE_PREFIX + name for name in PAPER_TASKS)


def short_name(task: str) -> str:
    """arc_easy and fixture_arc_easy -> arc_e, ...; other lm-eval tasks keep their own name."""
    base = task.removeprefix(FIXTURE_PREFIX)
    return PAPER_TASKS[base][0] if base in PAPER_TASKS else task


def fixture_config(task: str) -> dict:
    """The task config of ``fixture_<task>``: lm-eval's own config, local data."""
    _, yaml_path, split = PAPER_TASKS[task]
    return {
        "include": str(LM_EVAL_TASKS / yaml_path),
        "task": FIXTURE_PREFIX + task,
        "tag": [],  # keep fixtures out of lm-eval's tags (ai2_arc, multiple_choice, ...)
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(FIXTURE_DATA / f"{task}.jsonl")}},
        # Only the scored split exists locally; zero-shot never needs a training split.
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
    }


@functools.cache
def fixture_task_dir() -> Path:
    """Directory holding ``fixture_<task>.yaml`` for all six tasks (one per process)."""
    root = Path(tempfile.mkdtemp(prefix="flowhn_lm_eval_tasks_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for task in PAPER_TASKS:
        (root / f"{FIXTURE_PREFIX}{task}.yaml").write_text(yaml.safe_dump(fixture_config(task), sort_keys=False))
    return root


def task_manager(tasks: list[str]):
    """A TaskManager that knows ``tasks``, indexing only the folders they need when it can.

    Indexing all of lm-eval takes ~10 s; the paper tasks and fixtures need a handful of folders.
    """
    from lm_eval.tasks import TaskManager

    if not all(t.removeprefix(FIXTURE_PREFIX) in PAPER_TASKS for t in tasks):
        return _full_task_manager()
    folders = sorted({str((LM_EVAL_TASKS / PAPER_TASKS[t][1]).parent) for t in tasks if t in PAPER_TASKS})
    return TaskManager(include_path=[str(fixture_task_dir()), *folders], include_defaults=False)


@functools.cache
def _full_task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(fixture_task_dir()))


def check_tasks(tasks, manager=None):
    """Validate ``eval.tasks`` before any work starts; returns ``(tasks as a list, TaskManager)``."""
    if tasks is None or isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
        raise ConfigError(f"eval.tasks: must be a list of lm-eval task names, got {tasks!r}")
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("eval.tasks: empty; name lm-eval tasks, e.g. eval=paper (needs the HF hub) "
                          "or eval=fixtures (offline)")
    shorts = [short_name(t) for t in tasks]
    clash = sorted({s for s in shorts if shorts.count(s) > 1})
    if clash:
        raise ConfigError(f"eval.tasks: {tasks} would report {clash} twice (a task and its fixture share a short name)")
    manager = manager or task_manager(tasks)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"eval.tasks: unknown lm-eval task(s) {unknown}; "
                          f"the offline fixtures are {list(FIXTURE_TASKS)}")
    return tasks, manager
