"""A process's start and exit without the garbage collector walking the imported libraries.

Importing torch, Lightning (with torchmetrics, scipy, transformers and matplotlib behind it) and lm-eval makes
millions of long-lived objects (functions, classes, modules). While they are made, the cyclic garbage
collector runs again and again over all of them, and it walks them all once more when the interpreter exits;
almost none of them is ever garbage. Measured on a 2-core CPU machine: ``import lightning`` took 11.0-11.5 s
with the collector on and 8.1-9.4 s with it off; a short ``train.py`` run with lm-eval loaded spent 3.3-3.8 s
in the interpreter's exit after its last atexit hook, 0.7-0.8 s with the objects frozen.

So an entry point makes its heavy imports inside :func:`imports_without_gc`: no collection while they run,
then what exists moves to the collector's permanent generation (``gc.freeze()``, the pattern the gc docs give
for long-lived start-up state) and collection resumes for everything made afterwards, the run's own objects.
:func:`freeze_at_exit` makes the last atexit hook freeze what is left, so the interpreter's final collections
do not walk the libraries again. Nothing else changes: reference counting still frees whatever is not in a
cycle, the other atexit hooks (W&B, logging, Lightning) run as before, and garbage in a cycle made after the
imports is collected as usual.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_exit_hook_registered = False


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """No cyclic collection inside; on leaving, freeze what exists and collect as before from there on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def freeze_at_exit() -> None:
    """Freeze every object in the last atexit hook (hooks run last-registered first: call this early)."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(gc.freeze)
