"""Zero-shot evaluation of a training checkpoint.

    python -m flowhn.evaluate ckpt=<run_dir>/checkpoints/last.ckpt              # the paper's six tasks
    python -m flowhn.evaluate ckpt=... eval=fixtures eval.limit=4                # offline fixtures
    python -m flowhn.evaluate ckpt=... 'eval.tasks=[arc_easy,piqa]'

Checkpoint contract (the training LightningModule): ``hyper_parameters["cfg"]`` is the resolved
train config as a plain dict, the weights are under ``model.``, and the tokenizer was saved with
``save_pretrained`` to ``<run_dir>/tokenizer/``. Writes ``eval.json`` next to the checkpoint.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from flowhn.errors import ConfigError, error_line
from flowhn.quiet import silence_known_noise


def load_checkpoint_model(ckpt: Path, build_model: Callable[[DictConfig], torch.nn.Module] | None = None):
    """``(model, train_cfg)`` rebuilt from a checkpoint; ``build_model`` defaults to ``flowhn.build_model``."""
    from flowhn.safe_load import load_checkpoint

    # A shared checkpoint must not run code: it loads as tensors and plain values only.
    try:
        state = load_checkpoint(ckpt)
    except Exception as exc:
        raise ConfigError(f"ckpt: cannot read checkpoint {ckpt}: {error_line(exc)}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"ckpt: {ckpt} is not a flowhn training checkpoint (not a dict)")
    hparams = state.get("hyper_parameters") or {}
    if "cfg" not in hparams:
        raise ConfigError(f"ckpt: {ckpt} has no hyper_parameters['cfg'] (the resolved train config); "
                          "was it written by flowhn's LightningModule?")
    cfg = OmegaConf.create(hparams["cfg"])
    if build_model is None:
        from flowhn import build_model
    model = build_model(cfg)
    weights = {}
    for key, value in state["state_dict"].items():
        if key.startswith("model."):
            # torch.compile wraps modules as `_orig_mod`; the rebuilt model is not compiled.
            weights[key.removeprefix("model.").replace("_orig_mod.", "")] = value
    model.load_state_dict(weights, strict=True)
    return model, cfg


def evaluate_checkpoint(ckpt: str | Path, *, tasks: list[str], limit: int | None = None, batch_size: int = 16,
                        max_length: int | None = None, device: str = "auto", add_bos_token: bool = False,
                        precision: str | None = None, out: str | Path | None = None,
                        build_model: Callable[[DictConfig], torch.nn.Module] | None = None) -> dict[str, Any]:
    """Run lm-eval ``tasks`` on a checkpoint, write ``eval.json`` (default: next to it), return it."""
    ckpt = Path(ckpt).expanduser().resolve()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt: {ckpt} does not exist")
    tokenizer_dir = ckpt.parent.parent / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise ConfigError(f"ckpt: no tokenizer at {tokenizer_dir} (a checkpoint <run_dir>/checkpoints/{ckpt.name} "
                          "needs <run_dir>/tokenizer/)")
    # After the path checks: lm-eval and transformers take seconds to import.
    from transformers import AutoTokenizer

    from flowhn.evaluation import FlowHNLM, check_eval_config, eval_metrics, evaluate_lm, short_name, summarize

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    manager = check_eval_config({"tasks": tasks, "limit": limit, "batch_size": batch_size, "max_length": max_length,
                                 "precision": precision}, required=True)
    tasks = list(tasks)

    model, cfg = load_checkpoint_model(ckpt, build_model)
    max_length = max_length or int(cfg.data.seq_len)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lm = FlowHNLM(model, tokenizer, max_length=max_length, batch_size=batch_size, device=device,
                  add_bos_token=add_bos_token, precision=precision or "32-true")
    raw = evaluate_lm(lm, tasks, limit=limit, manager=manager)
    summary = summarize(raw)

    def stderr(metrics: dict, name: str):
        value = metrics.get(f"{name}_stderr,none")
        return value if isinstance(value, float) else None

    report = {
        "checkpoint": str(ckpt),
        "tasks": tasks,
        "limit": limit,
        "max_length": max_length,
        "results": summary,
        "metrics": eval_metrics(summary),
        "n_samples": {short_name(t): raw["n-samples"][t]["effective"] for t in raw["results"]},
        "stderr": {short_name(t): {"acc": stderr(m, "acc"), "acc_norm": stderr(m, "acc_norm")}
                   for t, m in raw["results"].items()},
        "lm_eval_version": raw.get("lm_eval_version"),
    }
    out = Path(out) if out else ckpt.parent / "eval.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"wrote {out}")
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'task':<8} {'acc':>7} {'acc_norm':>9} {'n':>6}"]
    for task, scores in report["results"].items():
        if task == "avg":
            continue
        norm = "-" if scores["acc_norm"] is None else f"{100 * scores['acc_norm']:.2f}"
        lines.append(f"{task:<8} {100 * scores['acc']:>7.2f} {norm:>9} {report['n_samples'][task]:>6}")
    lines.append(f"{'avg':<8} {100 * report['results']['avg']:>7.2f}")
    return "\n".join(lines)


@hydra.main(config_path="../../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    silence_known_noise()  # before Lightning or lm-eval is imported
    try:
        if OmegaConf.is_missing(cfg, "ckpt"):
            raise ConfigError("ckpt: missing; pass ckpt=<run_dir>/checkpoints/<name>.ckpt")
        evaluate_checkpoint(cfg.ckpt, tasks=OmegaConf.to_container(cfg.eval.tasks), limit=cfg.eval.limit,
                            batch_size=cfg.eval.batch_size, max_length=cfg.eval.max_length, device=cfg.device,
                            add_bos_token=cfg.eval.add_bos_token, precision=cfg.eval.precision, out=cfg.out)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from flowhn.startup import freeze_at_exit

    freeze_at_exit()  # the interpreter's exit without a collection over torch's objects (flowhn/startup.py)
    main()
