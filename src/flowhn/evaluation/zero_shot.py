"""Zero-shot accuracy through lm-eval's ``simple_evaluate``, summarised the way the paper reports it."""

from __future__ import annotations

from typing import Any

import torch

from flowhn.errors import ConfigError
from flowhn.evaluation.lm import FlowHNLM
from flowhn.evaluation.tasks import check_tasks, short_name
from flowhn.perf.hardware import normalize_dtype


def check_limit(limit) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"eval.limit: must be a positive integer or null, got {limit!r}")
    return limit


def check_eval_config(eval_cfg, *, required: bool = False):
    """Validate the ``eval`` config group (dict or DictConfig) before any work starts.

    Returns the TaskManager that knows ``eval.tasks``. An empty task list means "no evaluation"
    (None is returned) unless ``required``.
    """
    if not eval_cfg.get("tasks") and not required:
        return None
    _, manager = check_tasks(eval_cfg.get("tasks"))
    check_limit(eval_cfg.get("limit"))
    batch_size, max_length = eval_cfg.get("batch_size", 16), eval_cfg.get("max_length")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"eval.batch_size: must be an integer >= 1, got {batch_size!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise ConfigError(f"eval.max_length: must be null or an integer >= 2, got {max_length!r}")
    if eval_cfg.get("precision") is not None:
        try:
            normalize_dtype(eval_cfg.get("precision"))
        except ValueError as err:
            raise ConfigError(f"eval.precision: {err}") from None
    return manager


def evaluate_lm(lm, tasks: list[str], *, limit: int | None = None, log_samples: bool = False,
                manager=None) -> dict[str, Any]:
    """Raw ``lm_eval.simple_evaluate`` results for ``tasks`` (lm-eval names or ``fixture_*``)."""
    import lm_eval

    check_limit(limit)
    tasks, manager = check_tasks(tasks, manager)
    # acc and acc_norm are means with a closed-form stderr; the bootstrap count only matters for
    # other metrics a user's extra task might bring.
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=0, limit=limit, task_manager=manager,
                                   log_samples=log_samples, bootstrap_iters=1000)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """``{"arc_e": {"acc", "acc_norm"}, ..., "avg"}`` from raw lm-eval results.

    ``acc_norm`` is None for tasks that do not define it (winogrande, boolq). ``avg`` is the plain,
    unweighted mean of ``acc`` over the tasks, the paper's "Avg" column (its Table 1 averages acc,
    not acc_norm, over the six tasks).
    """
    out: dict[str, Any] = {}
    for task, metrics in results["results"].items():
        acc = metrics.get("acc,none")
        if acc is None:
            raise ValueError(f"lm-eval task {task!r} reports no acc; only multiple-choice/loglikelihood tasks "
                             "with an acc metric can be summarised")
        acc_norm = metrics.get("acc_norm,none")
        out[short_name(task)] = {"acc": float(acc), "acc_norm": None if acc_norm is None else float(acc_norm)}
    out["avg"] = sum(v["acc"] for v in out.values()) / len(out)
    return out


def run_zero_shot(model: torch.nn.Module, tokenizer, tasks: list[str], *, limit: int | None = None,
                  batch_size: int = 16, device: str | torch.device | None = None, max_length: int,
                  pad_to: str = "auto", add_bos_token: bool = False, precision: str = "32-true") -> dict[str, Any]:
    """Zero-shot accuracy of ``model`` on lm-eval ``tasks``, as ``summarize`` returns it.

    ``max_length`` should be the model's training sequence length. The model is put in eval mode
    for the run and given back in the mode it came in (on ``device``).
    """
    was_training = model.training
    try:
        lm = FlowHNLM(model, tokenizer, max_length=max_length, batch_size=batch_size, device=device,
                      pad_to=pad_to, add_bos_token=add_bos_token, precision=precision)
        return summarize(evaluate_lm(lm, tasks, limit=limit))
    finally:
        model.train(was_training)


def evaluate_module(module, tokenizer, eval_cfg, trainer=None) -> dict[str, Any]:
    """Zero-shot evaluation at the end of a training run; ``run_zero_shot``'s dict on rank 0, ``{}`` elsewhere.

    ``module.model`` is the network and ``module.hparams["cfg"]`` the resolved train config (the
    checkpoint contract). ``eval_cfg`` is the ``eval`` config group. With a ``trainer``, the run
    uses its device (Lightning moves the module to CPU after fit) and precision, and logs the
    flat ``eval/*`` metrics to its loggers.
    """
    if trainer is not None and not trainer.is_global_zero:
        return {}  # every rank would score the same requests; one is enough
    train_cfg = module.hparams["cfg"]
    device = trainer.strategy.root_device if trainer is not None else module.device
    precision = eval_cfg.get("precision") or (str(trainer.precision) if trainer is not None else "32-true")
    summary = run_zero_shot(
        module.model, tokenizer, list(eval_cfg.tasks), limit=eval_cfg.get("limit"),
        batch_size=eval_cfg.get("batch_size", 16), device=device,
        max_length=eval_cfg.get("max_length") or train_cfg["data"]["seq_len"],
        add_bos_token=eval_cfg.get("add_bos_token", False), precision=precision)
    if trainer is not None:
        metrics = eval_metrics(summary)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
    return summary


def eval_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat ``eval/<task>/acc``, ``eval/<task>/acc_norm`` (when defined) and ``eval/avg`` for loggers."""
    flat = {"eval/avg": float(summary["avg"])}
    for task, scores in summary.items():
        if task == "avg":
            continue
        for metric, value in scores.items():
            if value is not None:
                flat[f"eval/{task}/{metric}"] = float(value)
    return flat
