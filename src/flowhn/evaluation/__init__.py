"""Zero-shot evaluation through lm-evaluation-harness: model adapter, paper tasks, offline fixtures."""

from flowhn.evaluation.lm import FlowHNLM
from flowhn.evaluation.tasks import FIXTURE_TASKS, PAPER_TASKS, fixture_task_dir, short_name
from flowhn.evaluation.zero_shot import (
    check_eval_config,
    eval_metrics,
    evaluate_lm,
    evaluate_module,
    run_zero_shot,
    summarize,
)

__all__ = [
    "FIXTURE_TASKS", "FlowHNLM", "PAPER_TASKS", "check_eval_config", "eval_metrics", "evaluate_lm",
    "evaluate_module", "fixture_task_dir", "run_zero_shot", "short_name", "summarize",
]
