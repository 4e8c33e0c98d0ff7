"""Hardening: checkpoints load as data and never run code; the submitit launchers are optional
and say so in one line; a default run prints no warning the platform could have prevented.

The checkpoint tests use a file whose pickle runs code when fully unpickled (it writes a marker
file); the first test proves the payload really runs under ``weights_only=False``, so the other
tests' "the marker was never written" can fail.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_train

from flowhn.errors import ConfigError
from flowhn.quiet import LIGHTNING_RANK_ZERO_LOGGER, silence_known_noise


class WritesMarker:
    """Unpickling this calls ``exec``: what a malicious checkpoint would do, made visible."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran on load')",))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A file shaped like a flowhn training checkpoint, with code hidden in its pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "state_dict": {"model.embed.weight": torch.zeros(4, 2)},
        "hyper_parameters": {"cfg": {"model": {"name": "flowhn"}}, "payload": WritesMarker(marker)},
        "global_step": 1,
    }, path)
    return path


@pytest.fixture
def evil(tmp_path):
    """(checkpoint in <run>/checkpoints/, the marker its payload would write); <run>/tokenizer/ exists
    so that evaluation gets as far as loading the checkpoint."""
    marker = tmp_path / "MARKER_code_ran"
    ckpt = malicious_checkpoint(tmp_path / "run" / "checkpoints" / "evil.ckpt", marker)
    (tmp_path / "run" / "tokenizer").mkdir()
    return ckpt, marker


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    return lines[0]


def test_the_payload_really_runs_when_fully_unpickled(evil):
    ckpt, marker = evil
    torch.load(ckpt, map_location="cpu", weights_only=False)
    assert marker.read_text() == "code ran on load"


def test_evaluate_refuses_a_checkpoint_that_would_run_code(evil):
    from flowhn.evaluate import load_checkpoint_model

    ckpt, marker = evil
    with pytest.raises(ConfigError) as err:
        load_checkpoint_model(ckpt)
    message = one_line(str(err.value))
    assert message.startswith(f"ckpt: cannot read checkpoint {ckpt}: refused to unpickle it: ")
    assert "exec" in message and "weights_only=True" in message and "\x1b" not in message
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_that_would_run_code(evil, tmp_path):
    """train.py's resume path: run() calls check_resume before Lightning opens the file, and
    train.py prints its ConfigError as one line with exit status 2 (tests/test_bad_inputs.py)."""
    from flowhn.training.run import check_resume

    ckpt, marker = evil
    cfg = compose_train(f"paths.output_dir={tmp_path}", f"ckpt_path={ckpt}")
    with pytest.raises(ConfigError) as err:
        check_resume(cfg, str(ckpt))
    message = one_line(str(err.value))
    assert message.startswith(f"ckpt_path: cannot read checkpoint {ckpt}: refused to unpickle it: ")
    assert not marker.exists()


def test_lightnings_own_checkpoint_loader_refuses_it_too(evil):
    """What ``trainer.fit(ckpt_path=...)`` calls; check_resume refuses first, this is the second wall
    (torch >= 2.6 defaults to weights_only=True when Lightning passes None)."""
    from flowhn.training.checkpointing import AtomicCheckpointIO

    ckpt, marker = evil
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(ckpt)
    assert not marker.exists()


def test_every_torch_load_in_the_platform_is_weights_only():
    """A source check, so a loader added later cannot open the door again."""
    calls = []
    for path in [*sorted((ROOT / "src").rglob("*.py")), ROOT / "train.py", ROOT / "sweep.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = ast.unparse(node.func.value)
                assert owner not in ("pickle", "dill", "cloudpickle", "joblib"), f"{path}:{node.lineno}: {owner}.load"
                if owner == "torch":
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords)
                    calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls, "no torch.load found: the check lost its target"
    assert [where for where, safe in calls if not safe] == []


