"""Keep a run's console for what matters: silence, at their sources, messages that say nothing
about the run and that a user cannot act on.

Every entry point (train.py, sweep.py, ``python -m flowhn.evaluate``) calls :func:`silence_known_noise`
first. Each switch below is as narrow as its source allows: one logger's one message, one
warning from one module, one probe's stderr. Nothing else is filtered; a new warning still shows
(and ``tests/test_hardening.py`` fails on it until it is fixed or explained there).

Deliberately not silenced here (explained in tests/test_hardening.py's allow-list): W&B's
"anonymous setting" warning, which only the code that builds the WandbLogger can prevent.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import subprocess
import sys
import warnings

# Lightning logs its tips through this logger (rank_zero_info); the same logger carries messages
# that do matter ("Restoring states from the checkpoint ...", "`Trainer.fit` stopped: ..."), so it
# keeps its level and only the tips are dropped.
LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
LIGHTNING_TIP_PREFIX = "💡 Tip:"


def drop_lightning_tips(record: logging.LogRecord) -> bool:
    """Lightning 2.6's advertisements for litlogger / litmodels (it has no switch for them)."""
    return not str(record.msg).startswith(LIGHTNING_TIP_PREFIX)


def silence_known_noise() -> None:
    """Install the switches below; idempotent, cheap (imports neither Lightning nor lm-eval)."""
    # A filter on the logger object works before Lightning is imported: getLogger returns the
    # same object to Lightning later.
    rank_zero = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if drop_lightning_tips not in rank_zero.filters:
        rank_zero.addFilter(drop_lightning_tips)

    # Lightning 2.6 builds torch's deprecated LeafSpec in its own _pytree.py (Lightning issue
    # #21326), so torch >= 2.10 warns once per run about code that is not ours. Only that
    # message, only when Lightning's module triggers it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")

    quiet_lm_eval_git_probe()


def git_commit_hash_quietly(original, get_commit_from_path):
    """lm-eval's ``get_git_commit_hash`` (``original``) with git's stderr discarded; the result is the same."""

    def get_git_commit_hash():
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return get_commit_from_path(os.getcwd())

    get_git_commit_hash.quiet, get_git_commit_hash.original = True, original
    return get_git_commit_hash


def patch_lm_eval_logger_utils(module) -> None:
    if not getattr(module.get_git_commit_hash, "quiet", False):
        module.get_git_commit_hash = git_commit_hash_quietly(module.get_git_commit_hash, module.get_commit_from_path)
    evaluator = sys.modules.get("lm_eval.evaluator")  # bound the name at its own import
    if evaluator is not None:
        evaluator.get_git_commit_hash = module.get_git_commit_hash


class _PatchAfterLoad(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``patch(module)`` right after ``name`` is executed on import (a one-shot post-import hook)."""

    def __init__(self, name: str, patch) -> None:
        self.name, self.patch, self.loader = name, patch, None

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name or self.loader is not None:
            return None
        sys.meta_path.remove(self)  # one shot; also lets the real finders answer below
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.patch(module)


def quiet_lm_eval_git_probe() -> None:
    """lm-eval's ``simple_evaluate`` records ``git describe --always`` of the working directory;
    outside a git checkout git prints "fatal: not a git repository ..." straight to the terminal.

    That line is written by a child process, so no logger level reaches it, git has no switch
    that silences it, and lm-eval offers no option to skip the probe. So the probe itself is
    swapped for the same probe with the child's stderr discarded (same result, same fallback),
    when lm-eval's ``loggers.utils`` is imported: importing lm-eval here would cost seconds for
    runs that never evaluate.
    """
    module = sys.modules.get("lm_eval.loggers.utils")
    if module is not None:
        patch_lm_eval_logger_utils(module)
    elif not any(isinstance(f, _PatchAfterLoad) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterLoad("lm_eval.loggers.utils", patch_lm_eval_logger_utils))