@pytest.mark.slow
def test_evaluate_cli_on_a_malicious_checkpoint_exits_2_with_one_line(evil):
    ckpt, marker = evil
    proc = subprocess.run([sys.executable, "-m", "flowhn.evaluate", f"ckpt={ckpt}", "eval=fixtures", "eval.limit=1",
                           "device=cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert one_line(proc.stderr).startswith(f"config error: ckpt: cannot read checkpoint {ckpt}: refused")
    assert not marker.exists()


# ---------------------------------------------------------------- submitit launchers are optional

# Runs a script as if hydra-submitit-launcher were not installed: its modules cannot be imported,
# and Hydra's plugin scan (which walks hydra_plugins.__path__ with the file finders) cannot see them.
WITHOUT_SUBMITIT = """
import importlib.abc, runpy, sys
BLOCKED = "hydra_plugins.hydra_submitit_launcher"
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import hydra_plugins
hydra_plugins.__path__ = [p for p in hydra_plugins.__path__ if "-packages" not in p]
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def train_py_without_submitit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_SUBMITIT, str(ROOT / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_without_submitit_hydra_does_not_warn_and_slurm_says_what_to_install(tmp_path):
    plain = train_py_without_submitit("--cfg", "job", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "Error importing" not in plain.stderr and "ModuleNotFoundError" not in plain.stderr
    assert plain.stderr.strip() == ""

    for choice in ("slurm", "slurm_local"):
        sweep = tmp_path / f"sweep_{choice}"
        proc = train_py_without_submitit("-m", f"hydra/launcher={choice}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert one_line(proc.stderr) == (f"config error: hydra/launcher={choice} needs hydra-submitit-launcher, "
                                         "which is not installed: pip install hydra-submitit-launcher")
        assert not sweep.exists()  # refused before any work


def test_with_submitit_the_real_launchers_are_used():
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    from hydra_plugins.flowhn_launcher.submitit_launchers import LocalLauncher, SlurmLauncher

    assert issubclass(SlurmLauncher, BaseSubmititLauncher) and issubclass(LocalLauncher, BaseSubmititLauncher)


# ---------------------------------------------------------------- noise silenced at its source


def test_lightning_tips_are_dropped_and_its_other_messages_kept(caplog):
    silence_known_noise()
    log = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    with caplog.at_level(logging.INFO, logger=LIGHTNING_RANK_ZERO_LOGGER):
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_lightnings_pytree_deprecation_is_ignored_and_others_are_not():
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _tree_flatten(1)  # builds torch's deprecated LeafSpec inside Lightning
        assert any("LeafSpec" in str(w.message) for w in seen), "the warning this test is about is gone"
        seen.clear()
        silence_known_noise()
        _tree_flatten(1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)  # from us: still shown
    assert [str(w.message) for w in seen] == ["`isinstance(treespec, LeafSpec)` is deprecated"]


LM_EVAL_GIT_PROBE = """
import sys
from flowhn.quiet import silence_known_noise
silence_known_noise()
import lm_eval.evaluator as evaluator
from lm_eval.loggers import utils
print("original:", file=sys.stderr, flush=True)
expected = utils.get_git_commit_hash.original()
print("platform:", file=sys.stderr, flush=True)
print(evaluator.get_git_commit_hash() == utils.get_git_commit_hash() == expected)
"""


@pytest.mark.slow
@pytest.mark.skipif(not any((Path(p) / "git").exists() for p in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="git is not installed (then lm-eval's probe prints nothing)")
def test_lm_evals_git_probe_is_quiet_outside_a_git_checkout(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LM_EVAL_GIT_PROBE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    original, platform = proc.stderr.split("original:", 1)[1].split("platform:", 1)
    assert "fatal: not a git repository" in original  # lm-eval's own probe leaks git's stderr
    assert platform.strip() == ""  # ours runs the same probe quietly ...
    assert proc.stdout.strip() == "True"  # ... and returns the same (and lm-eval's evaluator uses it)


# ---------------------------------------------------------------- a default run's console

# Lines that must never appear again: each was noise in every default run before (see the module
# that silences it, flowhn.quiet, or the Hydra plugin's import guard).
NOISE = {
    "Error importing 'hydra_plugins": "Hydra plugin scan without hydra-submitit-launcher",
    "litlogger": "Lightning's litlogger tip",
    "litmodels": "Lightning's litmodels tip",
    "💡 Tip": "Lightning's tips",
    "isinstance(treespec, LeafSpec)": "Lightning's use of torch's deprecated LeafSpec",
    "fatal: not a git repository": "lm-eval's git probe",
    "anonymous setting has no effect": "Lightning's anonymous=None to wandb.init (dropped in make_loggers)",
}
# Every console line that says "warn" must match one of these, with the reason it stays (none today).
ALLOWED_WARNINGS: dict[str, str] = {}


@pytest.mark.slow
def test_a_default_train_py_run_prints_no_preventable_warning(default_train_py_run):
    # What a user sees: no W&B key, W&B not silenced (conftest silences it for the other tests),
    # run from a directory that is not a git checkout (conftest.default_train_py_run).
    _, proc = default_train_py_run
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]

    lines = [line.strip() for line in re.split(r"[\r\n]+", console) if line.strip()]
    assert not {what: line for line in lines for pattern, what in NOISE.items() if pattern in line}
    warned = [line for line in lines if re.search("warn", line, re.IGNORECASE)]
    unexplained = [line for line in warned if not any(re.search(p, line) for p in ALLOWED_WARNINGS)]
    assert unexplained == [], "a new warning: fix its cause, silence it at its source, or explain it here"
